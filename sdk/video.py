"""Frame sources and sinks named by URI (the jetson-inference grammar), and the frame loop between them.

Inputs (:func:`open_source`):

==============================  =====================================================================
``photo.png``                   one image (``.png .jpg .jpeg .tif .tiff .bmp .webp``)
``folder/``                     every image directly inside, by name (restored one by one, no smoothing)
``clip.mp4``                    a video file (``.mp4 .avi .mkv .mov .m4v .webm .mpg .mpeg .wmv .flv .ts``)
``file://path``                 the same, as a URI
``v4l2:///dev/video0``, ``0``   a V4L2 camera, by device path or index
``rtsp://host/path``            a network stream (also ``rtsps``, ``http``, ``https``), reconnected with backoff
==============================  =====================================================================

Outputs (:func:`open_sink`): an image file (for an image input), a folder (one image per frame, the
input's file names for folder inputs, ``000000.png`` ... otherwise), or a video file (codec from the
extension: ``.mp4/.mov/.m4v`` mp4v, ``.avi`` MJPG, ``.mkv`` FFV1 lossless; ``--output-codec`` overrides).
Without an output, files are written next to the input with a suffix (``clip_restored.mp4``,
``folder_restored/``); live inputs need an explicit output.

Failure handling, as the runtime issue asks:

- missing, corrupt or unsupported inputs raise :class:`InputError` (an unreadable image inside a folder
  is skipped with a warning and counted instead);
- a video frame that cannot be decoded is skipped with a warning and counted; a video that ends before
  its declared frame count stops with a warning (``end: ended early``), never a crash;
- a camera that stops delivering frames (unplugged) ends the stream cleanly with a message;
- a network stream that drops is reopened with exponential backoff (``retries`` attempts, delays
  ``backoff_s * 2**i`` capped at ``backoff_max_s``), then the stream ends cleanly with a message;
- outputs are written to a temporary name in the target folder and renamed when complete (images per
  file, videos when the stream ends); a failed run removes the temporary file, so no half file ever
  carries the final name. Unwritable outputs fail before the first frame is processed;
- on Ctrl-C (and SIGTERM, in ``adsrt restore``) the video writer is closed, and the part written so far
  is kept under the final name only if OpenCV can read a frame back from it (a playable file); otherwise
  it is removed. The frame being restored at that moment is dropped (and not counted).

Frames in = frames out + skipped (broken or wrong-sized frames), and :class:`RunReport` says so.
Frames are RGB uint8 ``HxWx3`` throughout (OpenCV's BGR is converted at the edges).
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np

from adsrt.errors import AdsrtError, ImageReadError, InputError, OutputError
from adsrt.fileio import check_writable_folder
from adsrt.imageio import IMAGE_EXTENSIONS, list_images, read_image, write_image

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CODECS",
    "VIDEO_EXTENSIONS",
    "Frame",
    "FrameSink",
    "FrameSource",
    "RunReport",
    "SinkOptions",
    "SourceOptions",
    "open_sink",
    "open_source",
    "process",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
DEFAULT_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_FPS = 30.0


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` the sources use (tests pass fakes through the openers)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def set(self, prop: int, value: float) -> bool: ...
    def release(self) -> None: ...


Opener = Callable[[], Capture]


@dataclass
class SourceOptions:
    """``--input-*`` options."""

    width: int | None = None  # cameras: requested capture size
    height: int | None = None
    rate: float | None = None  # cameras: requested frame rate
    max_frames: int | None = None  # stop after this many frames (any source)
    retries: int = 5  # network streams: reconnect attempts before giving up
    backoff_s: float = 0.5  # first reconnect delay, doubled per attempt
    backoff_max_s: float = 8.0
    max_bad_reads: int = 25  # video files: consecutive failed reads that mean the file has ended
    camera_failures: int = 10  # cameras: consecutive failed reads that mean the camera is gone
    camera_retry_s: float = 0.05  # cameras: pause between failed reads


@dataclass
class SinkOptions:
    """``--output-*`` options."""

    codec: str | None = None  # video FourCC (default from the extension, DEFAULT_CODECS)
    rate: float | None = None  # video frame rate (default: the input's, else 30)
    ext: str | None = None  # image format of folder outputs (default: the input file's, else .png)
    suffix: str = "_restored"  # default output name: next to the input, with this suffix


@dataclass
class Frame:
    """One item of a source: an RGB uint8 image, or None for a frame that could not be decoded."""

    index: int
    image: np.ndarray | None
    name: str | None = None  # file name (folder and image sources)
    error: str | None = None


@dataclass
class SourceState:
    frames: int = 0  # items delivered (broken ones included)
    broken: int = 0
    reconnects: int = 0
    end: str = "end of input"
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------- sources


class FrameSource(ABC):
    """Iterate to get :class:`Frame` s; ``close()`` (or ``with``) releases the device or file."""

    kind: ClassVar[str]
    live: ClassVar[bool] = False  # cameras and network streams: no end, no frame count, no default output
    temporal: ClassVar[bool] = True  # frames of one scene over time (videos): smooth c across frames

    def __init__(self, uri: str, options: SourceOptions | None = None) -> None:
        self.uri = uri
        self.options = options or SourceOptions()
        self.state = SourceState()
        self.fps: float | None = None
        self.expected: int | None = None  # declared number of frames (files), None for live sources

    @abstractmethod
    def _frames(self) -> Iterator[Frame]: ...

    def __iter__(self) -> Iterator[Frame]:
        limit = self.options.max_frames
        for frame in self._frames():
            if limit is not None and self.state.frames >= limit:
                self.state.end = f"--input-frames {limit} reached"
                return
            self.state.frames += 1
            if frame.image is None:
                self.state.broken += 1
            yield frame

    def close(self) -> None:  # noqa: B027 - optional hook: sources without a handle have nothing to release
        return None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def default_output(self, suffix: str) -> Path:
        raise OutputError(f"{self.uri}: a {self.kind} input needs an explicit OUTPUT (file, folder or video)")

    def describe(self) -> str:
        parts = [f"{self.kind} {self.uri}"]
        if self.expected is not None:
            parts.append(f"{self.expected} frames")
        if self.fps:
            parts.append(f"{self.fps:g} fps")
        return ", ".join(parts)


class ImageFileSource(FrameSource):
    kind = "image"
    temporal = False

    def __init__(self, path: Path, options: SourceOptions | None = None) -> None:
        super().__init__(str(path), options)
        self.path = path
        self.image = read_image(path)  # fails now, with the file's name, before any output is opened
        self.expected = 1

    def _frames(self) -> Iterator[Frame]:
        yield Frame(0, self.image, name=self.path.name)

    def default_output(self, suffix: str) -> Path:
        return self.path.with_name(f"{self.path.stem}{suffix}{self.path.suffix}")


class ImageFolderSource(FrameSource):
    kind = "folder"
    temporal = False

    def __init__(self, folder: Path, options: SourceOptions | None = None) -> None:
        super().__init__(str(folder), options)
        self.folder = folder
        self.paths = list_images(folder)
        if not self.paths:
            raise InputError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        self.expected = len(self.paths)

    def _frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                yield Frame(index, read_image(path), name=path.name)
            except ImageReadError as exc:
                self.state.warn(f"skipped unreadable image: {exc}")
                yield Frame(index, None, name=path.name, error=str(exc))

    def default_output(self, suffix: str) -> Path:
        folder = self.folder.resolve()
        return folder.with_name(f"{folder.name}{suffix}")


class _CaptureSource(FrameSource):
    def __init__(self, uri: str, options: SourceOptions | None, opener: Opener | None,
                 sleep: Callable[[float], None] | None) -> None:
        super().__init__(uri, options)
        self._opener = opener
        self._sleep = sleep or time.sleep
        self.cap: Capture | None = None

    def _read_props(self) -> None:
        assert self.cap is not None
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and 0.0 < fps < 1000.0 else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class VideoFileSource(_CaptureSource):
    kind = "video"

    def __init__(self, path: Path, options: SourceOptions | None = None, *, opener: Opener | None = None) -> None:
        super().__init__(str(path), options, opener or (lambda: cv2.VideoCapture(str(path))), None)
        self.path = path
        self.cap = self._opener()
        if not self.cap.isOpened():
            self.cap.release()
            raise InputError(f"{path}: OpenCV cannot open this video (corrupt, truncated or unsupported codec?)")
        self._read_props()
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.expected = count if count > 0 else None

    def _frames(self) -> Iterator[Frame]:
        assert self.cap is not None
        index, bad = 0, 0
        while True:
            ok, image = self.cap.read()
            if ok and image is not None:
                for _ in range(bad):  # failed reads followed by a good frame were broken frames
                    self.state.warn(f"{self.path.name}: frame {index} could not be decoded; skipped")
                    yield Frame(index, None, error="undecodable frame")
                    index += 1
                bad = 0
                yield Frame(index, _bgr_to_rgb(image))
                index += 1
                continue
            bad += 1
            if bad >= self.options.max_bad_reads or (self.expected is not None and index + bad > self.expected):
                break  # trailing failures are the end of the file, not frames
        if self.expected is not None and index < self.expected:
            self.state.end = "ended early"
            self.state.warn(f"{self.path.name}: the video ended after {index} of its {self.expected} declared frames "
                            "(truncated file?)")

    def default_output(self, suffix: str) -> Path:
        ext = self.path.suffix if self.path.suffix.lower() in DEFAULT_CODECS else ".mp4"
        return self.path.with_name(f"{self.path.stem}{suffix}{ext}")


class CameraSource(_CaptureSource):
    kind = "camera"
    live = True

    def __init__(self, device: int | str, options: SourceOptions | None = None, *, opener: Opener | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        uri = f"v4l2://{device}" if isinstance(device, str) else str(device)
        if opener is None:
            def opener() -> Capture:
                if isinstance(device, str):
                    return cv2.VideoCapture(device, cv2.CAP_V4L2)
                return cv2.VideoCapture(device)
        super().__init__(uri, options, opener, sleep)
        self.cap = self._opener()
        if not self.cap.isOpened():
            self.cap.release()
            raise InputError(f"cannot open camera {uri} (no such device, no permission, or busy?)")
        o = self.options
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, o.width), (cv2.CAP_PROP_FRAME_HEIGHT, o.height),
                            (cv2.CAP_PROP_FPS, o.rate)):
            if value and not self.cap.set(prop, float(value)):
                log.warning("camera %s refused %s = %s", uri, prop, value)
        self._read_props()

    def _frames(self) -> Iterator[Frame]:
        assert self.cap is not None
        index, failures = 0, 0
        while True:
            ok, image = self.cap.read()
            if ok and image is not None:
                failures = 0
                yield Frame(index, _bgr_to_rgb(image))
                index += 1
                continue
            failures += 1
            if failures >= self.options.camera_failures:
                self.state.end = "camera lost"
                self.state.warn(f"camera {self.uri} stopped delivering frames after {index} frames "
                                "(disconnected?); stopping")
                return
            self._sleep(self.options.camera_retry_s)


class NetworkSource(_CaptureSource):
    """A network stream (RTSP, HTTP); opened and reopened with exponential backoff.

    Opening: one attempt, then up to ``retries`` more after delays ``backoff_s * 2**i`` (capped at
    ``backoff_max_s``); still closed -> :class:`InputError`. After a drop (a failed read), the same
    schedule restarts; it resets with every frame that arrives, and after ``retries`` reconnect attempts
    without a frame the stream ends cleanly (``end: stream lost``).
    """

    kind = "stream"
    live = True

    def __init__(self, url: str, options: SourceOptions | None = None, *, opener: Opener | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(url, options, opener or (lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG)), sleep)
        self.delays: list[float] = []  # every backoff delay slept (reported, and checked by the tests)
        for attempt in range(self.options.retries + 1):
            if attempt:
                self._wait(attempt - 1, "not reachable")
            if self._try_open():
                break
        else:
            raise InputError(f"cannot open stream {_redact(url)} after {self.options.retries + 1} attempts")
        self._read_props()

    def _wait(self, attempt: int, why: str) -> None:
        o = self.options
        delay = min(o.backoff_s * 2**attempt, o.backoff_max_s)
        log.warning("stream %s %s; retrying in %.1f s (attempt %d of %d)", _redact(self.uri), why, delay,
                    attempt + 1, o.retries)
        self.delays.append(delay)
        self._sleep(delay)

    def _try_open(self) -> bool:
        cap = self._opener()
        if cap.isOpened():
            self.cap = cap
            return True
        cap.release()
        return False

    def _frames(self) -> Iterator[Frame]:
        index, attempt = 0, 0  # reconnect attempts since the last frame that arrived
        while True:
            if self.cap is not None:
                ok, image = self.cap.read()
                if ok and image is not None:
                    attempt = 0
                    yield Frame(index, _bgr_to_rgb(image))
                    index += 1
                    continue
                self.cap.release()
                self.cap = None
            if attempt >= self.options.retries:
                self.state.end = "stream lost"
                self.state.warn(f"stream {_redact(self.uri)} dropped and did not come back after "
                                f"{self.options.retries} attempts; stopping after {index} frames")
                return
            self._wait(attempt, "dropped")
            attempt += 1
            if self._try_open():
                self.state.reconnects += 1


def _redact(url: str) -> str:
    """A URL without its password (rtsp://user:secret@host -> rtsp://user:***@host) for messages."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", url)


def _local_path(text: str) -> str:
    if text.startswith("file://"):
        return text[len("file://"):]
    return text


def open_source(uri: str | os.PathLike, options: SourceOptions | None = None, *, opener: Opener | None = None,
                sleep: Callable[[float], None] | None = None) -> FrameSource:
    """The source an input URI names (see the module doc). ``opener``/``sleep``: for cameras and
    streams, how to open the capture and how to wait between reconnects (tests inject fakes)."""
    text = os.fspath(uri)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "v4l2":
        device = text[len("v4l2://"):]
        if not device:
            raise InputError(f"{text}: name the device, e.g. v4l2:///dev/video0")
        return CameraSource(device, options, opener=opener, sleep=sleep)
    if re.fullmatch(r"\d+", text):
        return CameraSource(int(text), options, opener=opener, sleep=sleep)
    if scheme in NETWORK_SCHEMES:
        return NetworkSource(text, options, opener=opener, sleep=sleep)
    if scheme and scheme != "file":
        raise InputError(f"{_redact(text)}: unsupported input scheme {scheme!r} (use a file, folder, video, "
                         f"v4l2:///dev/videoN, a camera index, or {', '.join(s + '://' for s in NETWORK_SCHEMES)})")
    path = Path(_local_path(text))
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return ImageFolderSource(path, options)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return ImageFileSource(path, options)
    if suffix in VIDEO_EXTENSIONS:
        return VideoFileSource(path, options, opener=opener)
    raise InputError(f"{path}: unsupported input type {suffix or '(no extension)'!r} (images: "
                     f"{' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)})")


# ----------------------------------------------------------------------------------------------- sinks


class FrameSink(ABC):
    """Where restored frames go: ``write`` each, then ``close`` (success), ``abort`` (failure: nothing under
    the final name) or ``interrupt`` (Ctrl-C: keep what is complete and playable)."""

    fixed_size: ClassVar[bool] = False  # every frame must have the first frame's size (videos)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0

    @abstractmethod
    def write(self, frame: Frame, image: np.ndarray) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook: per-file sinks finish as they write
        return None

    def abort(self) -> None:  # noqa: B027 - optional hook: per-file sinks leave only complete files
        return None

    def interrupt(self) -> bool:
        """Finish what can be kept after Ctrl-C; True when something is kept under the final name."""
        self.close()
        return self.written > 0


class ImageFileSink(FrameSink):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise OutputError(f"{path}: unsupported image extension (use one of {', '.join(IMAGE_EXTENSIONS)})")
        check_writable_folder(path.parent, path)

    def write(self, frame: Frame, image: np.ndarray) -> None:
        if self.written:
            raise OutputError(f"{self.path}: one image file holds one frame; use a folder or video output")
        write_image(self.path, image)  # atomic
        self.written += 1


class ImageFolderSink(FrameSink):
    def __init__(self, folder: Path, ext: str) -> None:
        super().__init__(folder)
        self.ext = ext if ext.startswith(".") else f".{ext}"
        if self.ext.lower() not in IMAGE_EXTENSIONS:
            raise OutputError(f"unsupported image format {ext!r} for folder output (use {', '.join(IMAGE_EXTENSIONS)})")
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder}: exists and is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror})") from exc
        check_writable_folder(folder, folder / f"x{self.ext}")

    def write(self, frame: Frame, image: np.ndarray) -> None:
        stem = Path(frame.name).stem if frame.name else f"{frame.index:06d}"
        write_image(self.path / f"{stem}{self.ext}", image)  # atomic, per file
        self.written += 1


