"""Frame sinks (:mod:`adsrt.io.sinks`): outputs checked before any frame (missing or unwritable folders,
types that do not fit the input), default outputs next to the input."""

from __future__ import annotations

import pytest

from adsrt.errors import OutputError
from adsrt.imageio import write_image
from adsrt.io.sinks import SinkOptions, open_sink
from adsrt.io.sources import CameraSource, open_source


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
