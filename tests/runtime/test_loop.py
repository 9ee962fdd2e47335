"""The frame loop (:func:`adsrt.runtime.loop.process`) end to end: real video files written and read with
OpenCV (from real photos), frame count, size and fps preserved, PSNR improved; broken frames, truncated
files, lost cameras, errors and Ctrl-C handled as the runtime issue asks (sources: tests/io/test_sources.py,
sinks: tests/io/test_sinks.py).

Cameras cannot run here, so the camera source gets fake captures through its injectable opener (the fakes
stand in for the device; the code under test is our stop logic)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

import adsrt
from adsrt.errors import InputError, RestoreError
from adsrt.imageio import write_image
from adsrt.io.sinks import VideoSink, open_sink
from adsrt.io.sources import (
    CameraSource,
    Frame,
    FrameSource,
    ImageFolderSource,
    SourceOptions,
    VideoFileSource,
    open_source,
)
from adsrt.runtime.loop import process


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def mean_psnr(frames, references) -> float:
    return float(np.mean([peak_signal_noise_ratio(r, f, data_range=255) for f, r in zip(frames, references, strict=True)]))


def no_temp_files(folder: Path) -> bool:
    return not any(".partial" in p.name or ".part." in p.name or p.name.endswith((".part", ".probe"))
                   for p in folder.iterdir())


@pytest.fixture(scope="module")
def restorer(trained_bundle):
    return adsrt.load(trained_bundle, device="cpu")


# ----------------------------------------------------------------------------------------- video files


def test_video_keeps_frames_size_and_fps_and_improves_psnr(tmp_path, video_frames, make_video, restorer):
    src = make_video(tmp_path / "noisy.mkv", video_frames.noisy, fps=12.0, codec="FFV1")  # lossless
    source = open_source(src)
    assert isinstance(source, VideoFileSource) and source.expected == 12 and source.fps == 12.0
    report = process(source, open_sink(None, source), restorer, collect_stats=True)
    out = tmp_path / "noisy_restored.mkv"
    frames, fps = read_video(out)
    assert len(frames) == 12 and fps == 12.0 and frames[0].shape == (64, 96, 3)
    assert (report.frames_in, report.frames_out, report.skipped, report.end) == (12, 12, 0, "end of input")
    gain = mean_psnr(frames, video_frames.clean) - mean_psnr(video_frames.noisy, video_frames.clean)
    assert gain > 2.0, f"{gain:.2f} dB"
    assert [f["index"] for f in report.frames] == list(range(12)) and not any(f["scene_change"] for f in report.frames)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(("ext", "codec"), [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_lossy_containers_keep_count_size_and_fps(tmp_path, video_frames, make_video, restorer, ext, codec):
    src = make_video(tmp_path / f"in{ext}", video_frames.noisy, fps=25.0, codec=codec)
    out = tmp_path / f"out{ext}"
    source = open_source(f"file://{src}")
    sink = open_sink(out, source)
    assert isinstance(sink, VideoSink) and sink.codec == codec
    process(source, sink, restorer, side_by_side=True)
    frames, fps = read_video(out)
    assert len(frames) == 12 and fps == 25.0 and frames[0].shape == (64, 192, 3)  # original | restored


def test_a_truncated_video_ends_early_with_a_warning(tmp_path, video_frames, make_video, restorer):
    src = make_video(tmp_path / "full.avi", video_frames.noisy, codec="MJPG")
    data = src.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    source = open_source(cut)
    report = process(source, open_sink(tmp_path / "out.avi", source), restorer)
    assert report.end == "ended early" and report.expected == 12
    assert 0 < report.frames_in < 12 and report.frames_out == report.frames_in and report.skipped == 0
    assert "ended after" in report.warnings[0] and "12 declared frames" in report.warnings[0]
    assert len(read_video(tmp_path / "out.avi")[0]) == report.frames_out


def test_a_corrupt_frame_in_a_real_file_is_skipped_and_counted(tmp_path, video_frames, make_video, restorer):
    src = make_video(tmp_path / "in.mp4", video_frames.noisy, codec="mp4v")
    data = bytearray(src.read_bytes())
    vops = [i for i in range(len(data) - 3) if data[i : i + 4] == b"\x00\x00\x01\xb6"]  # MPEG-4 frame start codes
    assert len(vops) == 12
    data[vops[5] : vops[5] + 64] = bytes(64)  # wipe the header of the sixth frame
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    source = open_source(bad)
    report = process(source, open_sink(tmp_path / "out.mp4", source), restorer)
    assert (report.frames_in, report.frames_out, report.skipped, report.end) == (12, 11, 1, "end of input")
    assert report.warnings == ["bad.mp4: frame 5 could not be decoded; skipped"]
    assert len(read_video(tmp_path / "out.mp4")[0]) == 11


class ListSource(FrameSource):
    """A source that yields what a test gives it (broken frames, an exception at some point)."""

    kind = "video"

    def __init__(self, items, fps: float = 10.0) -> None:
        super().__init__("test://frames")
        self.items, self.fps = items, fps
        self.closed = False

    def _frames(self) -> Iterator[Frame]:
        for index, item in enumerate(self.items):
            if isinstance(item, BaseException):
                raise item
            yield Frame(index, item, error=None if item is not None else "undecodable frame")

    def close(self) -> None:
        self.closed = True


def test_broken_and_odd_sized_frames_are_skipped_and_counted(tmp_path, video_frames, restorer):
    f = video_frames.noisy
    items = [f[0], None, f[1], f[2][:32], None, f[3]]
    source = ListSource(items)
    report = process(source, VideoSink(tmp_path / "out.avi", 10.0), restorer)
    assert (report.frames_in, report.frames_out, report.skipped) == (6, 3, 3) and source.closed
    assert any("differs from the first frame's" in w for w in report.warnings)
    assert len(read_video(tmp_path / "out.avi")[0]) == 3


def test_ctrl_c_keeps_the_playable_part(tmp_path, video_frames, restorer):
    out = tmp_path / "out.avi"
    report = process(ListSource([*video_frames.noisy[:5], KeyboardInterrupt()]), VideoSink(out, 10.0), restorer)
    assert report.interrupted and report.kept_partial and report.end == "interrupted"
    frames, fps = read_video(out)
    assert len(frames) == 5 and fps == 10.0 and no_temp_files(tmp_path)


def test_ctrl_c_before_any_frame_leaves_nothing(tmp_path, restorer):
    out = tmp_path / "out.avi"
    report = process(ListSource([KeyboardInterrupt()]), VideoSink(out, 10.0), restorer)
    assert report.interrupted and not report.kept_partial
    assert list(tmp_path.iterdir()) == []


def test_an_error_mid_run_leaves_no_half_file(tmp_path, video_frames, restorer):
    out = tmp_path / "out.avi"
    with pytest.raises(RestoreError, match="boom"):
        process(ListSource([*video_frames.noisy[:3], RestoreError("boom")]), VideoSink(out, 10.0), restorer)
    assert list(tmp_path.iterdir()) == []


def test_a_source_without_any_good_frame_is_an_error(tmp_path, restorer):
    with pytest.raises(InputError, match="no frame could be read"):
        process(ListSource([None, None]), VideoSink(tmp_path / "out.avi", 10.0), restorer)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- folders and cameras


def test_a_corrupt_image_in_a_folder_is_skipped_and_counted(tmp_path, clean_photo, restorer):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.png", clean_photo)
    (folder / "b.png").write_bytes(b"not a png")
    write_image(folder / "c.jpg", clean_photo)
    source = open_source(folder)
    assert isinstance(source, ImageFolderSource) and not source.temporal
    report = process(source, open_sink(None, source), restorer)
    assert (report.frames_in, report.frames_out, report.skipped) == (3, 2, 1)
    assert sorted(p.name for p in (tmp_path / "in_restored").iterdir()) == ["a.png", "c.png"]
    assert "b.png" in report.warnings[0]


def test_a_camera_that_disappears_stops_cleanly(tmp_path, video_frames, restorer, fake_capture, openers):
    bgr = [f[:, :, ::-1].copy() for f in video_frames.noisy[:4]]
    sleeps = []
    camera = CameraSource(0, SourceOptions(camera_failures=5),
                          opener=openers(fake_capture([bgr[0], bgr[1], None, bgr[2], bgr[3]])), sleep=sleeps.append)
    report = process(camera, VideoSink(tmp_path / "cam.avi", 30.0), restorer)
    assert report.end == "camera lost" and report.frames_out == 4 and report.skipped == 0
    assert len(sleeps) == 1 + 4  # one hiccup, then five failed reads in a row (the last one stops)
    assert "stopped delivering frames after 4 frames" in report.warnings[0]
    assert len(read_video(tmp_path / "cam.avi")[0]) == 4
