"""Device choice and the process-group helpers of ``adsrt.train.distributed``, on the CPU (CUDA is faked)."""

from __future__ import annotations

import pytest
import torch

from adsrt.errors import AdsrtError, BackendError
from adsrt.train import distributed
from adsrt.train.distributed import DistEnv, flagged_ranks, resolve_train_device


@pytest.mark.parametrize(
    ("requested", "local_rank", "cuda", "expected"),
    [
        (None, 0, True, "cuda:0"),
        (None, 3, True, "cuda:3"),
        (None, 3, False, "cpu"),
        ("auto", 1, True, "cuda:1"),
        ("auto", 1, False, "cpu"),
        ("cuda", 0, True, "cuda:0"),
        ("cuda", 2, True, "cuda:2"),  # torchrun: one GPU per local rank
        ("CUDA", 2, True, "cuda:2"),
        ("cuda:1", 0, True, "cuda:1"),  # an explicit index is kept
        ("cuda:1", 3, True, "cuda:1"),
        ("cpu", 0, True, "cpu"),
        ("cpu", 2, False, "cpu"),
    ],
)
def test_resolve_train_device(requested, local_rank, cuda, expected):
    dev = resolve_train_device(requested, local_rank, cuda)
    assert dev == torch.device(expected)
    if dev.type == "cuda":
        assert dev.index is not None  # torch.cuda.set_device refuses a device without an index


@pytest.mark.parametrize(
    ("requested", "cuda", "match"),
    [
        ("gpu", True, "unknown training device 'gpu'"),
        ("cuda:x", True, "unknown training device 'cuda:x'"),
        ("cuda:-1", True, "unknown training device"),
        ("", True, "unknown training device"),
        ("mps", True, "cpu or cuda"),
        ("meta", True, "cpu or cuda"),
        ("cuda", False, "CUDA is not available"),
        ("cuda:0", False, "CUDA is not available"),
    ],
)
def test_bad_devices_are_refused(requested, cuda, match):
    with pytest.raises(BackendError, match=match):
        resolve_train_device(requested, 0, cuda)
    assert issubclass(BackendError, AdsrtError)  # the CLI's one-line error, exit code 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA "available", ``torch.cuda.set_device`` recording its argument instead of touching a GPU."""
    calls: list[object] = []

    def set_device(device) -> None:
        if isinstance(device, torch.device) and device.type == "cuda" and device.index is None:
            raise ValueError("Expected a cuda device with a specified index or an integer, but got:cuda")
        calls.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process: no process group is created
    monkeypatch.delenv("RANK", raising=False)
    return calls


@pytest.mark.parametrize(("requested", "expected"), [("cuda", "cuda:1"), (None, "cuda:1"), ("cuda:0", "cuda:0")])
def test_setup_sets_an_indexed_cuda_device(fake_cuda, monkeypatch, requested, expected):
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = distributed.setup(requested)
    assert env.device == torch.device(expected)
    assert fake_cuda == [torch.device(expected)]
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 1)


def test_setup_on_the_cpu_leaves_cuda_alone(fake_cuda, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.setup("cpu").device == torch.device("cpu")
    assert fake_cuda == []


def test_flagged_ranks_needs_no_process_group_in_one_process():
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert flagged_ranks(False, env) == []
    assert flagged_ranks(True, env) == [0]
