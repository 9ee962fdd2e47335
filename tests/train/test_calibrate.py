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
                 "--candidates", "1,0.25", "--images", "2"]) == 0
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
