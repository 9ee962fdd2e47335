"""Frame sinks: an image file, a folder of images, or a video file.

Outputs (:func:`open_sink`): an image file (for an image input), a folder (one image per frame, the
input's file names for folder inputs, ``000000.png`` ... otherwise), or a video file (codec from the
extension: ``.mp4/.mov/.m4v`` mp4v, ``.avi`` MJPG, ``.mkv`` FFV1 lossless; ``--output-codec`` overrides).
Without an output, files are written next to the input with a suffix (``clip_restored.mp4``,
``folder_restored/``); live inputs need an explicit output.

Videos keep the frames' size. OpenCV's FFmpeg writer cuts an odd width or height to even (it drops the
last column or row, with every codec and container), so odd-sized frames go to OpenCV's own MJPEG AVI
writer for ``.avi`` MJPG outputs (any size; the exact frame rate is written into its headers afterwards)
and are refused, before anything is written, for other containers and codecs.

Outputs are written to a temporary name in the target folder and renamed when complete (images per
file, videos when the stream ends); a failed run removes the temporary file, so no half file ever
carries the final name. Unwritable outputs fail before the first frame is processed. On Ctrl-C the video
writer is closed, and the part written so far is kept under the final name only if OpenCV can read a
frame back from it (a playable file); otherwise it is removed. A run killed outright (SIGKILL, out of
memory) leaves its hidden ``.NAME.PID.partial.EXT``; the next video written into that folder removes
those whose process is gone.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from adsrt.arch.config import is_finite_number
from adsrt.errors import OutputError
from adsrt.fileio import check_writable_folder, resolved
from adsrt.imageio import IMAGE_EXTENSIONS, write_image
from adsrt.io.sources import (
    DEFAULT_CODECS,
    VIDEO_EXTENSIONS,
    Frame,
    FrameSource,
    ImageFileSource,
    check_option,
    local_path,
    quiet_video_libraries,
    redact,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CODECS", "FrameSink", "SinkOptions", "open_sink", "playable", "remove_stale_partials"]

DEFAULT_FPS = 30.0


@dataclass
class SinkOptions:
    """``--output-*`` options."""

    codec: str | None = None  # video FourCC (default from the extension, DEFAULT_CODECS)
    rate: float | None = None  # video frame rate (default: the input's, else 30)
    ext: str | None = None  # image format of folder outputs (default: the input file's, else .png)
    suffix: str = "_restored"  # default output name: next to the input, with this suffix
    overwrite: bool = False  # allow an output that is the input (or inside the input folder being read)

    def __post_init__(self) -> None:
        """OutputError for a value with no sensible meaning (``rate=0`` silently meant "the input's rate"),
        naming the option of ``adsrt restore``."""
        check_option(self.rate is None or is_finite_number(self.rate) and self.rate > 0, "rate (--output-rate)", self.rate,
                     "a frame rate > 0", OutputError)
        if self.codec is not None:
            check_codec(self.codec)


def check_codec(codec: object) -> None:
    check_option(isinstance(codec, str) and len(codec) == 4, "codec (--output-codec)", codec,
                 "a four-character code (e.g. mp4v, MJPG, FFV1)", OutputError)


def _input_path(source: FrameSource) -> Path | None:
    """The local file or folder a source reads, resolved; None for cameras and streams."""
    path = getattr(source, "path", None)
    return resolved(path) if path is not None else None


def check_not_the_input(output: Path, source: FrameSource, overwrite: bool) -> None:
    """OutputError when writing ``output`` would replace what ``source`` reads: the same file, the folder
    being read, or a path inside it. ``overwrite`` allows it (the write is still atomic: the input is
    replaced only once the output is complete)."""
    read = _input_path(source)
    if read is None or overwrite:
        return
    out = resolved(output)
    same = out == read or (out.exists() and read.exists() and os.path.samefile(out, read))
    inside = read.is_dir() and (out == read or read in out.parents)
    if same or inside:
        what = "is the input" if same and not read.is_dir() else "is inside the input folder being read"
        raise OutputError(f"{output}: the output {what} ({read}); choose another OUTPUT or pass --overwrite")



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
        # Created with the first restored frame, so a run that restores nothing leaves no empty folder.
        parent = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise OutputError(f"{folder}: cannot create the output folder (no existing folder above it)")
        check_writable_folder(parent, folder / f"x{self.ext}")

    def write(self, frame: Frame, image: np.ndarray) -> None:
        if not self.written:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create the output folder ({exc.strerror})") from exc
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
        check_codec(self.codec)
        if not (np.isfinite(fps) and fps > 0):
            raise OutputError(f"bad output frame rate {fps!r}")
        self.fps = float(fps)
        check_writable_folder(path.parent, path)
        remove_stale_partials(path.parent)
        # Same extension at the end: OpenCV picks the container from it.
        self.tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        self.size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._own_avi = False  # written by OpenCV's MJPEG AVI writer (odd sizes): its frame rate is fixed on close

    def write(self, frame: Frame, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            self._writer = self._open_writer(w, h)
            self.size = (w, h)
        elif (w, h) != self.size:
            raise OutputError(f"frame {frame.index}: size {w}x{h} differs from the video's {self.size[0]}x{self.size[1]}")
        self._writer.write(np.ascontiguousarray(image[:, :, ::-1]))
        self.written += 1

    def _open_writer(self, w: int, h: int) -> cv2.VideoWriter:
        if w % 2 == 0 and h % 2 == 0:
            writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
        elif self.path.suffix.lower() == ".avi" and self.codec.upper() == "MJPG":
            # OpenCV's own MJPEG AVI writer keeps odd sizes; it takes whole frame rates >= 1 only, so the
            # exact rate goes into the headers when the file is closed (_set_avi_frame_rate).
            self._own_avi = True
            writer = cv2.VideoWriter(str(self.tmp), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"),
                                     float(max(1, round(self.fps))), (w, h))
        else:
            raise OutputError(f"{self.path}: OpenCV's FFmpeg writer would cut the {w}x{h} frames to {w & ~1}x{h & ~1} "
                              "(it writes even sizes only, with any codec); write an .avi with the MJPG codec "
                              "(any size) or a folder of images")
        if not writer.isOpened():
            writer.release()
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: OpenCV cannot write {self.codec!r} video into {self.path.suffix!r} "
                              "(try another --output-codec or extension)")
        return writer

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _finish(self) -> None:
        """Release the writer of a file that may be kept, and complete its headers."""
        own_avi = self._writer is not None and self._own_avi
        self._release()
        if own_avi and self.written:
            _set_avi_frame_rate(self.tmp, self.fps)

    def close(self) -> None:
        self._finish()
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
        self._finish()
        if self.written and playable(self.tmp):
            os.replace(self.tmp, self.path)
            return True
        self.tmp.unlink(missing_ok=True)
        return False


def _set_avi_frame_rate(path: Path, fps: float) -> None:
    """Write ``fps`` into an AVI's headers: the video stream's rate/scale (what players time frames by) and
    the main header's microseconds per frame. OpenCV's MJPEG AVI writer stores a whole rate (29.97 -> 30)."""
    # 29.97... -> 30000/1001; rate and scale are 32-bit, so fast rates get a coarser denominator
    rate = Fraction(fps).limit_denominator(max(1, min(1001, 0xFFFFFFFF // (int(fps) + 1))))
    with open(path, "r+b") as fh:
        chunks: dict[bytes, int] = {}
        for cid, offset in _avi_header_chunks(fh.read(1 << 16)):  # the header lists come before the frames
            chunks.setdefault(cid, offset)
        if b"avih" not in chunks or b"strh" not in chunks:
            log.warning("%s: unexpected AVI layout; its frame rate stays %d", path.name, max(1, round(fps)))
            return
        fh.seek(chunks[b"avih"])  # MainAVIHeader.dwMicroSecPerFrame
        fh.write(struct.pack("<I", min(round(1e6 / fps), 0xFFFFFFFF)))
        fh.seek(chunks[b"strh"] + 20)  # AVIStreamHeader.dwScale, dwRate: rate / scale frames per second
        fh.write(struct.pack("<II", rate.denominator, min(rate.numerator, 0xFFFFFFFF)))


def _avi_header_chunks(data: bytes, start: int = 12, end: int | None = None):
    """(chunk id, data offset) of the chunks in the RIFF lists of an AVI's header (the video's ``strh`` is
    the first stream's: OpenCV writes one stream)."""
    end = len(data) if end is None else min(end, len(data))
    offset = start
    while offset + 8 <= end:
        cid, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if cid == b"LIST" and data[offset + 8:offset + 12] != b"movi":
            yield from _avi_header_chunks(data, offset + 12, offset + 8 + size)
        elif cid != b"LIST":
            yield cid, offset + 8
        offset += 8 + size + (size & 1)


