"""`adsrt restore` and `adsrt classify` end to end on real photos and a short video, and their errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from adsrt.cli import main
from adsrt.imageio import read_image, write_image


def psnr(img, ref) -> float:
    return peak_signal_noise_ratio(ref, img, data_range=255)


@pytest.fixture
def noisy_file(tmp_path, clean_photo, noisy):
    path = tmp_path / "cat.png"
    write_image(path, noisy(clean_photo))
    return path


def test_restore_an_image(tmp_path, trained_bundle, noisy_file, clean_photo, capsys):
    out = tmp_path / "out.png"
    assert main(["-q", "restore", str(noisy_file), str(out), "--bundle", str(trained_bundle)]) == 0
    restored, degraded = read_image(out), read_image(noisy_file)
    assert restored.shape == degraded.shape
    assert psnr(restored, clean_photo) > psnr(degraded, clean_photo) + 2.0
    assert "1 of 1 frames restored" in capsys.readouterr().out


def test_swap_and_branch_write_the_same_image(tmp_path, trained_bundle, noisy_file):
    for mode in ("swap", "branch"):
        assert main(["-q", "restore", str(noisy_file), str(tmp_path / f"{mode}.png"), "--bundle", str(trained_bundle),
                     "--mode", mode, "--device", "cpu", "--backend", "torch"]) == 0
    diff = np.abs(read_image(tmp_path / "swap.png").astype(int) - read_image(tmp_path / "branch.png").astype(int))
    assert diff.max() <= 1


def test_local_mode_restores_a_uniformly_noisy_photo_like_swap(tmp_path, trained_bundle, noisy_file, clean_photo):
    """One degradation over the whole frame: the window map is near-constant, so local mode restores as
    swap mode does."""
    for mode in ("swap", "local"):
        assert main(["-q", "restore", str(noisy_file), str(tmp_path / f"{mode}.png"), "--bundle", str(trained_bundle),
                     "--mode", mode, "--device", "cpu", "--backend", "torch"]) == 0
    local, swap = read_image(tmp_path / "local.png"), read_image(tmp_path / "swap.png")
    assert psnr(local, clean_photo) > psnr(read_image(noisy_file), clean_photo) + 2.0
    assert psnr(local, swap) > 35


def test_restore_a_folder_next_to_the_input(tmp_path, trained_bundle, clean_photo, noisy):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"img{i}.jpg", noisy(clean_photo, seed=i))
    assert main(["-q", "restore", str(folder), "--bundle", str(trained_bundle), "--output-ext", ".png"]) == 0
    assert sorted(p.name for p in (tmp_path / "shots_restored").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_restore_a_video_with_stats_and_side_by_side(tmp_path, trained_bundle, video_frames, make_video, capsys):
    src = make_video(tmp_path / "clip.mkv", video_frames.noisy, fps=15.0, codec="FFV1")
    stats = tmp_path / "stats.json"
    argv = ["-q", "restore", f"file://{src}", str(tmp_path / "out.avi"), "--bundle", str(trained_bundle), "--stats",
            str(stats), "--side-by-side", "--ema", "0.5"]
    assert main(argv) == 0
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    assert n == 12 and cap.get(cv2.CAP_PROP_FPS) == 15.0 and frame.shape == (64, 192, 3)
    cap.release()
    report = json.loads(stats.read_text())
    assert (report["frames_in"], report["frames_out"], report["skipped"]) == (12, 12, 0)
    assert report["backend"] == "onnxruntime" and report["mode"] == "swap" and report["degradations"] == ["noise", "blur"]
    assert len(report["frames"]) == 12
    first = report["frames"][0]
    assert set(first["c"]) == {"noise", "blur"} and set(first["probabilities"]) == {"noise", "blur", "clean"}
    assert set(first["timings_ms"]) == {"read", "decode", "classify", "update", "restore", "encode", "write", "total"}
    assert set(report["mean_timings_ms"]) == set(first["timings_ms"])
    assert "12 of 12 frames restored" in capsys.readouterr().out


def test_force_writes_one_hot_c(tmp_path, trained_bundle, noisy_file):
    stats = tmp_path / "s.json"
    assert main(["-q", "restore", str(noisy_file), str(tmp_path / "o.png"), "--bundle", str(trained_bundle), "--force",
                 "blur", "--stats", str(stats)]) == 0
    frame = json.loads(stats.read_text())["frames"][0]
    assert frame["c"] == {"noise": 0.0, "blur": 1.0} and frame["probabilities"] is None


def test_restore_without_bundle_uses_the_shipped_default(tmp_path, noisy_file):
    stats, out = tmp_path / "s.json", tmp_path / "o.png"
    assert main(["-q", "restore", str(noisy_file), str(out), "--backend", "torch", "--stats", str(stats)]) == 0
    report = json.loads(stats.read_text())
    assert "default" in report["bundle"] and out.is_file()
    assert report["degradations"] == ["noise", "blur", "rain", "haze", "snow", "lowlight"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--bundle", "B", "--backend", "onnxruntime", "--graph", "missing.onnx"], "ONNX file not found: missing.onnx"),
    (["--bundle", "B", "--force", "haze"], "cannot force 'haze'"),
])
def test_bad_options_exit_1_and_write_nothing(tmp_path, trained_bundle, noisy_file, capsys, extra, message):
    extra = [str(trained_bundle) if e == "B" else e for e in extra]
    out = tmp_path / "out.png"
    assert main(["-q", "restore", str(noisy_file), str(out), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_inputs_and_outputs_exit_1(tmp_path, trained_bundle, noisy_file, capsys):
    b = ["--bundle", str(trained_bundle)]
    assert main(["-q", "restore", str(tmp_path / "nope.mp4"), *b]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    assert main(["-q", "restore", str(tmp_path / "broken.png"), *b]) == 1
    assert "not a readable image" in capsys.readouterr().err
    assert main(["-q", "restore", str(noisy_file), str(tmp_path / "missing" / "o.png"), *b]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-q", "restore", str(noisy_file), str(tmp_path / "o.png"), "--stats", str(tmp_path / "x" / "s.json"),
                 *b]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-q", "restore", "rtsp://", *b, "--input-retries", "0"]) == 1
    assert "cannot open stream" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "cat.png"]


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_output_that_is_the_input_is_refused_unless_overwrite(tmp_path, trained_bundle, noisy_file, video_frames,
                                                                 make_video, capsys, monkeypatch):
    b = ["--bundle", str(trained_bundle)]
    video = make_video(tmp_path / "clip.avi", video_frames.noisy[:2])
    folder = tmp_path / "shots"
    folder.mkdir()
    write_image(folder / "a.png", read_image(noisy_file))
    before = {p: _digest(p) for p in (noisy_file, video, folder / "a.png")}
    monkeypatch.chdir(tmp_path)  # `adsrt restore cat.png ""` next to the photo wrote cat.png over it
    cases = [
        (["cat.png", ""], "empty OUTPUT"),
        ([str(noisy_file), str(noisy_file)], "the output is the input"),
        ([str(noisy_file), "./cat.png"], "the output is the input"),  # another spelling of the same file
        ([str(noisy_file), "--output-suffix", ""], "the output is the input"),  # the default name, no suffix
        ([str(video), str(video)], "the output is the input"),
        ([str(folder), str(folder)], "inside the input folder"),
        ([str(folder), str(folder / "restored")], "inside the input folder"),
    ]
    for argv, message in cases:
        assert main(["-q", "restore", *argv, *b]) == 1, argv
        assert message in capsys.readouterr().err, argv
    assert {p: _digest(p) for p in before} == before  # nothing lost
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    # --overwrite says it is meant: the input is replaced by its restored version.
    assert main(["-q", "restore", str(noisy_file), str(noisy_file), "--overwrite", *b]) == 0
    assert _digest(noisy_file) != before[noisy_file] and read_image(noisy_file).shape == read_image(folder / "a.png").shape


def test_classify_prints_a_table_or_json(tmp_path, trained_bundle, noisy_file, capsys):
    assert main(["-q", "classify", str(noisy_file), "--bundle", str(trained_bundle)]) == 0
    table = capsys.readouterr().out
    assert "noise" in table and "clean" in table and "cat.png" in table
    assert main(["-q", "classify", str(noisy_file), "--bundle", str(trained_bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["noise", "blur", "clean"]
    (item,) = report["items"]
    assert item["name"] == "cat.png" and sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert item["top"] == max(item["probabilities"], key=item["probabilities"].get)


def test_classify_a_video_per_frame(tmp_path, trained_bundle, video_frames, make_video, capsys):
    src = make_video(tmp_path / "clip.avi", video_frames.noisy)
    assert main(["-q", "classify", str(src), "--bundle", str(trained_bundle), "--json", "--input-frames", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [item["index"] for item in report["items"]] == [0, 1, 2, 3]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys"), reason="uses /sys as the unwritable folder (root)")
def test_unwritable_video_output_fails_before_the_first_frame(tmp_path, trained_bundle, video_frames, make_video,
                                                               capsys):
    src = make_video(tmp_path / "clip.avi", video_frames.noisy)
    assert main(["-q", "restore", str(src), "/sys/out.avi", "--bundle", str(trained_bundle)]) == 1
    assert "cannot write in /sys" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_mid_video_keeps_a_playable_output(tmp_path, trained_bundle, clean_photo, make_video, pan, noisy,
                                                     sig):
    """The real thing: `adsrt restore` in a subprocess, interrupted while it writes the video."""
    frames = [noisy(f, seed=i) for i, f in enumerate(pan(np.tile(clean_photo, (1, 10, 1)), 600, 96, 64))]
    src = make_video(tmp_path / "long.avi", frames, fps=25.0)
    out = tmp_path / "out.avi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adsrt", "-q", "restore", str(src), str(out), "--bundle",
                             str(trained_bundle)], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.*.partial.avi")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # a few frames in
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "kept the playable part" in err
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert 0 < n < 600 and cap.get(cv2.CAP_PROP_FPS) == 25.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.avi", "out.avi"]
