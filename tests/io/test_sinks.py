"""Frame sinks (:mod:`adsrt.io.sinks`): outputs checked before any frame (missing or unwritable folders,
types that do not fit the input), default outputs next to the input, odd frame sizes kept (or refused
where OpenCV cannot keep them), partial files of killed runs removed, options validated."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from adsrt.errors import OutputError
from adsrt.imageio import write_image
from adsrt.io.sinks import SinkOptions, VideoSink, open_sink, remove_stale_partials
from adsrt.io.sources import CameraSource, Frame, open_source


def test_outputs_are_checked_before_any_frame(tmp_path, video_frames, make_video, clean_photo, unwritable_dir):
    src = make_video(tmp_path / "in.avi", video_frames.noisy)
    source = open_source(src)
    with pytest.raises(OutputError, match="output folder .* does not exist"):
        open_sink(tmp_path / "missing" / "out.avi", source)
    with pytest.raises(OutputError, match="needs a folder or video output"):
        open_sink(tmp_path / "out.png", source)
    with pytest.raises(OutputError, match="no default codec"):
        open_sink(tmp_path / "out.wmv", source)
    with pytest.raises(OutputError, match="streaming outputs are not supported"):
        open_sink("rtsp://localhost/out", source)
    with pytest.raises(OutputError, match="unknown output type"):
        open_sink(tmp_path / "out.xyz", source)
    image = tmp_path / "photo.png"
    write_image(image, clean_photo)
    with pytest.raises(OutputError, match="an image input needs an image or folder output"):
        open_sink(tmp_path / "out.mp4", open_source(image))
    with pytest.raises(OutputError, match=f"cannot write in {unwritable_dir}"):
        open_sink(unwritable_dir / "out.avi", source)
    source.close()


def test_default_outputs_sit_next_to_the_input(tmp_path, video_frames, make_video, clean_photo, fake_capture):
    src = make_video(tmp_path / "clip.avi", video_frames.noisy)
    assert open_sink(None, open_source(src), SinkOptions(suffix="_x")).path == tmp_path / "clip_x.avi"
    image = tmp_path / "photo.jpg"
    write_image(image, clean_photo)
    assert open_sink(None, open_source(image)).path == tmp_path / "photo_restored.jpg"
    camera = CameraSource(0, opener=lambda: fake_capture([]))
    with pytest.raises(OutputError, match="camera input needs an explicit OUTPUT"):
        open_sink(None, camera)


# ------------------------------------------------------------------------------------- frame sizes


def read_back(path) -> tuple[int, tuple[int, ...] | None, float]:
    """Frames, frame shape and rate of a video as OpenCV (FFmpeg) reads it back."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    count, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return count, shape, fps


def frames_of(width: int, height: int, n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(width * height)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize(("width", "height"), [(97, 61), (7, 5), (96, 61), (97, 64)])
@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 0.5])
def test_an_avi_keeps_odd_sizes_and_the_exact_rate(tmp_path, width, height, fps):
    """OpenCV's FFmpeg writer wrote 97x61 frames as 96x60; .avi MJPG now keeps them (read back with OpenCV's
    FFmpeg reader, as other players read it), at the exact rate (29.97, 0.5) its own writer cannot store."""
    out = tmp_path / "odd.avi"
    sink = VideoSink(out, fps)  # .avi: MJPG by default
    for i, image in enumerate(frames_of(width, height)):
        sink.write(Frame(i, image), image)
    sink.close()
    count, shape, rate = read_back(out)
    assert (count, shape) == (5, (height, width, 3)) and sink.written == 5
    assert rate == pytest.approx(fps, rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.avi"]


def test_an_interrupted_odd_sized_avi_is_kept_whole(tmp_path):
    out = tmp_path / "odd.avi"
    sink = VideoSink(out, 25.0)
    for i, image in enumerate(frames_of(97, 61, 3)):
        sink.write(Frame(i, image), image)
    assert sink.interrupt()
    assert read_back(out) == (3, (61, 97, 3), 25.0)


def test_even_sizes_keep_their_codecs(tmp_path):
    for ext in (".mkv", ".mp4", ".avi"):
        sink = VideoSink(tmp_path / f"even{ext}", 12.0)
        for i, image in enumerate(frames_of(96, 64)):
            sink.write(Frame(i, image), image)
        sink.close()
        assert read_back(tmp_path / f"even{ext}") == (5, (64, 96, 3), 12.0), ext


@pytest.mark.parametrize(("name", "codec"), [("out.mkv", None), ("out.mp4", None), ("out.mov", None),
                                             ("out.avi", "FFV1")])
def test_odd_sizes_are_refused_where_the_writer_would_cut_them(tmp_path, name, codec):
    """No codec of OpenCV's FFmpeg writer keeps an odd size (it cuts to even), so these are refused at the
    first frame, before anything is written, saying what keeps the size."""
    sink = VideoSink(tmp_path / name, 25.0, codec)
    image = frames_of(97, 61, 1)[0]
    with pytest.raises(OutputError, match=r"would cut the 97x61 frames to 96x60 .* an \.avi with the MJPG codec"):
        sink.write(Frame(0, image), image)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- stale partial files


def test_partials_of_killed_runs_are_removed_and_live_ones_kept(tmp_path, caplog):
    """A run killed with SIGKILL leaves .NAME.PID.partial.EXT; the next video into that folder removes it
    when its process is gone, never a live process's."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its PID names no process now
    dead = tmp_path / f".clip.{child.pid}.partial.mp4"
    live = tmp_path / f".clip.{os.getpid()}.partial.mkv"
    other = [tmp_path / ".notes.123.partial.txt", tmp_path / "clip.mp4", tmp_path / f".x.{child.pid}.partial"]
    for path in (dead, live, *other):
        path.write_bytes(b"half a video")
    with caplog.at_level(logging.INFO, logger="adsrt.io.sinks"):
        VideoSink(tmp_path / "next.avi", 25.0)
    assert not dead.exists() and live.exists() and all(p.exists() for p in other)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert dead.name in message and live.name not in message
    assert remove_stale_partials(tmp_path) == []  # nothing left to remove


# ---------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(("options", "message"), [
    ({"rate": 0}, r"rate \(--output-rate\) must be a frame rate > 0, got 0"),
    ({"rate": -25.0}, "got -25.0"),
    ({"rate": float("nan")}, "got nan"),
    ({"codec": "h264x"}, r"codec \(--output-codec\) must be a four-character code"),
])
def test_sink_options_refuse_meaningless_values(options, message):
    with pytest.raises(OutputError, match=message):
        SinkOptions(**options)


def test_an_explicit_output_rate_is_used(tmp_path, video_frames, make_video):
    source = open_source(make_video(tmp_path / "in.avi", video_frames.noisy, fps=12.0))
    assert open_sink(tmp_path / "out.avi", source, SinkOptions(rate=5.0)).fps == 5.0
    assert open_sink(tmp_path / "out.avi", source).fps == 12.0
    source.close()
