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


def setup(device: str | None = None) -> DistEnv:
    """Join the process group when launched by ``torchrun``; pick the device (cuda:LOCAL_RANK or cpu)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return DistEnv(rank, world_size, local_rank, dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
