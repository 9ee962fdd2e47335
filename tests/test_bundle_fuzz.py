"""Fuzzing the bundle loader (adsrt.bench.fuzz_bundle, issue 18): thousands of mutated bundle files each
load (and then summarise and restore a frame) or raise BundleError, each within a time bound, in bounded
memory. The benchmark (benchmarks/bench_fuzz_bundle.py) runs the same generator at 10,000 mutants."""

from __future__ import annotations

import csv

import pytest

from adsrt.bench import fuzz_bundle
from adsrt.bench.fuzz_bundle import KINDS, join_file, mutants, run_fuzz, seed_bundles, split_file
from adsrt.bundle import load_bundle

# About 25 s on two idle CPU cores, 50 s on two busy ones (10-20 ms a mutant on average; those that load
# also restore a frame).
MUTANTS = 2500
SEED = 0
MUTANT_SECONDS = 2.0  # the slowest mutant's bound (loading, summary and first frame together)
RSS_GROWTH_MIB = 1024  # peak RSS growth over the whole run


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[bytes]:
    return seed_bundles(tmp_path_factory.mktemp("seeds"))


def test_mutated_bundles_load_or_raise_bundle_error(seeds, tmp_path):
    # The timeout turns a hang into a failure; the bound on the slowest mutant is the assertion below.
    result = run_fuzz(seeds, MUTANTS, SEED, tmp_path, timeout=5 * MUTANT_SECONDS)
    print(result.table())
    assert not result.failures, "mutants that raised something other than BundleError:\n" + "\n".join(result.failures)
    assert result.total.max_seconds < MUTANT_SECONDS, result.slowest
    assert result.rss_growth_mib < RSS_GROWTH_MIB
    assert all(result.tallies[kind].mutants > 50 for kind in KINDS)
    # Both outcomes occur: the fuzzer reaches past the first checks (and the loader is not refusing all).
    assert 0 < result.total.loaded < result.total.refused


def test_mutants_are_deterministic_and_mutated(seeds):
    first = list(mutants(seeds, 300, seed=5))
    assert first == list(mutants(seeds, 300, seed=5))
    assert [m.data for m in first] != [m.data for m in mutants(seeds, 300, seed=6)]
    assert not any(m.data in seeds for m in first if m.kind in ("truncate", "splice", "tensor-table"))
    assert {m.kind for m in first} == set(KINDS)


def test_split_and_join_rebuild_a_loadable_file(seeds, tmp_path):
    for i, raw in enumerate(seeds):
        table, data = split_file(raw)
        assert "adsrt" in table["__metadata__"]
        original, rebuilt = tmp_path / f"seed{i}.safetensors", tmp_path / f"rebuilt{i}.safetensors"
        original.write_bytes(raw)
        rebuilt.write_bytes(join_file(table, data))
        assert load_bundle(rebuilt).digest() == load_bundle(original).digest()


def test_benchmark_writes_counts_per_kind(tmp_path, capsys):
    assert fuzz_bundle.main(["--mutants", "120", "--seed", "3", "--results", str(tmp_path)],
                            default_results=tmp_path) == 0
    with (tmp_path / "fuzz_bundle.csv").open(newline="") as fh:
        rows = {r["kind"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {*KINDS, "all"}
    assert int(rows["all"]["mutants"]) == 120 == sum(int(rows[k]["mutants"]) for k in KINDS)
    assert all(r["other"] == "0" and r["torch"] and r["safetensors"] and r["date"] for r in rows.values())
    assert "mutants in" in capsys.readouterr().out
