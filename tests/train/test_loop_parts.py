"""The parts every training loop shares: step-indexed batches, safetensors checkpoints, the machine's
compute choices, the stage log and the polite stop."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from adsrt.errors import AdsrtError
from adsrt.train.batches import StepBatches, step_batches
from adsrt.train.checkpoint import METADATA_KEY, load_checkpoint, save_checkpoint
from adsrt.train.compute import CompiledStep, default_threads, plan_compute, set_threads
from adsrt.train.progress import StageLog, StopSignal, TrainingStopped, beside
from adsrt.train.trainer import adamw, load_optimizer_state

# ------------------------------------------------------------------------------------------- batches


def test_step_batches_resume_and_shard_exactly():
    full = list(StepBatches(20, 4, steps=12, seed=3))
    assert len(full) == 12 and all(len(b) == 4 for b in full)
    # Each epoch (5 batches of 4 from 20 samples) is a permutation: every index once.
    for epoch in range(2):
        indices = [i for b in full[epoch * 5 : epoch * 5 + 5] for e, i in b]
        assert sorted(indices) == list(range(20)) and {e for b in full[epoch * 5 : epoch * 5 + 5] for e, _ in b} == {epoch}
    assert full[:5] != [[(1, i) for _, i in b] for b in full[5:10]]  # a new order per epoch
    # Resuming at step 7 gives the tail of the uninterrupted sequence.
    assert list(StepBatches(20, 4, steps=12, seed=3, start=7)) == full[7:]
    # Two ranks: disjoint halves of each epoch, together a permutation.
    r0 = list(StepBatches(20, 2, steps=5, seed=3, rank=0, world_size=2))
    r1 = list(StepBatches(20, 2, steps=5, seed=3, rank=1, world_size=2))
    seen = [i for b in r0 + r1 for _, i in b]
    assert sorted(seen) == list(range(20))
    with pytest.raises(ValueError, match="cannot fill"):
        StepBatches(3, 4, steps=1)


def test_step_batches_feed_the_dataset_epoch_and_index():
    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, key):
            epoch, index = key
            return {"key": torch.tensor([epoch, index])}

    got = list(step_batches(Echo(), 4, steps=3, start=1, seed=0))
    assert [s for s, _ in got] == [1, 2]
    expected = StepBatches(8, 4, steps=3, seed=0)
    for step, batch in got:
        assert batch["key"].tolist() == [list(k) for k in expected.batch(step)]


# ---------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_round_trip_keeps_every_bit_and_key_type(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    shared = torch.arange(6.0)
    state = {"step": 7, "elapsed": 1.5, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": {"cpu": torch.get_rng_state()}, "names": ["a", "b"], "nested": {"none": None, "flag": True},
             "a": shared, "b": shared[:3]}  # views of one storage: stored as copies
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["step"] == 7 and back["elapsed"] == 1.5 and back["names"] == ["a", "b"]
    assert back["nested"] == {"none": None, "flag": True}
    assert set(back["optimizer"]["state"]) == {0, 1, 2, 3}  # integer keys come back as integers
    for key, value in model.state_dict().items():
        assert torch.equal(back["model"][key], value)
    assert torch.equal(back["rng"]["cpu"], state["rng"]["cpu"]) and torch.equal(back["b"], shared[:3])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])  # loads: the per-parameter state lines up
    assert torch.equal(fresh.state[next(model.parameters())]["exp_avg"], optimizer.state[next(model.parameters())]["exp_avg"])
    # It is a plain safetensors file with a JSON header: no pickle anywhere.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()[METADATA_KEY])["kind"] == "checkpoint"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"\x80\x04K\x01."])  # the last: a pickle
def test_bad_checkpoints_are_refused(tmp_path, content):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(content)
    with pytest.raises(AdsrtError, match="not a readable adsrt checkpoint"):
        load_checkpoint(path)


def test_checkpoint_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(AdsrtError, match="cannot checkpoint"):
        save_checkpoint(tmp_path / "c.safetensors", {"step": 1, "x": object()})
    with pytest.raises(AdsrtError, match="all-string or all-integer"):
        save_checkpoint(tmp_path / "c.safetensors", {"step": 1, "x": {1: 1, "a": 2}})
    assert not (tmp_path / "c.safetensors").exists()


def test_optimizer_state_gets_the_parameters_layout_back():
    # A channels_last model's moments come back from a (contiguous) checkpoint in its layout: the fused AdamW
    # kernel pairs elements in memory order, so a mismatch would update the wrong weights.
    torch.manual_seed(0)
    model = nn.Conv2d(4, 4, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    opt = adamw(model.parameters(), lr=1e-2)
    model(x).square().mean().backward()
    opt.step()
    saved = {k: {kk: vv.contiguous().clone() if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
             for k, v in opt.state_dict()["state"].items()}
    twin = nn.Conv2d(4, 4, 3).to(memory_format=torch.channels_last)
    twin.load_state_dict(model.state_dict())
    opt2 = adamw(twin.parameters(), lr=1e-2)
    load_optimizer_state(opt2, {"state": saved, "param_groups": opt.state_dict()["param_groups"]})
    assert opt2.state[twin.weight]["exp_avg"].stride() == twin.weight.stride()
    for m, o in ((model, opt), (twin, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    assert torch.equal(model.weight, twin.weight)


# ------------------------------------------------------------------------------------------- compute


def test_threads_default_to_the_process_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert set_threads(None) == default_threads() == len(os.sched_getaffinity(0))
        assert set_threads(1) == 1
        with pytest.raises(ValueError):
            set_threads(0)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit OMP_NUM_THREADS is left to torch
        torch.set_num_threads(1)
        assert set_threads(None) == 1
    finally:
        torch.set_num_threads(before)


def test_plan_autocast_only_where_asked():
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    try:
        plan = plan_compute(cpu, threads=1)
        assert plan.autocast_dtype is None and plan.channels_last and plan.threads == 1
        assert plan.to_input(torch.zeros(1, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)
        plan = plan_compute(cpu, threads=1, cpu_bf16=True, channels_last=False)
        with plan.autocast():
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        assert "bf16" in plan.describe() and "NCHW" in plan.describe()
    finally:
        torch.set_num_threads(before)


def test_compiled_step_falls_back_to_eager_when_the_compiler_fails(monkeypatch, caplog):
    class CompilerBroke(Exception):
        __module__ = "torch._inductor.exc"  # where inductor's errors come from

    model = nn.Linear(2, 1)
    step = CompiledStep(model, enabled=True)
    assert step.compiled
    calls = []

    def run(module):
        calls.append(module)
        if module is not model:
            raise CompilerBroke("no C compiler")
        return module(torch.ones(1, 2)).sum()

    step(run)
    assert calls[-1] is model and not step.compiled and step.first_step_seconds is not None
    assert "training eagerly" in caplog.text
    # An error of the model itself is not swallowed.
    strict = CompiledStep(model, enabled=False)
    with pytest.raises(ZeroDivisionError):
        strict(lambda m: 1 / 0)


# ---------------------------------------------------------------------------------------- progress


def test_stage_log_continues_after_a_resume(tmp_path):
    path = tmp_path / "log.csv"
    log = StageLog(path, ("step", "loss", "seconds"), resume_step=None)
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step})
    resumed = StageLog(path, ("step", "loss", "seconds"), resume_step=20, elapsed=100.0)
    assert [r["step"] for r in resumed.rows()] == ["10", "20"]  # the row past the checkpoint is trained again
    resumed.write({"step": 30, "loss": 0.5})
    rows = resumed.rows()
    assert [r["step"] for r in rows] == ["10", "20", "30"] and float(rows[-1]["seconds"]) >= 100.0
    assert beside(tmp_path / "noise.safetensors", "checkpoint").name == "noise.checkpoint.safetensors"
    assert beside(tmp_path / "noise.safetensors", "log").name == "noise.log.csv"


def test_sigterm_becomes_a_request_and_the_handler_comes_back(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(TrainingStopped, match="after step 5"):
            stop.check("train um", 5, tmp_path / "checkpoint.safetensors")
    assert signal.getsignal(signal.SIGTERM) is previous
    with StopSignal(enabled=False) as off:
        assert signal.getsignal(signal.SIGTERM) is previous and not off.requested
        off.check("x", 1, tmp_path)  # nothing requested: no error
