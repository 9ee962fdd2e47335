"""UM/target training: it learns, it resumes exactly, it runs under torchrun, and it refuses bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adsrt.errors import AdsrtError, DataError, DegradationError
from adsrt.train.checkpoint import load_backbone_weights, load_checkpoint
from adsrt.train.um import TargetConfig, UMConfig, train_target, train_um

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(96, 72)


def _config(photos: Path, out: Path, **kw) -> UMConfig:
    base = dict(data=str(photos), out=str(out), backbone="nafnet-tiny", steps=8, batch_size=4, crop_size=32,
                lr=2e-3, val_every=4, val_samples=8, ckpt_every=2, samples_per_epoch=12, workers=0, progress=False)
    return UMConfig(**{**base, **kw})


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_um_beats_the_input_on_noise(photos, tmp_path):
    cfg = _config(photos, tmp_path / "um", degradations=("noise:25",), steps=50, batch_size=8, lr=1e-2,
                  ema_decay=0.9, val_every=25, val_samples=16, ckpt_every=25, samples_per_epoch=64)
    metrics = train_um(cfg)
    assert metrics["psnr"] > metrics["input_psnr"] + 0.5, metrics
    config, state, header = load_backbone_weights(tmp_path / "um" / "model.safetensors")
    assert header["kind"] == "um" and header["step"] == 50 and header["degradations"] == ["noise:25"]
    rows = _rows(tmp_path / "um" / "log.csv")
    assert [r["step"] for r in rows if r["val_psnr"]] == ["25", "50"]
    assert all(float(r["loss"]) > 0 for r in rows)


def test_resume_after_interruption_continues_from_the_checkpoint(photos, tmp_path):
    def stop_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_um(_config(photos, tmp_path / "run"), callback=stop_at_5)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4  # the step-5 update never got saved
    assert not (tmp_path / "run" / "model.safetensors").exists()

    seen: list[int] = []
    train_um(_config(photos, tmp_path / "run"), callback=lambda step, loss: seen.append(step))
    assert seen == [5, 6, 7, 8]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 8
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "log.csv")] == [4, 8]

    # Same data order, optimizer and EMA state: identical to a run that was never interrupted.
    train_um(_config(photos, tmp_path / "straight"))
    _, resumed, _ = load_backbone_weights(tmp_path / "run" / "model.safetensors")
    _, straight, _ = load_backbone_weights(tmp_path / "straight" / "model.safetensors")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6)


def test_target_fine_tunes_the_um_on_one_degradation(photos, tmp_path):
    train_um(_config(photos, tmp_path / "um", steps=2))
    um = tmp_path / "um" / "model.safetensors"
    metrics = train_target(TargetConfig(**{**vars(_config(photos, tmp_path / "t", steps=2)), "backbone": None},
                                        um=str(um), degradation="blur"))
    assert set(metrics["per_degradation"]) == {"blur"}
    _, state, header = load_backbone_weights(tmp_path / "t" / "model.safetensors")
    assert header["kind"] == "target" and header["init"] == str(um) and header["degradations"] == ["blur"]
    with pytest.raises(AdsrtError, match="nafnet-small"):  # a target must keep the UM's architecture
        train_target(TargetConfig(**{**vars(_config(photos, tmp_path / "t2")), "backbone": "nafnet-small"},
                                  um=str(um), degradation="blur"))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"degradations": ("noise", "fog")}, DegradationError, "fog"),
        ({"data": "/nonexistent/adsrt"}, DataError, "does not exist"),
        ({"loss": "l2"}, AdsrtError, "loss"),
        ({"backbone": "resnet"}, AdsrtError, "unknown backbone"),
    ],
)
def test_bad_input_is_refused(photos, tmp_path, change, error, match):
    with pytest.raises(error, match=match):
        train_um(_config(photos, tmp_path / "x", **change))


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        train_um(_config(tmp_path / "empty", tmp_path / "x"))


def test_torchrun_two_cpu_processes(photos, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "adsrt", "-q", "train", "um", "--data", str(photos), "--out", str(out), "--backbone", "nafnet-tiny",
           "--steps", "3", "--batch-size", "2", "--crop-size", "32", "--val-every", "3", "--val-samples", "4",
           "--workers", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["step"] == 3
    _, _, header = load_backbone_weights(out / "model.safetensors")
    assert header["step"] == 3
    assert [r["step"] for r in _rows(out / "log.csv")] == ["3"]  # one writer (rank 0), not two
