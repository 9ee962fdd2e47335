"""The classifier's temperature: calibrated on training photos, stored in the bundle, used by the runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import adsrt
from adsrt.arch import ClassifierConfig
from adsrt.bundle import load_bundle, save_bundle
from adsrt.cli import main
from adsrt.errors import AdsrtError
from adsrt.train.calibrate import calibrate_temperature


def test_calibration_picks_the_best_mean_and_is_stored(make_bundle, photo, tmp_path, capsys):
    bundle = make_bundle()
    photos = [photo[:64, :64], photo[64:128, 100:164]]
    best, table = calibrate_temperature(bundle, photos, candidates=(1.0, 0.25), seed=0)
    assert set(table) == {"1", "0.25"} and set(table["1"]) == {"noise", "blur", "rain", "mean"}
    for row in table.values():
        assert row["mean"] == pytest.approx(np.mean([row[d] for d in ("noise", "blur", "rain")]))
    assert round(table[f"{best:g}"]["mean"], 2) == max(round(r["mean"], 2) for r in table.values())
    # through the CLI: the bundle gets the temperature and the table
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    (tmp_path / "photos").mkdir()
    import cv2

    for i, p in enumerate(photos):
        cv2.imwrite(str(tmp_path / "photos" / f"{i}.png"), p[:, :, ::-1])
    out = tmp_path / "cal.safetensors"
    assert main(["-q", "train", "calibrate", str(path), "--data", str(tmp_path / "photos"), "--out", str(out),
                 "--candidates", "1,0.25", "--images", "2", "--prior-frames", "8"]) == 0
    assert "chosen" in capsys.readouterr().out
    calibrated = load_bundle(out)
    assert calibrated.classifier.temperature in (1.0, 0.25)
    assert calibrated.metrics["temperature_calibration"]["temperature"] == calibrated.classifier.temperature
    # a bundled model is never rewritten in place
    assert main(["-q", "train", "calibrate", "default", "--data", str(tmp_path / "photos")]) == 1


def test_calibration_scores_equal_an_independent_recomputation(make_bundle, photo):
    """Each cell of the table is the mean PSNR of the reference ADS (apply_ads with c = softmax(logits / T)),
    quantised to 8 bits and scored by scikit-image, on the same degraded photos."""
    from skimage.metrics import peak_signal_noise_ratio

    from adsrt.ads import apply_ads
    from adsrt.train.degradations import degrade, keyed_rng, parse_specs, sample_level

    bundle = make_bundle()
    photos = [photo[:64, :64], photo[64:128, 100:164]]
    _, table = calibrate_temperature(bundle, photos, candidates=(0.5,), seed=3)
    classifier, model, k = bundle.build_classifier(), bundle.build_um(), len(bundle.degradations)
    for d in bundle.degradations:
        values = []
        for i, clean in enumerate(photos):
            rng = keyed_rng(3, "calibrate", d, str(i))
            degraded = degrade(clean, parse_specs(f"{d}:{sample_level(d, rng):.4g}"), rng)
            x = torch.from_numpy(degraded).permute(2, 0, 1).float()[None] / 255
            with torch.no_grad():
                c = torch.softmax(classifier(x) / 0.5, dim=1)[0, :k]
                y = apply_ads(model, bundle, c)(x)
            out = (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            values.append(peak_signal_noise_ratio(clean, out, data_range=255))
        assert table["0.5"][d] == pytest.approx(np.mean(values), abs=0.02)


def test_the_runtime_applies_the_bundle_temperature(make_bundle, photo):
    bundle = make_bundle()
    soft = adsrt.load(bundle, backend="torch", device="cpu")
    sharp_bundle = dataclasses.replace(bundle, classifier=dataclasses.replace(bundle.classifier, temperature=0.1))
    sharp = adsrt.load(sharp_bundle, backend="torch", device="cpu")
    override = adsrt.load(sharp_bundle, backend="torch", device="cpu", temperature=1.0)
    p_soft, p_sharp, p_override = soft.classify(photo), sharp.classify(photo), override.classify(photo)
    assert max(p_sharp.values()) > max(p_soft.values())
    assert p_override == pytest.approx(p_soft)
    with torch.no_grad():
        logits = bundle.build_classifier()(torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255)
    expected = torch.softmax(logits / 0.1, dim=1)[0]
    assert list(p_sharp.values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_temperature_is_validated_and_defaults_to_one():
    assert ClassifierConfig(num_classes=4).temperature == 1.0
    assert ClassifierConfig.from_dict({"num_classes": 4}).temperature == 1.0  # bundles written before it
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            ClassifierConfig(num_classes=4, temperature=bad)
    with pytest.raises(AdsrtError, match="candidates"):
        calibrate_temperature(_Dummy(), [np.zeros((8, 8, 3), np.uint8)], candidates=(0.0,))


class _Dummy:
    classifier = ClassifierConfig(num_classes=2)


# ------------------------------------------------------------------------------------------ the clean prior

def _frames(photo, n=24, seed=0):
    """n frames (crops of a real photo, some noisy) and labels: even indices clean (label 3), odd ones noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        y, x = int(rng.integers(0, photo.shape[0] - 48)), int(rng.integers(0, photo.shape[1] - 48))
        crop = photo[y : y + 48, x : x + 48].astype(np.float32)
        if i % 2:
            crop = crop + rng.normal(0, 25, crop.shape)
        images.append(np.clip(crop, 0, 255).astype(np.uint8))
        labels.append(3 if i % 2 == 0 else 0)
    return images, labels


