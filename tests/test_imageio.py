"""Image reading conversions and atomic writes."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from adsrt.errors import ImageReadError, OutputError
from adsrt.imageio import list_images, read_image, write_image


def test_png_round_trip_is_exact_and_rgb(tmp_path, photo):
    write_image(tmp_path / "a.png", photo)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.uint8 and np.array_equal(back, photo)
    # The file itself is BGR-on-disk the OpenCV way; reading it with OpenCV directly proves the channel order.
    assert np.array_equal(cv2.imread(str(tmp_path / "a.png"))[:, :, ::-1], photo)


def test_conversions(tmp_path, photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    got = read_image(tmp_path / "gray.png")
    assert got.shape == photo.shape and np.array_equal(got[:, :, 0], gray) and np.array_equal(got[:, :, 2], gray)

    rgba = np.dstack([photo[:, :, ::-1], np.full(photo.shape[:2], 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), photo)

    wide = photo.astype(np.uint16) * 257  # 16-bit of the same picture
    cv2.imwrite(str(tmp_path / "deep.png"), wide[:, :, ::-1])
    assert np.array_equal(read_image(tmp_path / "deep.png"), photo)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "none.png")
    with pytest.raises(ImageReadError, match="not a folder"):
        list_images(tmp_path / "none")


def test_write_errors_leave_nothing(tmp_path, photo):
    with pytest.raises(OutputError, match="extension"):
        write_image(tmp_path / "a.xyz", photo)
    with pytest.raises(OutputError, match="does not exist"):
        write_image(tmp_path / "missing" / "a.png", photo)
    with pytest.raises(OutputError, match="RGB uint8"):
        write_image(tmp_path / "a.png", photo.astype(np.float32))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(unwritable_dir, photo):
    with pytest.raises(OutputError, match="cannot write"):
        write_image(unwritable_dir / "adsrt-test.png", photo)


def test_list_images_filters_and_sorts(tmp_path, photo):
    for name in ["b.jpg", "a.PNG", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg"]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` 8-bit grey pixels (its data is a few zero rows):
    a decompression bomb's header, without the bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_a_header_over_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    import adsrt.imageio

    def no_decoding(*args):
        raise AssertionError("the image was decoded")

    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(20000, 20000))
    monkeypatch.setattr(adsrt.imageio.cv2, "imdecode", no_decoding)
    with pytest.raises(ImageReadError, match=r"20000 x 20000 = 400,000,000 pixels is over the limit of 268,435,456"):
        read_image(path)
    with pytest.raises(ImageReadError, match="over the limit of 1,000"):
        read_image(path, max_pixels=1000)
    monkeypatch.undo()


def test_a_header_the_decoders_complain_about_is_one_error(tmp_path):
    """A PNG declaring 0 x 10 pixels: Pillow cannot parse it and libpng prints three warnings to stderr
    (file descriptor 2) before OpenCV gives up; only adsrt's error is left."""
    (tmp_path / "empty.png").write_bytes(png_declaring(0, 10))
    code = ("import sys\nfrom adsrt.imageio import read_image\ntry:\n    read_image(sys.argv[1])\n"
            "except Exception as exc:\n    print(type(exc).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty.png")], capture_output=True, text=True)
    assert out.stdout.strip() == "ImageReadError" and out.stderr == ""


def test_opencvs_own_pixel_limit_is_our_error(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_declaring(40000, 40000))  # more than OpenCV's 2**30 pixels
    assert len(path.read_bytes()) < 100
    with pytest.raises(ImageReadError, match="OpenCV refused to decode it"):
        read_image(path, max_pixels=0)


def test_float_images_outside_unit_range_are_refused(tmp_path, photo):
    scaled = photo.astype(np.float32)  # 0..255 floats: would clip to near-white if read as [0, 1]
    cv2.imwrite(str(tmp_path / "f255.tif"), scaled[:, :, ::-1])
    with pytest.raises(ImageReadError, match=r"float image holds values in \[.*, 255\]; adsrt reads float images in \[0, 1\]"):
        read_image(tmp_path / "f255.tif")
    cv2.imwrite(str(tmp_path / "f1.tif"), np.ascontiguousarray((scaled / 255.0)[:, :, ::-1]))
    assert np.array_equal(read_image(tmp_path / "f1.tif"), photo)


def test_try_read_image_skips_with_a_warning(tmp_path, caplog):
    from adsrt.imageio import try_read_image

    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert try_read_image(tmp_path / "bad.png") is None
    assert "skipped unreadable image" in caplog.text and "bad.png" in caplog.text
