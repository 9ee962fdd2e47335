"""Frame sources named by URI (the jetson-inference grammar).

Inputs (:func:`open_source`):

==============================  =====================================================================
``photo.png``                   one image (``.png .jpg .jpeg .tif .tiff .bmp .webp``)
``folder/``                     every image directly inside, by name (restored one by one, no smoothing)
``clip.mp4``                    a video file (``.mp4 .avi .mkv .mov .m4v .webm .mpg .mpeg .wmv .flv .ts``)
``file://path``                 the same, as a URI
``v4l2:///dev/video0``, ``0``   a V4L2 camera, by device path or index
``rtsp://host/path``            a network stream (also ``rtsps``, ``http``, ``https``), reconnected with backoff

Failure handling:

- missing, corrupt or unsupported inputs raise :class:`InputError` (an unreadable image inside a folder
  is skipped with a warning and counted instead);
- a video frame that cannot be decoded is skipped with a warning and counted; a video that ends before
  its declared frame count stops with a warning (``end: ended early``), never a crash;
- a camera that stops delivering frames (unplugged) ends the stream cleanly with a message;
- a network stream that drops is reopened with exponential backoff (``retries`` attempts, delays
  ``backoff_s * 2**i`` capped at ``backoff_max_s``), then the stream ends cleanly with a message;
- while a file, camera or stream is opened, OpenCV's and FFmpeg's own log lines are silenced (a bad file
  made FFmpeg print up to six lines before adsrt's one error); debug logging (``-v``) shows them.

Frames are RGB uint8 ``HxWx3`` (OpenCV's BGR is converted here, at the edge). Sinks are
:mod:`adsrt.io.sinks`; the loop between them is :func:`adsrt.runtime.loop.process`.
"""

from __future__ import annotations

import contextlib
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

from adsrt.arch.config import is_finite_number, is_int
from adsrt.errors import AdsrtError, ImageReadError, InputError, OutputError
from adsrt.fileio import stderr_to_devnull
from adsrt.imageio import IMAGE_EXTENSIONS, MAX_PIXELS, check_pixels, list_images, read_image

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CODECS",
    "NETWORK_SCHEMES",
    "VIDEO_EXTENSIONS",
    "Frame",
    "FrameSource",
    "SourceOptions",
    "open_source",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
# Video containers adsrt writes, with the codec each gets by default (a video input's default output keeps its
# container when it is one of these).
DEFAULT_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


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
    max_pixels: int = MAX_PIXELS  # pixel budget of an image or frame (--max-pixels; 0: none), before decoding

    def __post_init__(self) -> None:
        """InputError for a value with no sensible meaning (``retries=-1`` made a stream give up without
        trying; a negative backoff crashed ``time.sleep``), naming the option of ``adsrt restore``."""
        for name, value in (("width (--input-width)", self.width), ("height (--input-height)", self.height),
                            ("max_frames (--input-frames)", self.max_frames)):
            check_option(value is None or is_int(value) and value >= 1, name, value, "an integer >= 1", InputError)
        check_option(self.rate is None or is_finite_number(self.rate) and self.rate > 0, "rate (--input-rate)", self.rate,
                     "a frame rate > 0", InputError)
        check_option(is_int(self.retries) and self.retries >= 0, "retries (--input-retries)", self.retries,
                     "an integer >= 0 (0: no reconnect attempts)", InputError)
        for name, value in (("backoff_s (--input-backoff)", self.backoff_s), ("backoff_max_s", self.backoff_max_s),
                            ("camera_retry_s", self.camera_retry_s)):
            check_option(is_finite_number(value) and value >= 0, name, value, "a number of seconds >= 0", InputError)
        for name, value in (("max_bad_reads", self.max_bad_reads), ("camera_failures", self.camera_failures)):
            check_option(is_int(value) and value >= 1, name, value, "an integer >= 1", InputError)
        check_option(is_int(self.max_pixels) and self.max_pixels >= 0, "max_pixels (--max-pixels)", self.max_pixels,
                     "an integer >= 0 (0: no limit)", InputError)


def check_option(ok: bool, name: str, value: object, need: str, error: type[AdsrtError]) -> None:
    """``error`` saying what ``name`` must be, unless ``ok``."""
    if not ok:
        raise error(f"{name} must be {need}, got {value!r}")


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