class VideoSink(FrameSink):
    """A video file written with OpenCV to a temporary name beside the target, renamed on close."""

    fixed_size = True

    def __init__(self, path: Path, fps: float, codec: str | None = None) -> None:
        super().__init__(path)
        suffix = path.suffix.lower()
        self.codec = codec or DEFAULT_CODECS.get(suffix)
        if self.codec is None:
            raise OutputError(f"{path}: no default codec for {suffix!r} videos; pass --output-codec FOURCC or use "
                              f"{', '.join(DEFAULT_CODECS)}")
        if len(self.codec) != 4:
            raise OutputError(f"codec must be a four-character code (e.g. mp4v, MJPG, FFV1), got {self.codec!r}")
        if not (np.isfinite(fps) and fps > 0):
            raise OutputError(f"bad output frame rate {fps!r}")
        self.fps = float(fps)
        check_writable_folder(path.parent, path)
        # Same extension at the end: OpenCV picks the container from it.
        self.tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        self.size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None

    def write(self, frame: Frame, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer.release()
                self._writer = None
                self.tmp.unlink(missing_ok=True)
                raise OutputError(f"{self.path}: OpenCV cannot write {self.codec!r} video into {self.path.suffix!r} "
                                  "(try another --output-codec or extension)")
            self.size = (w, h)
        elif (w, h) != self.size:
            raise OutputError(f"frame {frame.index}: size {w}x{h} differs from the video's {self.size[0]}x{self.size[1]}")
        self._writer.write(np.ascontiguousarray(image[:, :, ::-1]))
        self.written += 1

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def close(self) -> None:
        self._release()
        if not self.written:
            self.tmp.unlink(missing_ok=True)
            return
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: cannot move the finished video into place ({exc.strerror})") from exc

    def abort(self) -> None:
        self._release()
        self.tmp.unlink(missing_ok=True)

    def interrupt(self) -> bool:
        self._release()
        if self.written and playable(self.tmp):
            os.replace(self.tmp, self.path)
            return True
        self.tmp.unlink(missing_ok=True)
        return False


def playable(path: Path) -> bool:
    """Whether OpenCV opens ``path`` and decodes its first frame."""
    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened()) and bool(cap.read()[0])
    finally:
        cap.release()


