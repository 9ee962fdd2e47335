"""The batches of a training loop as a function of the step, so any loop can stop and resume exactly.

:class:`StepBatches` is a batch sampler: the batch of step ``s`` is a fixed list of ``(epoch, index)``
pairs, from a per-epoch permutation seeded by ``(seed, epoch)`` and split into contiguous shards per
``torchrun`` rank. The dataset draws each sample's crop and degradation from ``(seed, epoch, index)``,
so the data of step ``s`` does not depend on how the run got there: a run resumed at step ``s`` sees
exactly the batches an uninterrupted one would have, and shards never overlap.

:func:`step_batches` wraps it in one DataLoader for the whole run (workers started once, not per
epoch, with prefetch), yielding ``(step, batch)``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StepBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for steps ``start .. steps - 1`` of one rank (see the module doc)."""

    def __init__(self, n: int, batch_size: int, *, steps: int, start: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size * world_size > n:
            raise ValueError(f"{n} samples per epoch cannot fill a batch of {batch_size} x {world_size} ranks")
        self.n, self.batch_size, self.steps, self.start = n, batch_size, steps, start
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_epoch = n // (batch_size * world_size)

    def epoch_of(self, step: int) -> int:
        return step // self.batches_per_epoch

    def _shard(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.world_size
        return perm[self.rank * per_rank : (self.rank + 1) * per_rank]

    def batch(self, step: int, shard: list[int] | None = None) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.batches_per_epoch)
        shard = self._shard(epoch) if shard is None else shard
        return [(epoch, i) for i in shard[b * self.batch_size : (b + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, shard = -1, []
        for step in range(self.start, self.steps):
            if self.epoch_of(step) != epoch:
                epoch = self.epoch_of(step)
                shard = self._shard(epoch)
            yield self.batch(step, shard)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def step_batches(dataset: Dataset, batch_size: int, *, steps: int, start: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(step, batch)`` for steps ``start .. steps - 1``; ``dataset`` takes ``(epoch, index)`` keys."""
    sampler = StepBatches(len(dataset), batch_size, steps=steps, start=start, seed=seed, rank=rank,
                          world_size=world_size)
    if not len(sampler):
        return
    # A private generator: the loader's worker seeds never draw from (or advance) torch's global RNG.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=4 if workers else None, persistent_workers=False,
                        generator=torch.Generator().manual_seed(seed),
                        worker_init_fn=ignore_sigterm if workers else None)
    yield from enumerate(loader, start)


def ignore_sigterm(worker_id: int) -> None:
    """In a loader worker: leave SIGTERM to the training process. A SIGTERM sent to the whole process group
    (``timeout``, a scheduler, a session ending) would otherwise kill the workers first and turn the
    trainer's checkpoint-and-stop into a DataLoader crash. A worker still exits when its parent dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
