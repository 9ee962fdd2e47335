"""`adsrt bench train`: real training steps, timed and split; v1's code from git beside today's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from adsrt.bench.training import V1_COMMIT, TrainBenchConfig, checkout, run_train_benchmark
from adsrt.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(96, 80)


def _has_commit(commit: str) -> bool:
    result = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return result.returncode == 0


def test_cli_rows_split_each_step_into_its_phases(photos, tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["-q", "bench", "train", "--data", str(photos), "--variants", "v2,v2-nchw", "--stages", "um,classifier",
                 "--steps", "3", "--rounds", "1", "--backbone", "nafnet-tiny", "--json", str(out)]) == 0
    assert "samples/s" in capsys.readouterr().out
    rows = {(r["stage"], r["variant"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("um", "v2"), ("um", "v2-nchw"), ("classifier", "v2")}
    for key in (("um", "v2"), ("um", "v2-nchw")):
        r = rows[key]
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["s_per_step"])
        phases = sum(r[f"{p}_ms"] for p in ("data", "forward", "backward", "optimizer")) / 1e3
        assert 0.5 * r["s_per_step"] < phases <= 1.05 * r["s_per_step"]  # the phases are the step, minus logging
    assert rows["um", "v2"]["channels_last"] and not rows["um", "v2-nchw"]["channels_last"]
    assert rows["um", "v2-nchw"]["loss_delta"] is None  # no v1 row asked for: nothing to compare with
    assert rows["classifier", "v2"]["s_per_step"] > 0


def test_bad_choices_are_refused(photos):
    from adsrt.errors import AdsrtError

    with pytest.raises(AdsrtError, match="variants"):
        run_train_benchmark(TrainBenchConfig(data=str(photos), variants=("v9",)))


@pytest.mark.slow
@pytest.mark.skipif(not _has_commit(V1_COMMIT), reason=f"commit {V1_COMMIT} is not in this clone (shallow?)")
def test_v1_row_runs_v1s_code_beside_todays(photos, tmp_path):
    assert (checkout(V1_COMMIT, tmp_path) / "adsrt" / "train" / "trainer.py").read_text().count("ShardSampler") > 0
    result = run_train_benchmark(TrainBenchConfig(data=str(photos), backbone="nafnet-tiny", steps=3, warmup=1,
                                                  rounds=1, variants=("v1", "v1-settings"), stages=("um",),
                                                  progress=False))
    v1, same = result.rows
    assert v1["variant"] == "v1" and v1["speedup_vs_v1"] == pytest.approx(1.0)
    # Same seed and settings, v1's code and today's: v1's degradations and today's families draw different
    # samples from one seed (so the losses are not compared to 1e-4 any more), but the same loss scale.
    assert same["loss_delta"] is not None and 0.0 <= same["loss_delta"] < 0.05
