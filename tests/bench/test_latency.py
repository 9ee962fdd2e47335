"""`adsrt bench latency` and the benchmark's pieces (a tiny model, a few frames: not a timing test).

The runs use one torch thread: on the small shared machines that run the tests, two threads make a tiny
model ~100x slower (they spin waiting for each other)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from adsrt.bench.latency import CSV_COLUMNS, CSV_KEY, LatencyBenchConfig, run_latency_benchmark
from adsrt.cli import main
from adsrt.errors import AdsrtError
from adsrt.fileio import upsert_csv

ROW_KEYS = {"backend", "mode", "height", "width", "p50_ms", "p90_ms", "p99_ms", "ads_overhead_frac"}


def test_cli_bench_latency_writes_the_stable_json(tmp_path, capsys):
    out = tmp_path / "latency.json"
    argv = ["-q", "bench", "latency", "--device", "cpu", "--json", str(out), "--backbone", "nafnet-tiny", "--sizes",
            "480p", "--iters", "2", "--backends", "torch,tensorrt", "--threads", "1"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"device", "rows"} and "threads" in report["device"]
    assert [(r["backend"], r["mode"]) for r in report["rows"]] == [("torch", "um"), ("torch", "swap"), ("torch", "branch")]
    for row in report["rows"]:
        assert set(row) == ROW_KEYS and (row["height"], row["width"]) == (480, 854)
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert 0.0 <= row["ads_overhead_frac"] < 1.0
    assert report["rows"][0]["ads_overhead_frac"] == 0.0  # the UM baseline has no ADS stages
    assert all(r["ads_overhead_frac"] > 0 for r in report["rows"][1:])
    printed = capsys.readouterr().out
    assert "random sparse deltas" in printed
    assert "tensorrt: not measured" in printed or torch.cuda.is_available()


def test_rows_and_csv(tmp_path):
    result = run_latency_benchmark(LatencyBenchConfig(backbone="nafnet-tiny", device="cpu", backends=("torch",), modes=("um", "swap"),
                                                      sizes=("480p",), iters=2, min_iters=1, threads=1, progress=False))
    rows = result.csv_rows()
    assert [r["mode"] for r in rows] == ["um", "swap"] and all(set(r) <= set(CSV_COLUMNS) for r in rows)
    assert rows[0]["over_um_frac"] == "0.0000" and float(rows[1]["ads_overhead_frac"]) > 0
    swap = result.rows[1]
    assert set(swap.stages_ms) == {"decode", "classify", "update", "restore", "encode"} and swap.iters == 2
    path = tmp_path / "latency.csv"
    upsert_csv(path, rows, key=CSV_KEY, columns=CSV_COLUMNS)
    upsert_csv(path, [{**rows[1], "p50_ms": "1.00"}], key=CSV_KEY, columns=CSV_COLUMNS)  # same key: replaced
    with path.open(newline="") as fh:
        stored = list(csv.DictReader(fh))
    assert [(r["mode"], r["p50_ms"]) for r in stored] == [("um", rows[0]["p50_ms"]), ("swap", "1.00")]
    assert list(stored[0]) == list(CSV_COLUMNS)


@pytest.mark.parametrize("bad", [{"modes": ("fast",)}, {"sizes": ("4k",)}, {"backends": ("openvino",)},
                                 {"iters": 0}, {"backbone": "resnet"}, {"threads": 0}, {"precision": "int8"}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(AdsrtError):
        LatencyBenchConfig(**bad)


def test_only_unavailable_backends_is_a_clear_error():
    with pytest.raises(AdsrtError, match="none of the backends"):
        run_latency_benchmark(LatencyBenchConfig(backbone="nafnet-tiny", device="cpu", backends=("tensorrt",),
                                                 progress=False))
