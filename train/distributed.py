"""Single-process and ``torchrun`` (DDP) execution: which rank we are, and the process group.

``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; without them everything runs in one process.
The backend is gloo on the CPU and nccl on CUDA. The group is created once per process and kept
(``adsrt train all`` runs several stages in one process), and destroyed by :func:`shutdown`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from adsrt.errors import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly single-process) run: its rank among ``world_size``
    processes, its rank on this machine, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


AUTO_DEVICE = "auto"


def resolve_train_device(requested: str | None, local_rank: int, cuda_available: bool) -> torch.device:
    """The device a training process uses, from ``--device`` (a pure function: no CUDA needed to test it).

    ``None``/``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. ``"cuda"`` without an
    index: ``cuda:LOCAL_RANK`` (one GPU per ``torchrun`` process); ``"cuda:N"`` and ``"cpu"`` stay as given.
    BackendError for anything else, and for CUDA on a machine without it.
    """
    text = AUTO_DEVICE if requested is None else requested.strip().lower()
    if text == AUTO_DEVICE:
        return torch.device(f"cuda:{local_rank}" if cuda_available else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise BackendError(f"unknown training device {requested!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type not in ("cpu", "cuda"):
        raise BackendError(f"training runs on cpu or cuda, not {requested!r}")
    if dev.type == "cuda":
        if not cuda_available:
            raise BackendError(f"device {requested!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str | None = None) -> DistEnv:
    """Join the process group when launched by ``torchrun``; pick the device (:func:`resolve_train_device`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_train_device(device, local_rank, torch.cuda.is_available())
    if dev.type == "cuda":
        if world_size > 1 and dev.index != local_rank:
            log.warning("rank %d trains on %s, not cuda:%d: ranks on one machine may share a GPU", rank, dev, local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return DistEnv(rank, world_size, local_rank, dev)


def flagged_ranks(flag: bool | torch.Tensor, env: DistEnv) -> list[int]:
    """The ranks whose ``flag`` is set, agreed by every rank (a collective: all ranks must call it, in step).

    One all-reduce (MAX) of a ``world_size`` vector on the process group's device, and one host sync to read
    it (``flag`` may be a device tensor: it is not read on its own); without DDP, no communication:
    ``[0]`` or ``[]``.
    """
    if not env.distributed:
        return [env.rank] if flag else []
    flags = torch.zeros(env.world_size, device=env.device)
    flags[env.rank] = flag
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [r for r, v in enumerate(flags.tolist()) if v > 0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