def open_sink(uri: str | os.PathLike | None, source: FrameSource, options: SinkOptions | None = None) -> FrameSink:
    """The sink an output URI names for ``source`` (None: next to the input, see the module doc)."""
    options = options or SinkOptions()
    text = os.fspath(uri) if uri is not None else str(source.default_output(options.suffix))
    if "://" in text and not text.startswith("file://"):
        raise OutputError(f"{_redact(text)}: streaming outputs are not supported; write a video file or a folder")
    path = Path(_local_path(text))
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        if isinstance(source, ImageFileSource):
            raise OutputError(f"{path}: an image input needs an image or folder output")
        return VideoSink(path, options.rate or source.fps or DEFAULT_FPS, options.codec)
    if suffix in IMAGE_EXTENSIONS and not path.is_dir():
        if not isinstance(source, ImageFileSource):
            raise OutputError(f"{path}: a {source.kind} input needs a folder or video output, not one image file")
        return ImageFileSink(path)
    if suffix and not path.is_dir() and not text.endswith(("/", os.sep)):
        raise OutputError(f"{path}: unknown output type {suffix!r} (an image, a video {' '.join(VIDEO_EXTENSIONS)}, "
                          "or a folder)")
    ext = options.ext
    if ext is None:
        ext = Path(source.uri).suffix if isinstance(source, ImageFileSource) else ".png"
    return ImageFolderSink(path, ext)


