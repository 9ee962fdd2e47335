"""What a long training stage keeps besides its weights: the curve, the clock, and a polite stop.

- :class:`StageLog`: the stage's ``log.csv``. A resumed run drops the rows past its checkpoint (they are
  trained again) and appends after them, and the ``seconds`` column counts training time across every
  session of the run (the checkpoint carries the elapsed time), so the curve and the ETA of
  ``adsrt train status`` read as one run.
- :class:`StopSignal`: SIGTERM (a scheduler's preemption, ``kill``, a session ending) asks the loop to stop
  after the current step; the loop checkpoints and raises :class:`TrainingStopped`. SIGKILL cannot be caught:
  the run then resumes from its last periodic checkpoint, which atomic writes keep whole.
"""

from __future__ import annotations

import csv
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from adsrt.errors import AdsrtError
from adsrt.fileio import atomic_write_bytes


def beside(out: str | Path, role: str) -> Path:
    """The resumable state of a single-file stage output, next to it: ``noise.safetensors`` ->
    ``noise.checkpoint.safetensors`` (role ``checkpoint``) or ``noise.log.csv`` (role ``log``)."""
    out = Path(out)
    stem = out.name.removesuffix(".safetensors")
    return out.with_name(f"{stem}.checkpoint.safetensors" if role == "checkpoint" else f"{stem}.{role}.csv")


class TrainingStopped(AdsrtError):
    """A stage stopped on request (SIGTERM) after checkpointing; rerunning the command resumes it."""


class StageLog:
    """A CSV curve that continues across resumes (see the module doc)."""

    def __init__(self, path: str | Path, fields: Sequence[str], *, resume_step: int | None,
                 elapsed: float = 0.0, write: bool = True) -> None:
        self.path, self.fields, self.enabled = Path(path), tuple(fields), write
        self._elapsed, self._t0 = float(elapsed), time.perf_counter()
        if not write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows() if resume_step is not None and self.path.is_file() else []
        kept = [r for r in rows if _int(r.get("step")) is not None and _int(r["step"]) <= (resume_step or 0)]
        lines = [",".join(self.fields)] + [",".join(r.get(k) or "" for k in self.fields) for r in kept]
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode())

    def seconds(self) -> float:
        """Training seconds of the whole run so far (earlier sessions included)."""
        return self._elapsed + time.perf_counter() - self._t0

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {**row, "seconds": f"{self.seconds():.1f}"}
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.path)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a stage log (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


class StopSignal:
    """Context manager: while active, SIGTERM sets :attr:`requested` instead of killing the process.

    Only the main thread can install signal handlers; elsewhere (a test's worker thread), or when not
    ``enabled``, it does nothing. Under DDP it stays off: ranks that stopped at different steps would leave
    the others waiting in an all-reduce, so there SIGTERM ends the processes and the run resumes from its
    last periodic checkpoint. The previous handler comes back on exit.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopSignal:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None: the previous handler was set outside Python; the default is the closest we can restore.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def check(self, stage: str, step: int, checkpoint: Path) -> None:
        """Raise :class:`TrainingStopped` if a stop was requested (call after the checkpoint is written)."""
        if self.requested:
            raise TrainingStopped(f"{stage}: stopped by SIGTERM after step {step}; checkpoint {checkpoint}; "
                                  "run the same command again to resume")


class LossLoop:
    """What a plain loss loop (the classifier, its context trunk) does around each optimizer step: the
    running loss mean into ``curve`` every ``log_every`` steps, ``save(step)`` every ``ckpt_every`` steps, at
    the end and on SIGTERM (then :class:`TrainingStopped`), and the bar. ``running`` is the checkpointed
    ``{"sum", "n"}`` of the loss since the last row."""

    def __init__(self, name: str, *, steps: int, running: dict[str, float], curve: StageLog, bar: Any,
                 stop: StopSignal, save: Any, checkpoint: Path, log_every: int, ckpt_every: int) -> None:
        self.name, self.steps, self.running, self.curve, self.bar = name, steps, running, curve, bar
        self.stop, self.save, self.checkpoint = stop, save, checkpoint
        self.log_every, self.ckpt_every = log_every, ckpt_every

    def step(self, optimizer: Any, loss: Any, step: int, lr: float) -> int:
        """Backward and optimizer step on ``loss`` (step ``step``, learning rate ``lr``); returns step + 1."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        value = float(loss.detach())
        self.running["sum"], self.running["n"] = self.running["sum"] + value, self.running["n"] + 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{value:.3f}")
        last = step >= self.steps
        if step % self.log_every == 0 or last:
            self.curve.write({"step": step, "lr": f"{lr:.3e}", "loss": f"{self.running['sum'] / self.running['n']:.5f}"})
            self.running.update(sum=0.0, n=0)
        if step % self.ckpt_every == 0 or last or self.stop.requested:
            self.save(step)
        if not last:
            self.stop.check(self.name, step, self.checkpoint)
        return step
