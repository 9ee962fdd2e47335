"""Frame sources (:mod:`adsrt.io.sources`): inputs and URIs resolved to sources, bad inputs refused with
clear errors, live sources limited, streams opened with backoff and reconnected after drops.

Cameras and RTSP servers cannot run here, so those sources get fake captures through their injectable
openers (the fakes stand in for the device; the code under test is our reconnect and stop logic)."""

from __future__ import annotations

import os

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
