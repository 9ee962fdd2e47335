"""Frame sources (:mod:`adsrt.io.sources`): inputs and URIs resolved to sources, bad inputs refused with
clear errors (one line: OpenCV and FFmpeg kept quiet), live sources limited, streams opened with backoff and
reconnected after drops, options validated.

Cameras and RTSP servers cannot run here, so those sources get fake captures through their injectable
openers (the fakes stand in for the device; the code under test is our reconnect and stop logic)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from adsrt.errors import InputError
from adsrt.io.sources import CameraSource, NetworkSource, SourceOptions, open_source


def test_bad_inputs_are_clear_errors(tmp_path, video_frames, make_video):
    with pytest.raises(InputError, match="no such file or folder"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported input type '.txt'"):
        open_source(tmp_path / "notes.txt")
    (tmp_path / "random.mp4").write_bytes(os.urandom(5000))
    with pytest.raises(InputError, match="cannot open this video"):
        open_source(tmp_path / "random.mp4")
    mp4 = make_video(tmp_path / "clip.mp4", video_frames.noisy, codec="mp4v")
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # the index is at the end
    with pytest.raises(InputError, match="cannot open this video"):
        open_source(tmp_path / "cut.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path / "empty")
    with pytest.raises(InputError, match="unsupported input scheme 'csi'"):
        open_source("csi://0")
    with pytest.raises(InputError, match="name the device"):
        open_source("v4l2://")


# ------------------------------------------------------------------------------ cameras and streams


def test_uris_name_cameras_and_streams(video_frames, fake_capture, openers):
    bgr = video_frames.noisy[0][:, :, ::-1].copy()
    cam = open_source("v4l2:///dev/video3", opener=openers(fake_capture([bgr])))
    assert isinstance(cam, CameraSource) and cam.uri == "v4l2:///dev/video3" and cam.live and cam.fps == 30.0
    assert isinstance(open_source("2", opener=openers(fake_capture([bgr]))), CameraSource)
    stream = open_source("rtsp://user:secret@cam.local/live", opener=openers(fake_capture([bgr])), sleep=lambda s: None)
    assert isinstance(stream, NetworkSource) and stream.live
    with pytest.raises(InputError, match="cannot open camera 1"):
        open_source("1", opener=openers(fake_capture([], opened=False)))


def test_a_stream_is_opened_with_backoff_and_reconnected_after_drops(video_frames, fake_capture, openers):
    bgr = [f[:, :, ::-1].copy() for f in video_frames.noisy[:5]]
    slept = []
    stream = NetworkSource(
        "rtsp://cam/live", SourceOptions(retries=5, backoff_s=0.5, backoff_max_s=4.0),
        opener=openers(fake_capture([], opened=False), fake_capture([], opened=False),  # two failed opens
                       fake_capture(bgr[:3]),  # 3 frames, then a drop
                       fake_capture([], opened=False), fake_capture(bgr[3:])),  # one failed reconnect, 2 frames
        sleep=slept.append)
    assert slept == [0.5, 1.0]
    frames = list(stream)
    assert len(frames) == 5 and all(f.image is not None for f in frames)
    # drop 1: 0.5 (fails), 1.0 (back); drop 2: the schedule restarts and runs out (capped at 4 s)
    assert slept[2:] == [0.5, 1.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert stream.state.end == "stream lost" and stream.state.reconnects == 1
    assert "did not come back after 5 attempts; stopping after 5 frames" in stream.state.warnings[0]


def test_a_stream_that_never_opens_is_an_input_error(openers):
    slept = []
    with pytest.raises(InputError, match=r"cannot open stream rtsp://user:\*\*\*@cam/live after 4 attempts"):
        NetworkSource("rtsp://user:pw@cam/live", SourceOptions(retries=3), opener=openers(), sleep=slept.append)
    assert slept == [0.5, 1.0, 2.0]


def test_input_frames_limits_a_live_source(video_frames, fake_capture, openers):
    bgr = video_frames.noisy[0][:, :, ::-1].copy()
    camera = CameraSource(0, SourceOptions(max_frames=3), opener=openers(fake_capture([bgr] * 10)))
    assert len(list(camera)) == 3 and camera.state.end == "--input-frames 3 reached"


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(("options", "message"), [
    ({"retries": -1}, r"retries \(--input-retries\) must be an integer >= 0 \(0: no reconnect attempts\), got -1"),
    ({"retries": 1.5}, "got 1.5"),
    ({"backoff_s": -0.5}, r"backoff_s \(--input-backoff\) must be a number of seconds >= 0, got -0.5"),
    ({"backoff_max_s": float("inf")}, "got inf"),
    ({"rate": 0}, r"rate \(--input-rate\) must be a frame rate > 0, got 0"),
    ({"width": 0}, r"width \(--input-width\) must be an integer >= 1"),
    ({"max_frames": True}, "got True"),
    ({"camera_failures": 0}, "camera_failures must be an integer >= 1"),
])
def test_source_options_refuse_meaningless_values(options, message):
    with pytest.raises(InputError, match=message):
        SourceOptions(**options)


def test_zero_retries_still_tries_once(openers):
    with pytest.raises(InputError, match="after 1 attempts"):
        NetworkSource("rtsp://cam/live", SourceOptions(retries=0), opener=openers(), sleep=lambda s: None)


# ------------------------------------------------------------------------- quiet probing of bad files


def mangled_mkv(path, frames, make_video):
    """A real FFV1 .mkv with bytes 200-2000 overwritten: FFmpeg printed six lines about it."""
    data = bytearray(make_video(path.with_name("whole.mkv"), frames, codec="FFV1").read_bytes())
    data[200:2000] = np.random.default_rng(1).integers(0, 256, 1800, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["random.mp4", "mangled.mkv", "text.webm"])
def test_a_bad_video_is_one_line_on_stderr(tmp_path, video_frames, make_video, kind):
    """`adsrt restore` on a file FFmpeg cannot open: adsrt's error alone, not FFmpeg's lines before it."""
    bad = tmp_path / kind
    if kind == "random.mp4":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "mangled.mkv":
        mangled_mkv(bad, video_frames.noisy, make_video)
    else:
        bad.write_bytes(b"hello world\n" * 100)
    proc = subprocess.run([sys.executable, "-m", "adsrt", "restore", str(bad), str(tmp_path / "out.mp4")],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("adsrt restore: error:") and "cannot open this video" in lines[0]


def test_probing_restores_stderr_and_opencv_logging(tmp_path, capfd):
    level = cv2.utils.logging.getLogLevel()
    (tmp_path / "random.mp4").write_bytes(os.urandom(5000))
    with pytest.raises(InputError, match="cannot open this video"):
        open_source(tmp_path / "random.mp4")
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n" and cv2.utils.logging.getLogLevel() == level


def test_debug_logging_shows_what_ffmpeg_says(tmp_path, caplog, capfd):
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.DEBUG, logger="adsrt.io.sources"), pytest.raises(InputError):
        open_source(tmp_path / "random.mp4")
    assert "moov atom not found" in capfd.readouterr().err
