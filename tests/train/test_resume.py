"""Long runs across sessions: a `train all` run stopped again and again (SIGKILL mid-step, SIGTERM with a
checkpoint) in every kind of stage ends with the same bundle, bit for bit, as a run never stopped; and
`adsrt train status` tells where a stopped run stands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adsrt.cli import main
from adsrt.train.checkpoint import load_checkpoint, save_checkpoint
from adsrt.train.progress import read_rows
from adsrt.train.status import work_status

REPO = Path(__file__).resolve().parents[2]

# ``adsrt`` with a test-only trap: the process signals itself at the N-th call of a loss function
# (restoration_loss: the UM, targets, FAIG path points and delta refinement; cross_entropy: the classifier
# and its context trunk).
# SIGKILL then dies mid-step, before that step's checkpoint; SIGTERM lets the step finish, checkpoint, stop.
_DRIVER = '''
import os, signal, sys
import torch.nn.functional as F
from adsrt.train import trainer

loss_name, count, sig = os.environ["ADSRT_TEST_STOP"].split(":")
count, calls = int(count), []

def trap(real):
    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == count:
            os.kill(os.getpid(), getattr(signal, sig))
        return real(*args, **kwargs)
    return wrapped

if loss_name == "restoration":
    trainer.restoration_loss = trap(trainer.restoration_loss)
else:
    F.cross_entropy = trap(F.cross_entropy)
from adsrt.cli import main
sys.exit(main(sys.argv[1:]))
'''

# (which loss, at which call of this process, which signal, the stage it lands in). Call counts restart in
# every process: the resumed run redoes the steps after its checkpoint first. Tiny preset, 2 degradations:
# UM 6 steps (checkpoints every 3), targets 3 steps each, FAIG 3 path points, refinement 2 steps, classifier 6.
STOPS = [
    ("restoration", 5, "SIGKILL", "UM step 5: resumes from the step-3 checkpoint"),
    ("restoration", 5, "SIGTERM", "UM done, then target noise step 2: checkpointed at step 2"),
    ("restoration", 4, "SIGKILL", "target blur step 3, before its first checkpoint"),
    ("restoration", 5, "SIGKILL", "FAIG of noise, path point 2"),
    ("restoration", 5, "SIGTERM", "refinement of noise, then FAIG of blur: stops after a path point"),
    ("cross_entropy", 3, "SIGTERM", "classifier step 3"),
    ("cross_entropy", 5, "SIGTERM", "classifier steps 4-6, then context step 2: checkpointed at step 2"),
]


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(72, 56)


def _argv(photos: Path, root: Path) -> list[str]:
    return ["-q", "train", "all", "--data", str(photos), "--degradations", "noise,blur", "--out",
            str(root / "model.safetensors"), "--work", str(root / "work"), "--preset", "tiny"]


def _drop_seconds(row: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in row.items() if k != "seconds"}


def _bundle(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["adsrt"])
    for key in ("created", "work"):  # when and where it was written: not part of what was trained
        meta["provenance"].pop(key)
    return load_file(str(path)), meta


@pytest.mark.slow
def test_stopped_and_resumed_run_gives_the_same_bundle(photos, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    stopped = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for loss, count, sig, where in STOPS:
        result = subprocess.run([sys.executable, str(driver), *_argv(photos, stopped)], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**env, "ADSRT_TEST_STOP": f"{loss}:{count}:{sig}"})
        if sig == "SIGKILL":
            assert result.returncode == -signal.SIGKILL, (where, result.returncode, result.stderr[-2000:])
        else:
            assert result.returncode == 1, (where, result.returncode, result.stderr[-2000:])
            assert "stopped by SIGTERM" in result.stderr and "run the same command again" in result.stderr, where
        assert not (stopped / "model.safetensors").exists(), where
    stages = {s.stage: s for s in work_status(stopped / "work")}
    assert stages["um"].state == "done" and stages["target blur"].state == "done"
    assert stages["classifier"].state == "done"
    assert stages["context"].state == "partial" and stages["context"].step == 2
    assert stages["bundle"].state == "pending"

    done = subprocess.run([sys.executable, "-m", "adsrt", *_argv(photos, stopped)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = tmp_path / "straight"
    once = subprocess.run([sys.executable, "-m", "adsrt", *_argv(photos, straight)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)
    assert once.returncode == 0, once.stderr[-2000:]

    a_tensors, a_meta = _bundle(stopped / "model.safetensors")
    b_tensors, b_meta = _bundle(straight / "model.safetensors")
    assert a_tensors.keys() == b_tensors.keys()
    for name, tensor in b_tensors.items():
        assert torch.equal(a_tensors[name], tensor), name  # bit for bit
    assert a_meta == b_meta
    # The curves continued in place and read as the uninterrupted run's: the same rows (the redone steps are
    # not repeated), the same losses and PSNRs; only the clock differs.
    for log in ("um/log.csv", "targets/noise/log.csv", "targets/blur/log.csv", "classifier/log.csv",
                "context/log.csv"):
        rows = [[_drop_seconds(r) for r in read_rows(root / "work" / log)] for root in (stopped, straight)]
        assert rows[0] == rows[1], log
    assert not list((stopped / "work").rglob("*.checkpoint.safetensors"))  # select/deltas clean up after themselves


def test_status_of_a_work_folder(photos, tmp_path, capsys):
    root = tmp_path / "run"
    assert main(_argv(photos, root)) == 0
    capsys.readouterr()
    assert main(["train", "status", str(root / "work"), "--json", str(tmp_path / "status.json")]) == 0
    out = capsys.readouterr().out
    assert "done 10 of 10 stages" in out and "val PSNR" in out and "accuracy" in out
    rows = json.loads((tmp_path / "status.json").read_text())
    assert [r["stage"] for r in rows][:3] == ["um", "target noise", "target blur"]
    assert all(r["state"] == "done" for r in rows)
    assert rows[0]["step"] == rows[0]["steps"] == 6 and rows[0]["seconds"] > 0

    # A half-done UM: progress from its checkpoint, an ETA from its rate, later stages pending.
    (root / "work" / "um" / "model.safetensors").unlink()
    um = work_status(root / "work")[0]
    assert um.state == "partial" and um.step == 6  # the final checkpoint is still there
    state = load_checkpoint(root / "work" / "um" / "checkpoint.safetensors")
    save_checkpoint(root / "work" / "um" / "checkpoint.safetensors", {**state, "step": 3, "elapsed": 30.0})
    um, target = work_status(root / "work")[:2]
    assert (um.step, um.steps, um.eta_seconds) == (3, 6, pytest.approx(30.0))
    assert target.state == "done"


def test_status_refuses_a_folder_that_is_no_work_folder(tmp_path, capsys):
    assert main(["train", "status", str(tmp_path)]) == 1
    assert "no run.json" in capsys.readouterr().err


def test_sigterm_to_the_process_group_stops_cleanly_with_loader_workers(photos, tmp_path):
    # `timeout`, a scheduler or the end of a session signal the whole group, data loader workers included.
    out = tmp_path / "um"
    cmd = [sys.executable, "-m", "adsrt", "-q", "train", "um", "--data", str(photos), "--out", str(out),
           "--backbone", "nafnet-tiny", "--steps", "100000", "--batch-size", "2", "--crop-size", "32",
           "--val-every", "100000", "--val-samples", "2", "--log-every", "2", "--ckpt-every", "100000",
           "--workers", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.csv").is_file() or len((out / "log.csv").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-2000:]
    step = load_checkpoint(out / "checkpoint.safetensors")["step"]
    assert step >= 4  # checkpointed where it stopped, not at a periodic checkpoint (there was none)
