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


def test_clean_samples_teach_the_um_to_leave_a_clean_frame_alone(photos, tmp_path):
    """The same noise UM with and without half its samples left clean: on clean crops the one that saw
    clean samples changes the picture less (PSNR against the clean crop itself, by scikit-image)."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio

    from adsrt.arch import build_backbone
    from adsrt.train.data import DegradedImageDataset

    crops = torch.stack([DegradedImageDataset(photos, ["noise"], crop_size=32, samples_per_epoch=8, seed=9)[i]["target"] for i in range(8)])
    scores = {}
    for fraction in (0.0, 0.5):
        out = tmp_path / f"um{fraction}"
        train_um(_config(photos, out, degradations=("noise:25",), steps=60, batch_size=8, lr=1e-2, ema_decay=0.9,
                         val_every=60, val_samples=8, ckpt_every=60, samples_per_epoch=64, clean_fraction=fraction))
        config, state, header = load_backbone_weights(out / "model.safetensors")
        assert header["config"]["clean_fraction"] == fraction
        model = build_backbone(config).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            restored = model(crops).clamp(0, 1)
        scores[fraction] = np.mean([peak_signal_noise_ratio(c.numpy(), r.numpy(), data_range=1.0)
                                    for c, r in zip(crops, restored, strict=True)])
    assert scores[0.5] > scores[0.0] + 0.5, scores


def test_resume_after_interruption_continues_from_the_checkpoint(photos, tmp_path):
    def stop_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_um(_config(photos, tmp_path / "run"), callback=stop_at_5)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["step"] == 4  # the step-5 update never got saved
    assert not (tmp_path / "run" / "model.safetensors").exists()

    seen: list[int] = []
    train_um(_config(photos, tmp_path / "run"), callback=lambda step, loss: seen.append(step))
    assert seen == [5, 6, 7, 8]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["step"] == 8
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "log.csv")] == [4, 8]

    # Same data order, optimizer and EMA state: identical to a run that was never interrupted.
    train_um(_config(photos, tmp_path / "straight"))
    _, resumed, _ = load_backbone_weights(tmp_path / "run" / "model.safetensors")
    _, straight, _ = load_backbone_weights(tmp_path / "straight" / "model.safetensors")
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name  # bit for bit


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
        ({"clean_fraction": 1.0}, AdsrtError, "clean_fraction"),
        ({"loss": "psnr", "clean_fraction": 0.1}, AdsrtError, "psnr loss cannot train on clean samples"),
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
    assert load_checkpoint(out / "checkpoint.safetensors")["step"] == 3
    _, _, header = load_backbone_weights(out / "model.safetensors")
    assert header["step"] == 3
    assert [r["step"] for r in _rows(out / "log.csv")] == ["3"]  # one writer (rank 0), not two


# Run by each of two processes in the test below: rank 1's loss turns NaN at its third step (step 2); the
# rest is ``adsrt train um``. A test-only hook: it patches the trainer's loss function, not its config.
_NAN_ON_RANK_1 = '''
import os, sys
from adsrt.cli import main
from adsrt.train import trainer

real, calls = trainer.restoration_loss, []

def loss(output, target, kind="l1"):
    calls.append(1)
    value = real(output, target, kind)
    return value * float("nan") if os.environ["RANK"] == "1" and len(calls) == 3 else value

trainer.restoration_loss = loss
sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_nan_loss_on_one_rank_stops_every_rank(photos, tmp_path):
    # Two DDP processes started by hand with the variables torchrun sets (so no agent kills the others
    # when one fails): each must stop by itself, with the same error, instead of waiting in the gradient
    # all-reduce for the rank that gave up.
    driver = tmp_path / "driver.py"
    driver.write_text(_NAN_ON_RANK_1)
    args = [sys.executable, str(driver), "-q", "train", "um", "--data", str(photos), "--out", str(tmp_path / "ddp"),
            "--backbone", "nafnet-tiny", "--steps", "6", "--batch-size", "2", "--crop-size", "32",
            "--val-every", "6", "--val-samples", "4", "--workers", "0", "--device", "cpu"]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port())}
    procs = [subprocess.Popen(args, cwd=REPO, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for rank, (code, err) in enumerate(results):
        assert code == 1, f"rank {rank}: exit {code}\n{err[-3000:]}"
        assert "error: loss became non-finite at step 2 on rank(s) 1 of 2" in err, f"rank {rank}:\n{err[-3000:]}"
    assert "nan here" in results[1][1] and "nan here" not in results[0][1]
    assert not (tmp_path / "ddp" / "model.safetensors").exists()
