"""Bad input to the CLI (issue 18): pixel bombs, out-of-range option values, float images in 0..255, noise
level 0, folders with unreadable files. Each is one line on stderr and exit 1 (usage errors: argparse's
message and exit 2), with nothing written that was not asked for."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from adsrt.cli import main
from adsrt.imageio import write_image


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of under 100 bytes whose header declares ``width x height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adsrt", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def photo_file(tmp_path, photo):
    path = tmp_path / "photo.png"
    write_image(path, photo[:64, :96])
    return path


@pytest.mark.parametrize("command", ["restore", "classify", "degrade", "metrics"])
def test_a_74_byte_pixel_bomb_is_one_error_line(tmp_path, bundle_file, command):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(40000, 30000))  # 1.2e9 pixels: over OpenCV's own 2**30 too
    assert len(bomb.read_bytes()) < 100
    args = {"restore": ["restore", str(bomb), str(tmp_path / "out.png"), "--bundle", str(bundle_file)],
            "classify": ["classify", str(bomb), "--bundle", str(bundle_file)],
            "degrade": ["degrade", str(bomb), str(tmp_path / "out.png"), "--kind", "noise:10"],
            "metrics": ["metrics", str(bomb), str(bomb)]}[command]
    result = run_cli("-q", *args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pixels is over the limit" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_max_pixels_raises_and_lowers_the_budget(tmp_path, photo_file):
    assert main(["degrade", str(photo_file), str(tmp_path / "a.png"), "--kind", "noise:10", "--max-pixels", "1000"]) == 1
    assert not (tmp_path / "a.png").exists()
    assert main(["degrade", str(photo_file), str(tmp_path / "a.png"), "--kind", "noise:10", "--max-pixels", "0"]) == 0


def test_a_bomb_in_a_folder_is_skipped_and_counted(tmp_path, photo_file, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bomb.png").write_bytes(png_declaring(40000, 30000))
    (src / "junk.png").write_bytes(b"not an image")
    write_image(src / "ok.png", cv2.imread(str(photo_file))[:, :, ::-1])
    assert main(["degrade", str(src), str(tmp_path / "out"), "--kind", "noise:10"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"]
    assert "1 images degraded with noise:10, 2 unreadable skipped" in capsys.readouterr().out


def test_a_folder_of_only_unreadable_files_writes_nothing(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "junk.png").write_bytes(b"not an image")
    assert main(["degrade", str(src), str(tmp_path / "out"), "--kind", "noise:10"]) == 1
    assert not (tmp_path / "out").exists()


def test_degrade_refuses_to_replace_its_input(tmp_path, photo_file):
    before = photo_file.read_bytes()
    assert main(["degrade", str(photo_file), str(photo_file), "--kind", "noise:10"]) == 1
    assert main(["degrade", str(tmp_path), str(tmp_path), "--kind", "noise:10"]) == 1
    assert photo_file.read_bytes() == before


def test_a_float_tiff_in_0_255_is_refused_not_whitened(tmp_path, photo, bundle_file, capsys):
    path = tmp_path / "f.tif"
    cv2.imwrite(str(path), np.ascontiguousarray(photo[:64, :64, ::-1].astype(np.float32)))
    assert main(["restore", str(path), str(tmp_path / "o.png"), "--bundle", str(bundle_file)]) == 1
    assert "adsrt reads float images in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_noise_level_zero_is_refused(tmp_path, photo_file, capsys):
    assert main(["degrade", str(photo_file), str(tmp_path / "o.png"), "--kind", "noise:0"]) == 1
    assert "outside (0, 100]" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["restore", "IN", "--input-backoff", "-1"], ["restore", "IN", "--input-backoff", "nan"],
    ["restore", "IN", "--memory-limit", "nan"], ["restore", "IN", "--memory-limit", "-5"],
    ["restore", "IN", "--output-suffix", "/../../x"], ["restore", "IN", "--output-suffix", ".."],
    ["restore", "IN", "--output-rate", "0"], ["restore", "IN", "--input-retries", "-1"],
    ["restore", "IN", "--tile", "8"], ["restore", "IN", "--ema", "1"], ["restore", "IN", "--temperature", "inf"],
    ["restore", "IN", "--scene-threshold", "0"], ["classify", "IN", "--temperature", "0"],
    ["degrade", "IN", "OUT", "--kind", "noise", "--seed", "-1"],
    ["info", "--height", "0"], ["info", "--height", "-720"], ["info", "--height", "1e8"], ["info", "--width", "100000"],
])
def test_out_of_range_option_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_max_pixels_covers_video_frames_and_folders(tmp_path, bundle_file, photo, make_video, capsys):
    video = make_video(tmp_path / "clip.avi", [photo[:48, :64]] * 2)
    b = ["--bundle", str(bundle_file), "--max-pixels", "3000"]
    assert main(["-q", "restore", str(video), str(tmp_path / "out.avi"), *b]) == 1
    assert "64 x 48 = 3,072 pixels is over the limit of 3,000" in capsys.readouterr().err
    assert not (tmp_path / "out.avi").exists()
    folder = tmp_path / "shots"
    folder.mkdir()
    write_image(folder / "big.png", photo[:48, :64])
    write_image(folder / "small.png", photo[:40, :64])
    assert main(["-q", "restore", str(folder), str(tmp_path / "out"), *b]) == 0  # the big one is skipped, counted
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.png"]
    assert "1 skipped" in capsys.readouterr().out


def test_reports_never_replace_an_input(tmp_path, photo_file, bundle_file, capsys):
    before = photo_file.read_bytes()
    b = ["--bundle", str(bundle_file)]
    assert main(["-q", "restore", str(photo_file), str(tmp_path / "o.png"), "--stats", str(photo_file), *b]) == 1
    assert "would replace the input" in capsys.readouterr().err
    assert main(["-q", "restore", str(photo_file), str(tmp_path / "o.png"), "--stats", str(bundle_file), *b]) == 1
    assert "would replace the bundle" in capsys.readouterr().err
    assert main(["-q", "restore", str(photo_file), str(tmp_path / "o.png"), "--stats", str(tmp_path / "o.png"), *b]) == 1
    assert "would replace the output" in capsys.readouterr().err
    assert main(["metrics", str(photo_file), str(photo_file), "--json", str(photo_file)]) == 1
    assert "would replace the RESTORED" in capsys.readouterr().err
    assert photo_file.read_bytes() == before and not (tmp_path / "o.png").exists()
    assert bundle_file.read_bytes()[:8] != b"{" and main(["-q", "info", str(bundle_file)]) == 0


def test_symlink_loops_are_one_error_line(tmp_path, photo_file, bundle_file, capsys):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    assert main(["-q", "degrade", str(loop), str(tmp_path / "o.png"), "--kind", "noise:10"]) == 1
    assert main(["-q", "degrade", str(photo_file), str(loop), "--kind", "noise:10"]) == 1
    assert main(["-q", "restore", str(photo_file), str(loop), "--bundle", str(bundle_file)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_folders_of_only_unreadable_images_fail_and_leave_nothing(tmp_path, bundle_file, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"junk")
    (src / "b.png").write_bytes(b"more junk")
    assert main(["-q", "classify", str(src), "--bundle", str(bundle_file)]) == 1
    assert "no frame could be read (2 skipped)" in capsys.readouterr().err
    assert main(["-q", "restore", str(src), str(tmp_path / "out"), "--bundle", str(bundle_file)]) == 1
    assert not (tmp_path / "out").exists()  # the output folder is made with the first restored frame


def test_a_bad_output_fails_before_the_model_loads(tmp_path, photo_file, capsys):
    # The bundle does not exist: the output's error comes first, so the OUTPUT is checked before the model.
    assert main(["restore", str(photo_file), str(tmp_path / "o.xyz"), "--bundle", str(tmp_path / "none.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown output type '.xyz'" in err[0]