# ----------------------------------------------------------------------------------------------- the loop


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


def process(source: FrameSource, sink: FrameSink, restorer, *, side_by_side: bool = False,
            collect_stats: bool = False, progress: bool = False) -> RunReport:
    """Restore every frame of ``source`` into ``sink`` with ``restorer`` (see the module doc for what is
    skipped, what stops the run and what is kept). Ctrl-C ends the run with ``interrupted=True`` (the
    caller decides the exit status; the frame in flight at that moment is dropped and not counted); any
    other error removes the unfinished output and propagates."""
    from tqdm import tqdm

    report = RunReport(input=source.uri, output=str(sink.path), expected=source.expected)
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
            report.frames_in += 1
            in_flight = True
            bar.update(1)
            if frame.image is None:
                report.skipped += 1
                in_flight = False
                continue
            image = frame.image
            if sink.fixed_size:
                if size is None:
                    size = image.shape[:2]
                elif image.shape[:2] != size:
                    report.skipped += 1
                    in_flight = False
                    source.state.warn(f"frame {frame.index}: size {image.shape[1]}x{image.shape[0]} differs from "
                                      f"the first frame's {size[1]}x{size[0]}; skipped")
                    continue
            restored = restorer.step(image) if source.temporal else restorer.restore(image)
            t1 = time.perf_counter()
            sink.write(frame, np.hstack([image, restored]) if side_by_side else restored)
            write_ms = (time.perf_counter() - t1) * 1e3
            report.frames_out += 1
            in_flight = False
            if collect_stats:
                info = restorer.last
                report.frames.append({
                    "index": frame.index, "name": frame.name, "c": info.c, "probabilities": info.probabilities,
                    "scene_change": info.scene_change, "tiles": info.tiles,
                    "timings_ms": {"read": read_ms, **info.timings.as_dict(), "write": write_ms},
                })
    except KeyboardInterrupt:
        if in_flight:  # the frame being restored when the interrupt came is dropped, not counted
            report.frames_in -= 1
        report.interrupted = True
        report.end = "interrupted"
        report.kept_partial = sink.interrupt()
    except BaseException:
        sink.abort()
        raise
    else:
        if report.frames_out == 0:
            sink.abort()
            raise InputError(f"{source.uri}: no frame could be read ({report.skipped} skipped)")
        sink.close()
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
