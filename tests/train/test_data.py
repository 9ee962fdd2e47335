"""Datasets: on-the-fly degradation with labels, paired folders, and clear errors for bad folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adsrt.errors import DataError
from adsrt.imageio import write_image
from adsrt.train.data import DegradedImageDataset, PairedImageDataset, dim_scene, find_pairs, to_tensor
from adsrt.train.degradations import degrade


@pytest.fixture
def clean_dir(tmp_path, photo):
    folder = tmp_path / "clean"
    folder.mkdir()
    write_image(folder / "a.png", photo[:96, :128])
    write_image(folder / "b.jpg", photo[96:, 128:])
    write_image(folder / "small.bmp", photo[:40, :50])  # smaller than the crop: reflect-padded
    return folder


def test_samples_are_degraded_crops_with_labels(clean_dir):
    ds = DegradedImageDataset(clean_dir, ["noise:25", "blur", "rain"], crop_size=64, samples_per_epoch=12, seed=3)
    assert len(ds) == 12 and ds.clean_label == 3
    labels = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["input"].shape == s["target"].shape == (3, 64, 64)
        assert s["input"].dtype == torch.float32 and 0 <= s["input"].min() and s["input"].max() <= 1
        assert 0 <= int(s["label"]) < 3
        assert not torch.equal(s["input"], s["target"])
        labels.add(int(s["label"]))
        if int(s["label"]) == 0:
            assert float(s["level"]) == 25.0
            # the label really is noise at sigma 25: residual std on the 0-255 scale
            assert abs(float((s["input"] - s["target"]).std()) * 255 - 25) < 4
    assert len(labels) > 1


def test_samples_are_deterministic_per_seed_epoch_index(clean_dir):
    a = DegradedImageDataset(clean_dir, ["noise", "haze"], crop_size=32, seed=1)
    b = DegradedImageDataset(clean_dir, ["noise", "haze"], crop_size=32, seed=1)
    for i in range(len(a)):
        assert torch.equal(a[i]["input"], b[i]["input"]) and torch.equal(a[i]["target"], b[i]["target"])
    first = a[0]["input"].clone()
    a.set_epoch(1)
    assert not torch.equal(a[0]["input"], first)


def test_clean_fraction_yields_clean_class(clean_dir):
    ds = DegradedImageDataset(clean_dir, ["blur"], crop_size=32, samples_per_epoch=40, clean_fraction=0.5)
    clean = [s for s in (ds[i] for i in range(len(ds))) if int(s["label"]) == ds.clean_label]
    assert 5 < len(clean) < 35
    for s in clean:
        assert torch.equal(s["input"], s["target"]) and float(s["level"]) == 0.0


def test_frames_of_drawn_sizes(clean_dir):
    """crop_range: each side drawn in [lo, hi] and at most the photo's (the context trunk's frames)."""
    ds = DegradedImageDataset(clean_dir, ["noise"], crop_size=32, samples_per_epoch=30, crop_range=(40, 120), seed=2)
    assert [p.name for p in ds.paths] == ["a.png", "b.jpg", "small.bmp"]  # sample i is of photo i % 3
    shapes = [tuple(ds[i]["input"].shape[1:]) for i in range(len(ds))]
    assert len(set(shapes)) > 5
    for i, (h, w) in enumerate(shapes):
        if i % 3 == 2:  # small.bmp, 40 x 50: at most its sides
            assert h == 40 and 40 <= w <= 50
        else:  # 96 x 128 and 96 x 128
            assert 40 <= h <= 96 and 40 <= w <= 120
    with pytest.raises(DataError, match="crop_range"):
        DegradedImageDataset(clean_dir, ["noise"], crop_range=(64, 32))


def test_dim_weather_dims_rain_and_snow_only(clean_dir):
    """dim_weather = 1: every rain and snow sample and its target are dim_scene of the daylight sample
    (same draws before it); noise samples are untouched."""
    day = DegradedImageDataset(clean_dir, ["rain", "snow", "noise"], crop_size=48, samples_per_epoch=24, seed=4)
    dusk = DegradedImageDataset(clean_dir, ["rain", "snow", "noise"], crop_size=48, samples_per_epoch=24, seed=4,
                                dim_weather=1.0)
    dimmed = 0
    for i in range(len(day)):
        a, b = day[i], dusk[i]
        if int(a["label"]) == 2:
            assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
            continue
        dimmed += 1
        assert float(b["input"].mean()) < 0.9 * float(a["input"].mean())
        assert float(b["target"].mean()) < 0.9 * float(a["target"].mean())
    assert dimmed > 5
    # dim_scene itself: x ** gamma then the exposure, highlights kept above the mid-tones.
    x = np.array([[[0, 128, 242]]], dtype=np.uint8)
    y = dim_scene(x, 2.5, 1.0).astype(np.float64) / 255
    expected = (x / 255.0) ** 2.5 * 2 ** (-1 / 2.2)
    np.testing.assert_allclose(y, expected, atol=0.5 / 255)
    assert y[0, 0, 2] > 0.6 and y[0, 0, 1] < 0.15
    with pytest.raises(DataError, match="dim_weather"):
        DegradedImageDataset(clean_dir, ["rain"], dim_weather=1.5)


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        DegradedImageDataset(tmp_path / "none", ["noise"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        DegradedImageDataset(tmp_path / "empty", ["noise"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="x.png"):
        DegradedImageDataset(tmp_path / "broken", ["noise"])


def test_bad_specs(clean_dir):
    from adsrt.errors import DegradationError

    with pytest.raises(DegradationError):
        DegradedImageDataset(clean_dir, ["fog"])
    with pytest.raises(DataError, match="one degradation per class"):
        DegradedImageDataset(clean_dir, ["noise+blur"])
    with pytest.raises(DataError, match="clean_fraction"):
        DegradedImageDataset(clean_dir, ["noise"], clean_fraction=1.0)


def test_paired_dataset_matches_by_stem(tmp_path, photo, to_image):
    deg, clean = tmp_path / "deg", tmp_path / "clean"
    deg.mkdir(), clean.mkdir()
    for i, name in enumerate(["x", "y"]):
        img = photo[i * 40 : i * 40 + 48, :64]
        write_image(clean / f"{name}.png", img)
        write_image(deg / f"{name}.png", degrade(img, "noise:15", 0))
    write_image(clean / "z.jpg", photo[:48, :64])
    write_image(deg / "z.png", photo[:48, :64])
    ds = PairedImageDataset(deg, clean, label=2)
    assert [s["name"] for s in ds] == ["x", "y", "z"]
    s = ds[0]
    assert s["input"].shape == (3, 48, 64) and int(s["label"]) == 2
    assert np.array_equal(to_image(s["target"]), photo[:48, :64])
    assert np.array_equal(to_image(to_tensor(photo)), photo)


def test_paired_errors(tmp_path, photo):
    deg, clean = tmp_path / "deg", tmp_path / "clean"
    deg.mkdir(), clean.mkdir()
    write_image(deg / "a.png", photo[:32, :32])
    write_image(clean / "b.png", photo[:32, :32])
    with pytest.raises(DataError, match="unmatched"):
        find_pairs(deg, clean)
    write_image(deg / "b.png", photo[:32, :40])
    write_image(clean / "a.png", photo[:32, :32])
    with pytest.raises(DataError, match="size mismatch"):
        PairedImageDataset(deg, clean)
    write_image(clean / "a.jpg", photo[:32, :32])
    with pytest.raises(DataError, match="share the name"):
        find_pairs(deg, clean)
    with pytest.raises(DataError, match="does not exist"):
        find_pairs(tmp_path / "nope", clean)


def test_split_holdout_links_a_fixed_split_and_refuses_another(photo_folder, tmp_path, capsys):
    from adsrt.cli import main
    from adsrt.train.data import split_holdout
    from adsrt.train.pipeline import PRESETS

    src = photo_folder(40, 32)
    out = tmp_path / "split"
    record = split_holdout(src, out, 1, seed=3)
    names = sorted(p.name for p in src.iterdir())
    assert sorted(record["train"] + record["heldout"]) == names and len(record["heldout"]) == 1
    assert sorted(p.name for p in (out / "heldout").iterdir()) == record["heldout"]
    assert sorted(p.name for p in (out / "train").iterdir()) == record["train"]
    linked = out / "train" / record["train"][0]
    assert linked.is_symlink() and linked.read_bytes() == (src / record["train"][0]).read_bytes()
    assert split_holdout(src, out, 1, seed=3) == record  # the same split again: nothing changes
    assert split_holdout(src, tmp_path / "again", 1, seed=3)["heldout"] == record["heldout"]  # names + seed decide
    with pytest.raises(DataError, match="holds another split"):
        split_holdout(src, out, 2, seed=3)
    with pytest.raises(DataError, match="choose 1 to 3"):
        split_holdout(src, tmp_path / "x", 4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        split_holdout(src, tmp_path / "full", 1)
    assert not list(tmp_path.glob(".*partial"))
    assert main(["train", "split", str(src), "--out", str(tmp_path / "cli"), "--heldout", "2"]) == 0
    assert "2 photos for training" in capsys.readouterr().out
    # Every preset can be named on the command line.
    with pytest.raises(SystemExit):
        main(["train", "all", "--preset", "nope", "--data", "d", "--out", "o", "--work", "w"])
    assert "tiny, small, bundled, bundled-v2, default" in capsys.readouterr().err.replace("'", "")
    assert list(PRESETS) == ["tiny", "small", "bundled", "bundled-v2", "default"]