def _top1(bundle, images):
    """The classifier's logits on each frame, straight from torch (the reference for the runtime's path)."""
    classifier = bundle.build_classifier()
    with torch.no_grad():
        return [classifier(torch.from_numpy(im).permute(2, 0, 1).float()[None] / 255)[0].numpy() for im in images]


def test_clean_prior_is_the_smallest_bias_that_reaches_the_target(make_bundle, photo):
    from adsrt.train.calibrate import PRIOR_BIASES, calibrate_clean_prior

    bundle = make_bundle()
    images, labels = _frames(photo)
    logits, truth = np.array(_top1(bundle, images)), np.array(labels)
    clean = truth == 3

    def clean_recall(b):
        return float(np.mean(np.argmax(logits[clean] + b * (np.arange(4) == 3), axis=1) == 3))

    for target in (0.5, 0.9):
        bias, report = calibrate_clean_prior(bundle, images, labels, clean_recall=target)
        assert clean_recall(bias) >= target
        assert bias == PRIOR_BIASES[0] or clean_recall(round(bias - 0.05, 2)) < target
        assert report["after"]["clean"] == pytest.approx(clean_recall(bias))
        assert report["before"]["clean"] == pytest.approx(clean_recall(0.0))
        right = np.argmax(logits[~clean] + bias * (np.arange(4) == 3), axis=1) == truth[~clean]
        assert report["after"]["degraded"] == pytest.approx(float(np.mean(right)))
    with pytest.raises(AdsrtError, match="clean frames"):
        calibrate_clean_prior(bundle, images, [0] * len(images))


def test_folded_bias_shifts_only_the_clean_logit(make_bundle, photo):
    from adsrt.train.calibrate import fold_clean_bias

    bundle = make_bundle()
    images, _ = _frames(photo, n=4)
    before, after = np.array(_top1(bundle, images)), np.array(_top1(fold_clean_bias(bundle, 1.5), images))
    np.testing.assert_allclose(after - before, np.tile([0, 0, 0, 1.5], (4, 1)), atol=1e-5)
    assert torch.equal(bundle.build_classifier().head.bias, make_bundle().build_classifier().head.bias)  # a copy


def test_prior_frames_are_whole_held_out_photos_half_clean(tmp_path):
    import cv2
    from skimage import data

    from adsrt.train.calibrate import prior_frames

    names = ("astronaut", "coffee", "chelsea", "rocket", "cat", "camera")
    for name in names:
        image = getattr(data, name)()
        image = image if image.ndim == 3 else np.stack([image] * 3, -1)
        cv2.imwrite(str(tmp_path / f"{name}.png"), cv2.resize(image, (80, 56))[:, :, ::-1])
    images, labels = prior_frames(str(tmp_path), ("noise", "rain"), frames=40, seed=0, dim_weather=0.3,
                                  val_fraction=0.1)
    assert len(images) == len(labels) == 40
    assert all(im.shape == (56, 80, 3) and im.dtype == np.uint8 for im in images)
    assert 10 <= labels.count(2) <= 30 and set(labels) <= {0, 1, 2}
    # One photo of six is held out (every n-th by name, as the classifier's split): all frames show it.
    photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.float32) for p in sorted(tmp_path.iterdir())]
    for im, label in zip(images, labels, strict=True):
        if label == 2:  # the nearest photo (up to camera nuisances and a flip) is the held-out one
            diffs = [min(np.abs(im - p).mean(), np.abs(im - p[:, ::-1]).mean()) for p in photos]
            assert int(np.argmin(diffs)) == 0


def test_calibrate_cli_sets_the_prior_and_a_second_run_adds_about_nothing(make_bundle, photo, tmp_path, capsys):
    import cv2

    (tmp_path / "photos").mkdir()
    for i in range(6):
        cv2.imwrite(str(tmp_path / "photos" / f"{i}.png"), photo[i * 20 : i * 20 + 64, i * 30 : i * 30 + 96, ::-1])
    path = save_bundle(make_bundle(), tmp_path / "b.safetensors")
    args = ["-q", "train", "calibrate", "--data", str(tmp_path / "photos"), "--candidates", "1", "--images", "2",
            "--prior-frames", "30", "--clean-recall", "0.8"]
    assert main([*args[:3], str(path), *args[3:], "--out", str(tmp_path / "c1.safetensors")]) == 0
    assert "clean prior" in capsys.readouterr().out
    first = load_bundle(tmp_path / "c1.safetensors").metrics["clean_prior"]
    assert first["after"]["clean"] >= 0.8 and first["frames"] == 30
    assert main([*args[:3], str(tmp_path / "c1.safetensors"), *args[3:], "--out", str(tmp_path / "c2.safetensors")]) == 0
    second = load_bundle(tmp_path / "c2.safetensors").metrics["clean_prior"]
    assert abs(second["bias"]) <= 0.05 and second["before"]["clean"] >= 0.8
    assert second["total_bias"] == pytest.approx(first["bias"] + second["bias"])
    # --no-clean-prior leaves the classifier's weights as they are
    assert main([*args[:3], str(path), *args[3:], "--no-clean-prior", "--out", str(tmp_path / "c3.safetensors")]) == 0
    plain = load_bundle(tmp_path / "c3.safetensors")
    assert "clean_prior" not in plain.metrics
    assert torch.equal(plain.classifier_state["head.bias"], load_bundle(path).classifier_state["head.bias"])
    with pytest.raises(AdsrtError, match="clean_recall"):
        from adsrt.train.calibrate import CalibrateConfig

        CalibrateConfig(bundle="b", data="d", clean_recall=1.0)
