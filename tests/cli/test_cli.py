"""The adsrt command line: degrade -> metrics round trip on a real photo, info and bad input (demo: test_demo.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import adsrt
from adsrt.bundle import save_bundle
from adsrt.cli import main
from adsrt.imageio import read_image, write_image
from adsrt.metrics import center_crop_multiple


@pytest.fixture
def photo_file(tmp_path):
    from skimage import data

    path = tmp_path / "chelsea.png"  # few clipped pixels, so noise keeps its full power
    write_image(path, data.chelsea())
    return path


def test_version_through_the_installed_entry_point():
    out = subprocess.run([sys.executable, "-m", "adsrt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"adsrt {adsrt.__version__}"


def test_degrade_then_metrics_round_trip(tmp_path, photo_file, capsys):
    noisy = tmp_path / "noisy.png"
    assert main(["degrade", str(photo_file), str(noisy), "--kind", "noise:25", "--seed", "0"]) == 0
    assert main(["metrics", str(noisy), str(photo_file), "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["protocol"] == "adsrt" and [f["name"] for f in report["files"]] == ["noisy.png"]
    # sigma 25 is 20.17 dB before clipping to [0, 255]; clipping removes a little noise near black and white
    assert report["mean"]["psnr"] == pytest.approx(20.2, abs=0.15)
    assert report["mean"] == {"psnr": report["files"][0]["psnr"], "ssim": report["files"][0]["ssim"]}

    # peers' protocol equals scikit-image's own functions on the same files
    assert main(["metrics", str(noisy), str(photo_file), "--protocol", "peers", "--json", str(tmp_path / "p.json")]) == 0
    peers = json.loads((tmp_path / "p.json").read_text())["files"][0]
    a = center_crop_multiple(read_image(noisy), 16) / 255.0
    b = center_crop_multiple(read_image(photo_file), 16) / 255.0
    assert peers["psnr"] == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1), abs=1e-6)
    assert peers["ssim"] == pytest.approx(structural_similarity(b, a, data_range=1, channel_axis=2), abs=1e-4)
    assert "noisy.png" in capsys.readouterr().out


def test_degrade_is_deterministic_and_folder_mode_matches_file_mode(tmp_path, photo_file):
    src = tmp_path / "in"
    src.mkdir()
    img = read_image(photo_file)
    write_image(src / "one.png", img[:128, :160])
    write_image(src / "two.jpg", img[150:278, 100:260])
    assert main(["degrade", str(src), str(tmp_path / "out"), "--kind", "rain:3", "--seed", "7"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.png", "two.png"]
    assert main(["degrade", str(src / "one.png"), str(tmp_path / "single.png"), "--kind", "rain:3", "--seed", "7"]) == 0
    assert np.array_equal(read_image(tmp_path / "single.png"), read_image(tmp_path / "out" / "one.png"))
    assert main(["degrade", str(src / "one.png"), str(tmp_path / "other.png"), "--kind", "rain:3", "--seed", "8"]) == 0
    assert not np.array_equal(read_image(tmp_path / "other.png"), read_image(tmp_path / "single.png"))


def test_metrics_on_folders(tmp_path, photo_file):
    img = read_image(photo_file)
    ref, res = tmp_path / "ref", tmp_path / "res"
    ref.mkdir(), res.mkdir()
    for name, crop in (("a", img[:100, :120]), ("b", img[100:220, 50:150])):
        write_image(ref / f"{name}.png", crop)
        write_image(res / f"{name}.png", np.clip(crop.astype(int) + 3, 0, 255).astype(np.uint8))
    assert main(["metrics", str(res), str(ref), "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert [f["name"] for f in report["files"]] == ["a.png", "b.png"]
    assert report["mean"]["psnr"] == pytest.approx(np.mean([f["psnr"] for f in report["files"]]))


def test_info_prints_overhead(tmp_path, make_bundle, capsys):
    path = save_bundle(make_bundle(q=0.03), tmp_path / "b.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for word in ("noise", "blur", "rain", "granularity kernel", "UM params", "overhead"):
        assert word in out


def run_error(argv, capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"adsrt {argv[0]}: error:")
    return err


@pytest.mark.parametrize(
    "kind, message",
    [("fog", "unknown degradation"), ("noise:500", "outside"), ("noise:abc", "level"), ("", "")],
)
def test_degrade_bad_kind_writes_nothing(tmp_path, photo_file, capsys, kind, message):
    out = tmp_path / "out.png"
    err = run_error(["degrade", str(photo_file), str(out), "--kind", kind], capsys)
    assert message.lower() in err.lower()
    assert not out.exists()


def test_degrade_bad_files(tmp_path, photo_file, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert "bad.png" in run_error(["degrade", str(bad), str(tmp_path / "o.png"), "--kind", "noise"], capsys)
    assert "does not exist" in run_error(
        ["degrade", str(photo_file), str(tmp_path / "no" / "o.png"), "--kind", "noise"], capsys
    )
    assert "extension" in run_error(["degrade", str(photo_file), str(tmp_path / "o.txt"), "--kind", "noise"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "chelsea.png"]


def test_metrics_bad_input(tmp_path, photo_file, capsys):
    small = tmp_path / "small.png"
    write_image(small, read_image(photo_file)[:64, :64])
    assert "differs" in run_error(["metrics", str(small), str(photo_file)], capsys)
    assert "both be files or both be folders" in run_error(["metrics", str(tmp_path), str(photo_file)], capsys)


def test_info_rejects_corrupt_bundle(tmp_path, capsys):
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert "safetensors" in run_error(["info", str(bad)], capsys)


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["degrade", "a", "b", "--kind", "noise", "--sede", "1"])
    assert exc.value.code == 2
