"""`adsrt bench ads-update` (alias `swap`) and the benchmark's pieces (on a tiny model, a few samples: not a timing test)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from adsrt.arch import build_backbone
from adsrt.bench.ads_update import (
    CSV_COLUMNS,
    CSV_KEY,
    METHODS,
    AdsUpdateBenchConfig,
    run_ads_update_benchmark,
)
from adsrt.bundle import synthetic_bundle, validate
from adsrt.cli import main
from adsrt.fileio import upsert_csv


@pytest.mark.parametrize("command", ["ads-update", "swap"])  # swap: the old name, kept as an alias
def test_cli_bench_ads_update_writes_the_stable_json(tmp_path, capsys, command):
    out = tmp_path / "ads_update.json"
    argv = ["-q", "bench", command, "--device", "cpu", "--json", str(out), "--backbone", "nafnet-tiny", "--iters", "5"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"device", "rows", "ratios"}
    assert [row["method"] for row in report["rows"]] == list(METHODS)
    for row in report["rows"]:
        assert set(row) == {"method", "p20_us", "p50_us", "p80_us"}
        assert 0 < row["p20_us"] <= row["p50_us"] <= row["p80_us"]
    assert set(report["ratios"]) == {"naive_over_fused", "fused_over_empty", "load_state_dict_over_fused"}
    p50 = {row["method"]: row["p50_us"] for row in report["rows"]}
    assert report["ratios"]["naive_over_fused"] == pytest.approx(p50["naive_per_layer"] / p50["fused"])
    printed = capsys.readouterr().out
    assert "random sparse deltas" in printed and "naive_per_layer" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cli_bench_ads_update_on_missing_cuda_is_a_clear_error(capsys):
    assert main(["-q", "bench", "ads-update", "--device", "cuda", "--backbone", "nafnet-tiny", "--iters", "1"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_synthetic_bundle_masks_q_of_the_units_and_is_valid():
    bundle = synthetic_bundle("nafnet-tiny", ("noise", "blur"), q=0.05, granularity="kernel", seed=3)
    validate(bundle)
    eligible = sum(m.weight.shape[0] * m.weight.shape[1] for m in build_backbone("nafnet-tiny").modules()
                   if isinstance(m, torch.nn.Conv2d))
    for d in ("noise", "blur"):
        assert sum(len(ld.units) for ld in bundle.deltas[d].values()) == int(0.05 * eligible)


def test_upsert_replaces_rows_with_the_same_key_and_keeps_the_others(tmp_path):
    path = tmp_path / "ads_update.csv"
    base = {c: "x" for c in CSV_COLUMNS}
    upsert_csv(path, [{**base, "method": "fused", "p50_us": "1"}, {**base, "method": "naive_per_layer", "p50_us": "9"}],
               key=CSV_KEY, columns=CSV_COLUMNS)
    upsert_csv(path, [{**base, "method": "fused", "p50_us": "2"}, {**base, "device": "other", "method": "fused", "p50_us": "3"}],
               key=CSV_KEY, columns=CSV_COLUMNS)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["device"], r["method"], r["p50_us"]) for r in rows] == [
        ("x", "naive_per_layer", "9"),
        ("x", "fused", "2"),
        ("other", "fused", "3"),
    ]
    assert list(rows[0]) == list(CSV_COLUMNS)


def test_config_refuses_bad_values():
    from adsrt.errors import AdsrtError

    for bad in ({"backbone": "resnet"}, {"dtype": "fp64"}, {"device": "tpu"}, {"iters": 0}, {"q": 0.0}, {"threads": 0}):
        with pytest.raises(AdsrtError):
            AdsUpdateBenchConfig(**bad)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
def test_benchmark_runs_the_triton_backend_and_its_empty_kernel_under_the_interpreter():
    result = run_ads_update_benchmark(
        AdsUpdateBenchConfig(backbone="nafnet-tiny", backend="triton", iters=2, warmup=1, min_sample_us=1.0, progress=False)
    )
    assert result.backend == "triton" and "empty Triton kernel" in result.table()
    assert [r.method for r in result.rows] == list(METHODS)