# A video sink's temporary file: .NAME.PID.partial.EXT (VideoSink.tmp)
_PARTIAL = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.partial(?P<ext>\.\w+)")


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove the temporary videos in ``folder`` that runs killed outright (SIGKILL, out of memory, power
    loss) left behind: those whose process is gone. A live process's file is never touched. Returns the
    removed files (named in an INFO log). A PID is only meaningful on this machine: a run on another host
    or in another PID namespace writing into the same folder could look gone."""
    if os.name == "nt":  # os.kill(pid, 0) terminates the process on Windows instead of probing it
        return []
    try:
        candidates = [p for p in folder.iterdir() if _PARTIAL.fullmatch(p.name)]
    except OSError:
        return []
    removed = []
    for path in candidates:
        match = _PARTIAL.fullmatch(path.name)
        if match["ext"].lower() not in VIDEO_EXTENSIONS or not path.is_file() or _process_alive(int(match["pid"])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError as exc:
            log.warning("cannot remove the stale partial video %s (%s)", path, exc.strerror)
            continue
        removed.append(path)
    if removed:
        log.info("removed %d partial video(s) that runs killed before finishing left in %s: %s", len(removed),
                 folder, ", ".join(p.name for p in removed))
    return removed


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists. Anything unclear counts as alive: a file is removed only when its
    writer is surely gone."""
    if pid <= 0:  # 0 and negative numbers name process groups, not a process
        return True
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, and is someone else's
        return True
    return True


def playable(path: Path) -> bool:
    """Whether OpenCV opens ``path`` and decodes its first frame."""
    with quiet_video_libraries():
        cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened()) and bool(cap.read()[0])
    finally:
        cap.release()


def open_sink(uri: str | os.PathLike | None, source: FrameSource, options: SinkOptions | None = None) -> FrameSink:
    """The sink an output URI names for ``source`` (None: next to the input, see the module doc)."""
    options = options or SinkOptions()
    text = os.fspath(uri) if uri is not None else str(source.default_output(options.suffix))
    if not text.strip():
        raise OutputError("empty OUTPUT: name a file, a folder or a video (or leave it out to write next to the input)")
    if "://" in text and not text.startswith("file://"):
        raise OutputError(f"{redact(text)}: streaming outputs are not supported; write a video file or a folder")
    path = Path(local_path(text))
    check_not_the_input(path, source, options.overwrite)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        if isinstance(source, ImageFileSource):
            raise OutputError(f"{path}: an image input needs an image or folder output")
        rate = options.rate if options.rate is not None else source.fps or DEFAULT_FPS
        return VideoSink(path, rate, options.codec)
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