@contextlib.contextmanager
def quiet_video_libraries() -> Iterator[None]:
    """Silence OpenCV's and FFmpeg's logging for the block (opening a file, camera or stream): adsrt says
    what went wrong in one line, and their lines before it ("moov atom not found", "EBML header parsing
    failed", ...) only bury it. With debug logging on, nothing is silenced.

    OpenCV's level is set and restored. FFmpeg's cannot be: OpenCV applies OPENCV_FFMPEG_LOGLEVEL once per
    process, at its first FFmpeg call, and it cannot be changed later from Python (checked with OpenCV 5.0).
    So file descriptor 2 points to /dev/null for the block: what any thread writes to stderr meanwhile is
    lost too, which is why the blocks are only the opening calls."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        with stderr_to_devnull():
            yield
    finally:
        cv2.utils.logging.setLogLevel(level)


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


class _PathSource(FrameSource):
    """A file or folder of still images: separate photos, so no smoothing of c from one to the next."""

    temporal = False

    def __init__(self, path: Path, options: SourceOptions | None = None) -> None:
        super().__init__(str(path), options)
        self.path = path


class ImageFileSource(_PathSource):
    kind = "image"

    def __init__(self, path: Path, options: SourceOptions | None = None) -> None:
        super().__init__(path, options)
        self.image = read_image(path, max_pixels=self.options.max_pixels)  # fails now, with the file's name, before any output is opened
        self.expected = 1

    def _frames(self) -> Iterator[Frame]:
        yield Frame(0, self.image, name=self.path.name)

    def default_output(self, suffix: str) -> Path:
        return self.path.with_name(f"{self.path.stem}{suffix}{self.path.suffix}")


class ImageFolderSource(_PathSource):
    kind = "folder"

    def __init__(self, folder: Path, options: SourceOptions | None = None) -> None:
        super().__init__(folder, options)
        self.paths = list_images(folder)
        if not self.paths:
            raise InputError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        self.expected = len(self.paths)

    def _frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                yield Frame(index, read_image(path, max_pixels=self.options.max_pixels), name=path.name)
            except ImageReadError as exc:
                self.state.warn(f"skipped unreadable image: {exc}")
                yield Frame(index, None, name=path.name, error=str(exc))

    def default_output(self, suffix: str) -> Path:
        folder = self.path.resolve()
        return folder.with_name(f"{folder.name}{suffix}")


class _CaptureSource(FrameSource):
    def __init__(self, uri: str, options: SourceOptions | None, opener: Opener | None,
                 sleep: Callable[[float], None] | None) -> None:
        super().__init__(uri, options)
        self._opener = opener
        self._sleep = sleep or time.sleep
        self.cap: Capture | None = None

    def _open_capture(self) -> Capture:
        """A new capture from the opener (OpenCV and FFmpeg kept quiet: failures are ours to report)."""
        with quiet_video_libraries():
            return self._opener()

    def _open(self, failure: str) -> None:
        """Open the capture; InputError(``failure``) when OpenCV cannot."""
        self.cap = self._open_capture()
        if not self.cap.isOpened():
            self.cap.release()
            raise InputError(failure)

    def _read(self) -> np.ndarray | None:
        """The next frame as RGB, or None when the capture returned nothing."""
        assert self.cap is not None
        ok, image = self.cap.read()
        return _bgr_to_rgb(image) if ok and image is not None else None

    def _read_props(self) -> None:
        assert self.cap is not None
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and 0.0 < fps < 1000.0 else None
        # The declared frame size against the pixel budget, before the first frame is decoded.
        width, height = (int(self.cap.get(prop) or 0) for prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_pixels(width, height, self.options.max_pixels, redact(self.uri))
        except ImageReadError as exc:
            self.close()
            raise InputError(str(exc)) from exc

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class VideoFileSource(_CaptureSource):
    kind = "video"

    def __init__(self, path: Path, options: SourceOptions | None = None, *, opener: Opener | None = None) -> None:
        super().__init__(str(path), options, opener or (lambda: cv2.VideoCapture(str(path))), None)
        self.path = path
        self._open(f"{path}: OpenCV cannot open this video (corrupt, truncated or unsupported codec?)")
        self._read_props()
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.expected = count if count > 0 else None

    def _frames(self) -> Iterator[Frame]:
        assert self.cap is not None
        index, bad = 0, 0
        while True:
            image = self._read()
            if image is not None:
                for _ in range(bad):  # failed reads followed by a good frame were broken frames
                    self.state.warn(f"{self.path.name}: frame {index} could not be decoded; skipped")
                    yield Frame(index, None, error="undecodable frame")
                    index += 1
                bad = 0
                yield Frame(index, image)
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
        self._open(f"cannot open camera {uri} (no such device, no permission, or busy?)")
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
            image = self._read()
            if image is not None:
                failures = 0
                yield Frame(index, image)
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
            raise InputError(f"cannot open stream {redact(url)} after {self.options.retries + 1} attempts")
        self._read_props()

    def _wait(self, attempt: int, why: str) -> None:
        o = self.options
        delay = min(o.backoff_s * 2**attempt, o.backoff_max_s)
        log.warning("stream %s %s; retrying in %.1f s (attempt %d of %d)", redact(self.uri), why, delay,
                    attempt + 1, o.retries)
        self.delays.append(delay)
        self._sleep(delay)

    def _try_open(self) -> bool:
        cap = self._open_capture()
        if cap.isOpened():
            self.cap = cap
            return True
        cap.release()
        return False

    def _frames(self) -> Iterator[Frame]:
        index, attempt = 0, 0  # reconnect attempts since the last frame that arrived
        while True:
            if self.cap is not None:
                image = self._read()
                if image is not None:
                    attempt = 0
                    yield Frame(index, image)
                    index += 1
                    continue
                self.cap.release()
                self.cap = None
            if attempt >= self.options.retries:
                self.state.end = "stream lost"
                self.state.warn(f"stream {redact(self.uri)} dropped and did not come back after "
                                f"{self.options.retries} attempts; stopping after {index} frames")
                return
            self._wait(attempt, "dropped")
            attempt += 1
            if self._try_open():
                self.state.reconnects += 1


def redact(url: str) -> str:
    """A URL without its password (rtsp://user:secret@host -> rtsp://user:***@host) for messages."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", url)


def local_path(text: str) -> str:
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
        raise InputError(f"{redact(text)}: unsupported input scheme {scheme!r} (use a file, folder, video, "
                         f"v4l2:///dev/videoN, a camera index, or {', '.join(s + '://' for s in NETWORK_SCHEMES)})")
    path = Path(local_path(text))
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
