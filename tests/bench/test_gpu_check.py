"""The one-call GPU check (adsrt.bench.gpu_check): its dry run on the CPU keeps every check's logic alive in CI."""

from __future__ import annotations

import csv

import pytest
import torch

from adsrt.bench import gpu_check


def test_dry_run_runs_every_check_on_the_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    with (tmp_path / "gpu_check.csv").open() as fh:
        rows = {r["check"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(gpu_check.CHECKS)
    assert {r["status"] for r in rows.values()} <= {"ok", "skip"}
    assert rows["gpu_tests"]["status"] == "skip" and rows["sync_free"]["status"] == "skip"  # CUDA-only
    for name in ("update_stress", "graph_frames", "large_arena", "amp_training", "bench"):
        assert rows[name]["status"] == "ok", rows[name]
    assert "max |err| vs float64" in rows["update_stress"]["detail"]
    for name in ("ads_update.csv", "latency.csv", "gpu_frames.csv"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "gpu_check.log").read_text().count("check") >= 1
    assert "9 of 9 checks passed or skipped" in capsys.readouterr().out


def test_a_failing_check_is_a_row_and_a_non_zero_exit(tmp_path, monkeypatch):
    def broken(ctx):
        raise AssertionError("replay differs from eager by 0.5")

    monkeypatch.setitem(gpu_check.CHECKS, "graph_frames", broken)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--checks", "environment,graph_frames"]) == 1
    with (tmp_path / "gpu_check.csv").open() as fh:
        rows = {r["check"]: r for r in csv.DictReader(fh)}
    assert rows["graph_frames"]["status"] == "fail" and "0.5" in rows["graph_frames"]["detail"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--checks", "nonsense"])
