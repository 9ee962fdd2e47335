"""The frame loop: every frame of a source, restored, into a sink.

Frames in = frames out + skipped (broken or wrong-sized frames), and :class:`RunReport` says so. On
Ctrl-C (and SIGTERM, in ``adsrt restore``) the sink keeps what is complete; the frame being restored at
that moment is dropped (and not counted), a frame being written is finished first, and further Ctrl-Cs
wait until the output is finished (:class:`Interrupts`). Sources and sinks are :mod:`adsrt.io`'s; the
loop needs only the small protocol below, so the runtime does not depend on where frames come from.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from adsrt.errors import AdsrtError, InputError

log = logging.getLogger(__name__)

__all__ = ["Interrupts", "RunReport", "handle_interrupts", "process"]


class Interrupts:
    """What Ctrl-C does to a run; a signal handler (SIGINT, and SIGTERM in ``adsrt restore``).

    The first signal stops the run (KeyboardInterrupt), except while a frame is being written: it waits
    until that frame is in the file and counted (:meth:`held`), so the file holds exactly the frames the
    run reports. From then on (``finishing``: the output is being closed, kept or removed), signals are
    logged and ignored: a second Ctrl-C used to cut that short, and a third to kill the process by the
    signal with the temporary file left behind.
    """

    def __init__(self) -> None:
        self.finishing = False
        self.ignored = 0  # signals that came while finishing
        self.output: str | None = None  # named in the "please wait" message
        self._holding = False
        self._held = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.finishing:
            self.ignored += 1
            log.warning("interrupted again: still finishing %s, please wait", self.output or "the output")
            return
        if self._holding:
            self._held = True
            return
        self.finishing = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """An interrupt that comes inside the block is raised when the block is done (and dropped if the
        block fails: the error ends the run anyway)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            held, self._held = self._held, False
        if held:
            self.finishing = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def handle_interrupts() -> Iterator[Interrupts]:
    """An :class:`Interrupts`, installed as the SIGINT handler for the block where that is ours to do: in
    the main thread, over Python's default handler (a program that handles SIGINT itself keeps its
    handler, and SIG_IGN stays ignored; the object then only tracks the run)."""
    interrupts = Interrupts()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield interrupts
        return
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        yield interrupts
    finally:
        if signal.getsignal(signal.SIGINT) is interrupts:  # a handler set meanwhile is the caller's choice
            signal.signal(signal.SIGINT, previous)


@dataclass
class RunReport:
    """What a run did. ``frames_in == frames_out + skipped`` always holds."""

    input: str
    output: str
    frames_in: int = 0
    frames_out: int = 0
    skipped: int = 0
    expected: int | None = None  # declared frames of a file input
    end: str = "end of input"
    interrupted: bool = False
    kept_partial: bool = False
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)  # per-frame stats (when collected)

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [f"{self.frames_out} of {self.frames_in} frames restored"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.expected is not None and self.frames_in < self.expected:
            parts.append(f"{self.expected - self.frames_in} missing of {self.expected} declared")
        parts.append(f"{self.fps:.2f} fps")
        if self.end != "end of input":
            parts.append(self.end)
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input, "output": self.output, "frames_in": self.frames_in, "frames_out": self.frames_out,
            "skipped": self.skipped, "expected": self.expected, "end": self.end, "interrupted": self.interrupted,
            "kept_partial": self.kept_partial, "seconds": self.seconds, "fps": self.fps, "warnings": self.warnings,
            "frames": self.frames,
        }


def process(source, sink, restorer, *, side_by_side: bool = False, collect_stats: bool = False,
            progress: bool = False, interrupts: Interrupts | None = None) -> RunReport:
    """Restore every frame of ``source`` into ``sink`` with ``restorer`` (see the module doc for what is
    skipped, what stops the run and what is kept). Ctrl-C ends the run with ``interrupted=True`` (the
    caller decides the exit status; the frame in flight at that moment is dropped and not counted); any
    other error removes the unfinished output and propagates. ``interrupts``: a caller's own
    (:func:`handle_interrupts`), to keep later signals waiting beyond the run; default: one for the run."""
    with handle_interrupts() if interrupts is None else contextlib.nullcontext(interrupts) as policy:
        return _run(source, sink, restorer, policy, side_by_side=side_by_side, collect_stats=collect_stats,
                    progress=progress)


def _run(source, sink, restorer, interrupts: Interrupts, *, side_by_side: bool, collect_stats: bool,
         progress: bool) -> RunReport:
    from tqdm import tqdm

    report = RunReport(input=source.uri, output=str(sink.path), expected=source.expected)
    interrupts.output = str(sink.path)
    if source.temporal:
        restorer.reset()
    bar = tqdm(total=source.expected if not source.live else None, unit="frame", disable=not progress,
               desc=Path(source.uri).name if not source.live else source.uri, dynamic_ncols=True)
    size: tuple[int, int] | None = None
    start = time.perf_counter()
    frames = iter(source)
    in_flight = False  # a frame was read and is neither written nor skipped yet
    try:
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            read_ms = (time.perf_counter() - t0) * 1e3
            with interrupts.held():  # a counter and its flag change together (frames_in = out + skipped)
                report.frames_in += 1
                in_flight = True
            bar.update(1)
            if frame.image is None:
                with interrupts.held():
                    report.skipped += 1
                    in_flight = False
                continue
            image = frame.image
            if sink.fixed_size:
                if size is None:
                    size = image.shape[:2]
                elif image.shape[:2] != size:
                    with interrupts.held():
                        report.skipped += 1
                        in_flight = False
                    source.state.warn(f"frame {frame.index}: size {image.shape[1]}x{image.shape[0]} differs from "
                                      f"the first frame's {size[1]}x{size[0]}; skipped")
                    continue
            restored = restorer.step(image) if source.temporal else restorer.restore(image)
            t1 = time.perf_counter()
            with interrupts.held():  # the frame is in the file and counted, or neither
                sink.write(frame, np.hstack([image, restored]) if side_by_side else restored)
                report.frames_out += 1
                in_flight = False
            write_ms = (time.perf_counter() - t1) * 1e3
            if collect_stats:
                info = restorer.last
                report.frames.append({
                    "index": frame.index, "name": frame.name, "c": info.c, "probabilities": info.probabilities,
                    "scene_change": info.scene_change, "tiles": info.tiles,
                    "timings_ms": {"read": read_ms, **info.timings.as_dict(), "write": write_ms},
                })
        # Inside the try: an interrupt that comes before this line is handled below, none after it
        interrupts.finishing = True
        if report.frames_out == 0:
            raise InputError(f"{source.uri}: no frame could be read ({report.skipped} skipped)")
        sink.close()
    except KeyboardInterrupt:
        interrupts.finishing = True  # also when the KeyboardInterrupt came from elsewhere than a signal
        if in_flight:  # the frame being restored when the interrupt came is dropped, not counted
            report.frames_in -= 1
        report.interrupted = True
        report.end = "interrupted"
        report.kept_partial = sink.interrupt()
    except BaseException:
        interrupts.finishing = True
        sink.abort()
        raise
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        source.close()
        if not report.interrupted:
            report.end = source.state.end
        report.warnings = list(source.state.warnings)
    if report.frames_in != report.frames_out + report.skipped:  # pragma: no cover - an invariant
        raise AdsrtError(f"frame accounting is off: {report.frames_in} in, {report.frames_out} out, "
                         f"{report.skipped} skipped")
    return report
