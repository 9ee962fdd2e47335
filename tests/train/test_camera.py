"""Tests for adsrt.train.camera: tone curves, sensor noise statistics, nuisances on every class."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from adsrt.train.camera import (
    NuisanceConfig,
    camera_nuisance,
    colour_noise,
    jpeg,
    resample,
    sharpen,
    tone_curve,
)
from adsrt.train.data import DegradedImageDataset


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def test_tone_curves() -> None:
    x = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    np.testing.assert_allclose(tone_curve(x, "gamma"), x ** (1 / 2.2), rtol=1e-5, atol=1e-6)
    filmic = tone_curve(x, "filmic")
    assert filmic[0] == 0.0 and filmic[-1] == pytest.approx(1.0)
    assert (np.diff(filmic) > 0).all()  # monotonic
    assert (filmic[1:-1] > tone_curve(x, "gamma")[1:-1]).all()  # lifts the shadows
    np.testing.assert_allclose(tone_curve(x, "filmic", 0.0), tone_curve(x, "gamma"), atol=1e-6)
    with pytest.raises(ValueError):
        tone_curve(x, "log")


def test_colour_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    linear = np.full((256, 256, 3), 0.2, np.float32)
    fs, read = 400.0, 3.0
    out = colour_noise(linear, fs, read, crosstalk=0.0, demosaic_sigma=0.0, rng=rng)
    noise = out - linear
    expected = np.sqrt(0.2 / fs + (read / fs) ** 2)  # Poisson variance x / fs plus read noise
    assert abs(noise.mean()) < 3e-4
    assert noise.std() == pytest.approx(expected, rel=0.03)
    # Demosaicing correlates neighbours but keeps the per-pixel spread; the CCM amplifies it and makes
    # the channels anti-correlated (chroma noise).
    c = 0.3
    for sigma in (0.1, 0.3, 0.7):  # the discrete kernel's own renormalisation: exact at any width
        shaped = colour_noise(linear, fs, read, crosstalk=c, demosaic_sigma=sigma, rng=np.random.default_rng(1)) - linear
        # CCM diagonal 1 + 2c, off-diagonal -c on independent channels: std grows by sqrt((1+2c)^2 + 2c^2).
        assert shaped.std() == pytest.approx(expected * np.sqrt((1 + 2 * c) ** 2 + 2 * c * c), rel=0.04), sigma
    r = shaped[..., 0]
    assert np.corrcoef(r[:, :-1].ravel(), r[:, 1:].ravel())[0, 1] > 0.3
    assert np.corrcoef(shaped[..., 0].ravel(), shaped[..., 1].ravel())[0, 1] < -0.1
    # Rows sum to 1: the grey (channel-mean) part of the noise is not changed by the colour matrix.
    grey = colour_noise(linear, fs, read, crosstalk=c, demosaic_sigma=0.0, rng=np.random.default_rng(2)) - linear
    plain = colour_noise(linear, fs, read, crosstalk=0.0, demosaic_sigma=0.0, rng=np.random.default_rng(2)) - linear
    np.testing.assert_allclose(grey.mean(2), plain.mean(2), atol=1e-6)


def test_resample_sharpen_and_jpeg(photo: np.ndarray) -> None:
    assert resample(photo, 1.0) is photo
    soft = resample(photo, 0.6)
    assert soft.shape == photo.shape
    lap = lambda a: float(np.abs(cv2.Laplacian(a, cv2.CV_32F)).mean())  # noqa: E731
    assert lap(soft) < 0.8 * lap(photo) < lap(sharpen(photo, 0.6, 1.0))
    low, high = jpeg(photo, 30), jpeg(photo, 95)
    err = [float(np.abs(a - photo).mean()) for a in (low, high)]
    assert err[0] > 2 * err[1] and err[1] < 0.015
    # The same bytes OpenCV's own encoder produces (RGB in, BGR to the codec).
    u8 = np.clip(np.rint(photo * 255), 0, 255).astype(np.uint8)
    ref = cv2.imdecode(cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(np.rint(low * 255).astype(np.uint8), ref[..., ::-1])


def test_nuisance_determinism_and_switches(photo: np.ndarray) -> None:
    a = camera_nuisance(photo, np.random.default_rng(5))
    np.testing.assert_array_equal(a, camera_nuisance(photo, np.random.default_rng(5)))
    off = NuisanceConfig(p_any=0.0)
    assert camera_nuisance(photo, np.random.default_rng(5), off) is photo
    everything = NuisanceConfig(p_any=1.0, p_resize=1.0, p_sharpen=1.0, p_noise=1.0, p_jpeg=1.0)
    outs = [camera_nuisance(photo, np.random.default_rng(s), everything) for s in range(4)]
    for out in outs:
        assert out.dtype == np.float32 and out.shape == photo.shape and 0.0 <= out.min() and out.max() <= 1.0
        assert 0.002 < float(np.abs(out - photo).mean()) < 0.05  # mild: it changes the photo, not its content
    assert len({o.tobytes() for o in outs}) == 4


def test_dataset_puts_nuisances_on_every_class(tmp_path) -> None:
    img = data.coffee()
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img[i * 40 : i * 40 + 200, i * 50 : i * 50 + 200, ::-1])
    plain = DegradedImageDataset(tmp_path, ["noise", "blur"], crop_size=64, samples_per_epoch=60, clean_fraction=0.5)
    camera = DegradedImageDataset(tmp_path, ["noise", "blur"], crop_size=64, samples_per_epoch=60, clean_fraction=0.5,
                                  nuisance=NuisanceConfig())
    changed_clean = 0
    for i in range(60):
        p, c = plain[i], camera[i]
        assert int(p["label"]) == int(c["label"])
        np.testing.assert_array_equal(p["target"].numpy(), c["target"].numpy())  # the nuisance is on the input only
        if int(c["label"]) == 2:
            np.testing.assert_array_equal(p["input"].numpy(), p["target"].numpy())
            changed_clean += not np.array_equal(c["input"].numpy(), c["target"].numpy())
    assert changed_clean >= 10  # most clean inputs went through a camera, not all

