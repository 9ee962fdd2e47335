"""Ctrl-C (SIGINT) and SIGTERM around the output file (:class:`adsrt.runtime.loop.Interrupts`): the first
signal stops the run, a frame being written is finished and counted first, and the signals after it wait
until the file is finished instead of cutting it short or killing the process; the interrupt message
counts the frames in the file.

The unit tests raise real signals in this process (``signal.raise_signal``) from inside a sink's write and
close, where a user's second Ctrl-C lands; the last test is the real thing, ``adsrt restore`` in a
subprocess that gets several signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from adsrt.io.sinks import VideoSink
from adsrt.io.sources import Frame, FrameSource
from adsrt.runtime.loop import process


@pytest.fixture(autouse=True)
def _default_sigint():
    """These tests need Python's own SIGINT handler (what `adsrt` runs with), and leave it in place."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this test process")
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class Identity:
    """A restorer that returns the frame: these tests are about the loop and the file, not the model."""

    def reset(self) -> None:
        pass

    def step(self, image: np.ndarray) -> np.ndarray:
        return image

    restore = step


class Frames(FrameSource):
    """``n`` small frames; a real SIGINT is raised while frame ``interrupt_at`` is read (None: never)."""

    kind = "video"

    def __init__(self, n: int, interrupt_at: int | None = None) -> None:
        super().__init__("test://frames")
        self.n, self.interrupt_at, self.fps = n, interrupt_at, 10.0
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]

    def _frames(self) -> Iterator[Frame]:
        for index, image in enumerate(self.images):
            if index == self.interrupt_at:
                signal.raise_signal(signal.SIGINT)
            yield Frame(index, image)


class SignallingSink(VideoSink):
    """A video sink that raises SIGINT ``during`` its "write" (after the frame is written), "close" or
    "interrupt" (before finishing the file), ``times`` times: a user pressing Ctrl-C right then."""

    def __init__(self, path, during: str, times: int = 1, after_frames: int = 0) -> None:
        super().__init__(path, 10.0)
        self.during, self.times, self.after_frames = during, times, after_frames

    def _signal(self, where: str) -> None:
        if where == self.during and self.written >= self.after_frames:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)
            self.during = None  # once

    def write(self, frame, image) -> None:
        super().write(frame, image)
        self._signal("write")

    def close(self) -> None:
        self._signal("close")
        super().close()

    def interrupt(self) -> bool:
        self._signal("interrupt")
        return super().interrupt()


def frames_in_file(path) -> int:
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


def run(source, sink):
    """``process``, failing the test (not the whole session) if an interrupt escapes it."""
    try:
        return process(source, sink, Identity())
    except KeyboardInterrupt:
        pytest.fail("a KeyboardInterrupt escaped process()")


def finishing_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "still finishing" in r.getMessage()]


def test_interrupts_while_the_kept_part_is_finished_are_ignored(tmp_path, caplog):
    out = tmp_path / "out.avi"
    sink = SignallingSink(out, during="interrupt", times=3)
    report = run(Frames(8, interrupt_at=5), sink)
    assert report.interrupted and report.kept_partial and report.frames_out == 5
    assert frames_in_file(out) == sink.written == 5
    assert len(finishing_warnings(caplog)) == 3 and str(out) in finishing_warnings(caplog)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.avi"]


def test_an_interrupt_while_a_frame_is_written_waits_until_it_is_counted(tmp_path):
    """The interrupt message counted one frame less than the file held: the signal came after the sink had
    written a frame and before the loop counted it. Now the frame is written and counted, or neither."""
    out = tmp_path / "out.avi"
    sink = SignallingSink(out, during="write", after_frames=3)
    report = run(Frames(8), sink)
    assert report.interrupted and report.kept_partial
    assert report.frames_out == report.frames_in == sink.written == frames_in_file(out) == 3


def test_an_interrupt_while_the_complete_video_is_closed_is_ignored(tmp_path, caplog):
    out = tmp_path / "out.avi"
    sink = SignallingSink(out, during="close", times=2)
    report = run(Frames(6), sink)
    assert not report.interrupted and report.frames_out == 6 and frames_in_file(out) == 6
    assert len(finishing_warnings(caplog)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.avi"]


def test_a_program_with_its_own_sigint_handler_keeps_it(tmp_path):
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    class Recording(VideoSink):
        def write(self, frame, image) -> None:
            seen.append(signal.getsignal(signal.SIGINT))
            super().write(frame, image)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        report = process(Frames(3), Recording(tmp_path / "out.avi", 10.0), Identity())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert report.frames_out == 3 and seen == [handler] * 3


INTERRUPTED = re.compile(r"interrupted after (\d+) frames; kept the playable part")


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_several_signals_end_adsrt_restore_with_130_and_a_whole_file(tmp_path, trained_bundle, clean_photo,
                                                                      make_video, pan, noisy, first):
    """Three quick Ctrl-Cs killed `adsrt restore` by the signal (the later ones landed while it finished
    the file, or while the interpreter shut down). Now: exit 130, the playable part kept under the final
    name, no temporary file, and the message counts the frames the file holds."""
    frames = [noisy(f, seed=i) for i, f in enumerate(pan(np.tile(clean_photo, (1, 10, 1)), 600, 96, 64))]
    src = make_video(tmp_path / "long.avi", frames, fps=25.0)
    out = tmp_path / "out.avi"
    proc = subprocess.Popen([sys.executable, "-m", "adsrt", "-q", "restore", str(src), str(out), "--bundle",
                             str(trained_bundle)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # frames are being written
        partial = list(tmp_path.glob(".out.*.partial.avi"))
        if partial and partial[0].exists() and partial[0].stat().st_size > 0:
            break
        time.sleep(0.02)
    time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(first)
    for _ in range(12):  # the user keeps pressing Ctrl-C while adsrt finishes the file and exits
        time.sleep(0.01)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    match = INTERRUPTED.search(err)
    assert match, err
    assert 0 < frames_in_file(out) == int(match[1]) < 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.avi", "out.avi"]
