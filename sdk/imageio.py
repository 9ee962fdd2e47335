"""Reading and writing still images with one contract: RGB, uint8, HxWx3, written atomically.

Input layouts are converted, never silently misread:

- grayscale (HxW or HxWx1) is replicated to three channels;
- RGBA / BGRA has its alpha channel dropped (a warning is logged: transparent pixels keep their colour);
- 16-bit images are scaled to 8 bits (``round(v / 257)``), float images (TIFF) in [0, 1] are
  scaled by 255 (values within 1/50 outside the range, resampling overshoot, are clipped).

Anything else raises :class:`ImageReadError`: unreadable bytes, 2-channel images, empty files, float
images outside [0, 1] (a float TIFF holding 0..255 would otherwise clip to white), and images of more
than ``max_pixels`` pixels. The pixel count is read from the file's header before anything is decoded
(Pillow parses headers lazily), so a 1 MB PNG that declares 20000 x 20000 pixels is refused in
milliseconds instead of allocating gigabytes.
Outputs are encoded in memory, written to a temporary file beside the target and renamed, so a failed
write never leaves a half file under the final name.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from adsrt.errors import ImageReadError, OutputError
from adsrt.fileio import atomic_write_with, stderr_to_devnull

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
# Default pixel budget of one image or frame: 16384 x 16384. A 12000 x 12000 photo fits; restoring it
# holds about 9 bytes per pixel of uint8 frame buffers (adsrt.runtime.tiling), 2.4 GB at this cap.
MAX_PIXELS = 2**28
_PIL_LIMIT_LOCK = threading.Lock()
# Float images a little outside [0, 1] (resampling overshoot) are clipped; further out is refused.
_FLOAT_TOLERANCE = 0.02


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name. Hidden files are not images:
    they include the temporary files of writes in progress (``.NAME.XXXX.part.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and is_image_path(p))


def to_rgb_uint8(image: np.ndarray, *, bgr: bool = False, source: str = "image") -> np.ndarray:
    """Convert a decoded array (gray, RGB(A)/BGR(A), uint8/uint16/float) to RGB uint8 HxWx3."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"{source}: expected an HxW or HxWxC image, got shape {image.shape}")
    channels = image.shape[2]
    if channels == 4:
        log.warning("%s: alpha channel dropped (RGBA -> RGB)", source)
        image = image[:, :, :3]
    elif channels not in (1, 3):
        raise ImageReadError(f"{source}: {channels}-channel images are not supported (use 1, 3 or 4)")

    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ImageReadError(f"{source}: float image holds NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
            raise ImageReadError(f"{source}: float image holds values in [{lo:g}, {hi:g}]; adsrt reads float "
                                 "images in [0, 1] (divide by 255, or save it as 8 or 16 bits)")
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ImageReadError(f"{source}: unsupported pixel type {image.dtype}")

    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def check_pixels(width: int, height: int, max_pixels: int, source: str) -> None:
    """Refuse a ``width x height`` image or frame above the pixel budget, before it is decoded."""
    if max_pixels > 0 and width * height > max_pixels:
        raise ImageReadError(f"{source}: {width} x {height} = {width * height:,} pixels is over the limit of "
                             f"{max_pixels:,} (raise it with --max-pixels)")


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header, without decoding pixels; None when Pillow does not know
    the format (OpenCV may still decode it, and refuses images over 2**30 pixels itself)."""
    from PIL import Image, UnidentifiedImageError

    # Our own budget decides (check_pixels): Pillow's decompression-bomb check, a process-wide setting, would
    # refuse 179M+ pixels first. It is lifted only for this header read, under a lock for our own threads.
    with _PIL_LIMIT_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3 (see the module docstring for conversions). ``max_pixels``:
    the pixel budget (0: none), checked on the header before decoding."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    size = header_size(path)
    if size is not None:
        if 0 in size:  # refused here: OpenCV's decoders print their own warnings about it first
            raise ImageReadError(f"{path}: its header declares a {size[0]} x {size[1]} image")
        check_pixels(*size, max_pixels, str(path))
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    try:
        if size is None:  # a header Pillow cannot parse: the C decoders print warnings before failing
            with stderr_to_devnull():
                image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        else:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a header declaring more than OpenCV's 2**30 pixels
        raise ImageReadError(f"{path}: OpenCV refused to decode it: {exc.err or exc}") from exc
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (unknown format or corrupt data)")
    check_pixels(image.shape[1], image.shape[0], max_pixels, str(path))
    return to_rgb_uint8(image, bgr=image.ndim == 3 and image.shape[2] >= 3, source=str(path))


def try_read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """:func:`read_image`, or None with a warning naming the file and why: how a folder of photos treats a
    bad file (skipped and counted by the caller, the others still processed)."""
    try:
        return read_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        log.warning("skipped unreadable image: %s", exc)
        return None


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 HxWx3 image; the format follows the file extension. Atomic.

    OpenCV encodes straight into a temporary file beside the target (renamed when complete): encoding in
    memory first held the encoded bytes in a buffer that grows by doubling, up to 6 bytes per pixel more at
    the peak of a large photo's write (a noisy 64-megapixel PNG is 150 MB)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise OutputError(f"unsupported output extension {path.suffix!r} (use one of {', '.join(IMAGE_EXTENSIONS)})")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise OutputError(f"expected an RGB uint8 HxWx3 image, got {what}")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    def encode(tmp: Path) -> None:
        try:
            ok = cv2.imwrite(str(tmp), bgr, params)
        except cv2.error as exc:
            raise OutputError(f"{path}: OpenCV could not encode it: {exc.err or exc}") from exc
        if not ok:
            raise OutputError(f"OpenCV could not encode a {suffix} image")

    atomic_write_with(path, encode, suffix=f".part{suffix}")


SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def sample_photos(names: tuple[str, ...] = SAMPLE_PHOTOS) -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image (no download): name -> HxWx3 uint8.

    Used where adsrt needs real images and the user gave none (the demo, export parity checks)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImageReadError("the sample photos come from scikit-image: pip install scikit-image") from exc
    photos = {}
    for name in names:
        image = getattr(data, name)()
        photos[name] = np.ascontiguousarray(to_rgb_uint8(image, source=f"skimage.data.{name}"))
    return photos
