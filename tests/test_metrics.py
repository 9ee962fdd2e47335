"""adsrt.metrics against an independent implementation (scikit-image) on real photos.

Photos come from ``skimage.data`` (bundled, no download), resized to an odd 203x157 so the peers'
centre crop to a multiple of 16 has something to cut, and degraded with Gaussian noise (sigma 25,
fixed seed, clip + round to uint8) or Gaussian blur.
"""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from adsrt.metrics import (
    PROTOCOLS,
    center_crop_multiple,
    peers_psnr_ssim,
    psnr,
    rgb_to_y,
    score_pair,
    ssim,
)

PHOTOS = ("astronaut", "coffee", "chelsea")
DEGRADATIONS = ("noise25", "blur")
H, W = 203, 157


@cache
def _photo(name: str) -> np.ndarray:
    img = getattr(data, name)()
    out = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def _add_noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0.0, sigma, img.shape)), 0, 255).astype(np.uint8)


@cache
def _pair(name: str, degradation: str) -> tuple[np.ndarray, np.ndarray]:
    ref = _photo(name)
    if degradation == "noise25":
        deg = _add_noise(ref, 25.0)
    elif degradation == "blur":
        deg = cv2.GaussianBlur(ref, (0, 0), 1.5)
    else:
        raise AssertionError(degradation)
    deg.setflags(write=False)
    return deg, ref


def _sk_ssim_gauss(img: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    return structural_similarity(
        ref,
        img,
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=2 if img.ndim == 3 else None,
    )


def _y_bt601(img: np.ndarray, data_range: float) -> np.ndarray:
    # Written out from the BT.601 studio-range definition, independently of adsrt.rgb_to_y.
    r, g, b = (img[..., i].astype(np.float64) / data_range for i in range(3))
    y255 = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b
    return y255 / 255.0 * data_range


def _peers_crop(img: np.ndarray, base: int = 16) -> np.ndarray:
    # The peers' crop_img (AirNet / PromptIR utils), copied verbatim.
    h, w = img.shape[0], img.shape[1]
    crop_h, crop_w = h % base, w % base
    return img[crop_h // 2 : h - crop_h + crop_h // 2, crop_w // 2 : w - crop_w + crop_w // 2, :]


# Rows: (dtype scale, data_range). uint8 scored on 0..255 and the same pixels as floats in [0, 1].
SCALES = pytest.mark.parametrize("as_float", [False, True], ids=["uint8-255", "float-1"])


def _scaled(img: np.ndarray, as_float: bool) -> tuple[np.ndarray, float]:
    return (img / 255.0, 1.0) if as_float else (img, 255.0)


# ours(img, ref, data_range) against scikit-image's (PSNR; SSIM with the Gaussian window of the paper)
METRICS = {
    "psnr": (psnr, lambda img, ref, r: peak_signal_noise_ratio(ref, img, data_range=r)),
    "ssim": (ssim, _sk_ssim_gauss),
}


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("degradation", DEGRADATIONS)
@pytest.mark.parametrize("name", PHOTOS)
@SCALES
def test_psnr_and_ssim_match_skimage(name: str, degradation: str, as_float: bool, metric: str) -> None:
    deg, ref = _pair(name, degradation)
    (d, r), (rr, _) = _scaled(deg, as_float), _scaled(ref, as_float)
    ours, reference = METRICS[metric]
    assert ours(d, rr, data_range=r) == pytest.approx(reference(d, rr, r), abs=1e-6)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_grayscale_matches_skimage(degradation: str) -> None:
    deg, ref = _pair("coffee", degradation)
    d, r = deg[..., 1], ref[..., 1]  # a real single-channel HxW image
    assert psnr(d, r, data_range=255) == pytest.approx(
        peak_signal_noise_ratio(r, d, data_range=255), abs=1e-6
    )
    assert ssim(d, r, data_range=255) == pytest.approx(_sk_ssim_gauss(d, r, 255), abs=1e-6)
    # HxWx1 scores like HxW.
    assert ssim(d[..., None], r[..., None], data_range=255) == pytest.approx(
        ssim(d, r, data_range=255), abs=1e-12
    )


@pytest.mark.parametrize("degradation", DEGRADATIONS)
@pytest.mark.parametrize("name", PHOTOS)
def test_peers_matches_skimage_defaults(name: str, degradation: str) -> None:
    deg, ref = _pair(name, degradation)
    d = _peers_crop(deg.astype(np.float64) / 255.0)
    r = _peers_crop(ref.astype(np.float64) / 255.0)
    assert d.shape == (192, 144, 3)
    p, s = peers_psnr_ssim(deg, ref)
    assert p == pytest.approx(peak_signal_noise_ratio(r, d, data_range=1), abs=1e-6)
    assert s == pytest.approx(structural_similarity(r, d, data_range=1, channel_axis=2), abs=1e-4)
    # The peers ran their code on float32 tensors; float64 here stays well inside the tolerance.
    p32 = peak_signal_noise_ratio(r.astype(np.float32), d.astype(np.float32), data_range=1)
    s32 = structural_similarity(r.astype(np.float32), d.astype(np.float32), data_range=1, channel_axis=2)
    assert p == pytest.approx(p32, abs=1e-5)
    assert s == pytest.approx(s32, abs=1e-5)


def test_peers_ssim_is_not_the_gaussian_one() -> None:
    # Guards against the two protocols silently sharing one SSIM: on a noisy photo they differ.
    deg, ref = _pair("astronaut", "noise25")
    _, s_peers = peers_psnr_ssim(deg, ref)
    s_ours = ssim(center_crop_multiple(deg), center_crop_multiple(ref), data_range=255)
    assert abs(s_peers - s_ours) > 0.01


@pytest.mark.parametrize(
    ("shape", "multiple", "expected_slices"),
    [
        ((203, 157, 3), 16, (slice(5, 197), slice(6, 150))),
        ((203, 157), 16, (slice(5, 197), slice(6, 150))),
        ((32, 48, 3), 16, (slice(0, 32), slice(0, 48))),
        ((17, 33), 8, (slice(0, 16), slice(0, 32))),
        ((10, 9), 1, (slice(0, 10), slice(0, 9))),
    ],
)
def test_center_crop_multiple(
    shape: tuple[int, ...], multiple: int, expected_slices: tuple[slice, slice]
) -> None:
    img = np.arange(math.prod(shape)).reshape(shape)
    out = center_crop_multiple(img, multiple)
    np.testing.assert_array_equal(out, img[expected_slices])
    assert out.shape[0] % multiple == 0 and out.shape[1] % multiple == 0
    if img.ndim == 3:
        np.testing.assert_array_equal(out, _peers_crop(img, multiple))


@pytest.mark.parametrize("data_range", [1.0, 255.0])
@pytest.mark.parametrize("name", PHOTOS)
def test_rgb_to_y_formula(name: str, data_range: float) -> None:
    img = _photo(name) / 255.0 * data_range
    y = rgb_to_y(img, data_range)
    assert y.shape == img.shape[:2] and y.dtype == np.float64
    np.testing.assert_allclose(y, _y_bt601(img, data_range), rtol=0, atol=1e-12 * data_range)
    assert y.min() >= 16 / 255 * data_range - 1e-12 and y.max() <= 235 / 255 * data_range + 1e-12


@pytest.mark.parametrize("name", PHOTOS)
def test_rgb_to_y_matches_skimage_ycbcr(name: str) -> None:
    img = _photo(name)
    expected = rgb2ycbcr(img)[..., 0] / 255.0  # skimage's Y is 16..235
    np.testing.assert_allclose(rgb_to_y(img / 255.0, 1.0), expected, rtol=0, atol=1e-12)
    # uint8 input on its own 0..255 scale gives the same luma, 255 times larger.
    np.testing.assert_allclose(rgb_to_y(img, 255.0), expected * 255.0, rtol=0, atol=1e-9)


def test_rgb_to_y_extremes() -> None:
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(img, 255), [[16.0, 235.0, 16.0 + 65.481]], atol=1e-12)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
@pytest.mark.parametrize("name", PHOTOS)
def test_y_channel_matches_skimage(name: str, degradation: str) -> None:
    deg, ref = _pair(name, degradation)
    dy, ry = rgb2ycbcr(deg)[..., 0], rgb2ycbcr(ref)[..., 0]  # on 0..255
    assert psnr(deg, ref, data_range=255, y_channel=True) == pytest.approx(
        peak_signal_noise_ratio(ry, dy, data_range=255), abs=1e-6
    )
    assert ssim(deg, ref, data_range=255, y_channel=True) == pytest.approx(
        _sk_ssim_gauss(dy, ry, 255), abs=1e-6
    )
    # Same on the [0, 1] scale.
    assert ssim(deg / 255, ref / 255, data_range=1, y_channel=True) == pytest.approx(
        _sk_ssim_gauss(dy / 255, ry / 255, 1), abs=1e-6
    )


@pytest.mark.parametrize("crop_border", [1, 4, 8])
@pytest.mark.parametrize("y_channel", [False, True])
def test_crop_border_equals_cropped_arrays(crop_border: int, y_channel: bool) -> None:
    deg, ref = _pair("chelsea", "noise25")
    c = slice(crop_border, -crop_border)
    for metric in (psnr, ssim):
        whole = metric(deg, ref, data_range=255, crop_border=crop_border, y_channel=y_channel)
        cropped = metric(deg[c, c], ref[c, c], data_range=255, y_channel=y_channel)
        assert whole == cropped
    assert psnr(deg, ref, data_range=255, crop_border=crop_border) != psnr(deg, ref, data_range=255)


@pytest.mark.parametrize("name", PHOTOS)
def test_identical_images(name: str) -> None:
    img = _photo(name)
    for y_channel in (False, True):
        assert psnr(img, img.copy(), data_range=255, y_channel=y_channel) == math.inf
        assert ssim(img, img.copy(), data_range=255, y_channel=y_channel) == 1.0
    for protocol in PROTOCOLS:
        assert score_pair(img, img.copy(), protocol) == (math.inf, 1.0)


def test_noise_sigma25_psnr_level() -> None:
    ref = data.astronaut()
    noise = np.random.default_rng(0).normal(0.0, 25.0, ref.shape)
    # Unclipped float noise: PSNR = 20 log10(255 / 25) = 20.17 dB up to sampling error.
    assert psnr(ref + noise, ref, data_range=255) == pytest.approx(20 * math.log10(255 / 25), abs=0.02)
    # Clipping to 0..255 removes part of the noise in astronaut's black background and white suit.
    noisy = np.clip(np.round(ref + noise), 0, 255).astype(np.uint8)
    assert psnr(noisy, ref, data_range=255) == pytest.approx(20.86, abs=0.02)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
@pytest.mark.parametrize("y_channel", [False, True])
def test_float_and_uint8_consistent(degradation: str, y_channel: bool) -> None:
    deg, ref = _pair("coffee", degradation)
    for metric in (psnr, ssim):
        u8 = metric(deg, ref, data_range=255, y_channel=y_channel)
        f = metric(deg / 255.0, ref / 255.0, data_range=1, y_channel=y_channel)
        f32 = metric(deg.astype(np.float32), ref.astype(np.float32), data_range=255, y_channel=y_channel)
        assert f == pytest.approx(u8, abs=1e-9)
        assert f32 == pytest.approx(u8, abs=1e-9)
    for protocol in PROTOCOLS:
        assert score_pair(deg / 255.0, ref / 255.0, protocol) == pytest.approx(
            score_pair(deg, ref, protocol), abs=1e-9
        )


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_score_pair(degradation: str) -> None:
    deg, ref = _pair("astronaut", degradation)
    p, s = score_pair(deg, ref)  # default protocol is adsrt
    assert p == pytest.approx(peak_signal_noise_ratio(ref / 255, deg / 255, data_range=1), abs=1e-6)
    assert s == pytest.approx(_sk_ssim_gauss(deg / 255, ref / 255, 1), abs=1e-6)
    assert score_pair(deg, ref, "peers") == peers_psnr_ssim(deg, ref)


def test_peers_clip_float_inputs() -> None:
    deg, ref = _pair("chelsea", "noise25")
    over = deg / 255.0 * 1.2 - 0.1  # out of [0, 1], as an unclamped network output can be
    assert peers_psnr_ssim(over, ref) == peers_psnr_ssim(np.clip(over, 0, 1), ref)


def _img(shape: tuple[int, ...] = (32, 32, 3), dtype: type = np.float64) -> np.ndarray:
    return np.random.default_rng(1).random(shape).astype(dtype)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: psnr(_img(), _img((32, 31, 3)), data_range=1), "shape"),
        (lambda: ssim(_img(), _img((32, 32)), data_range=1), "shape"),
        (lambda: peers_psnr_ssim(_img(), _img((48, 32, 3))), "shape"),
        (lambda: score_pair(_img(), _img((32, 32, 1))), "shape"),
        (lambda: psnr(np.full((32, 32, 3), np.nan), _img(), data_range=1), "NaN"),
        (lambda: ssim(_img(), np.where(_img() > 0.5, np.inf, 0.0), data_range=1), "NaN or infinite"),
        (lambda: score_pair(_img(), np.full((32, 32, 3), np.nan), "peers"), "NaN"),
        (lambda: psnr(_img(), _img(), data_range=1, crop_border=16), "crop_border"),
        (lambda: psnr(_img(), _img(), data_range=1, crop_border=-1), "crop_border"),
        (lambda: ssim(_img(), _img(), data_range=1, crop_border=11), "at least 11x11"),
        (lambda: ssim(_img((10, 40, 3)), _img((10, 40, 3)), data_range=1), "at least 11x11"),
        (lambda: peers_psnr_ssim(_img((15, 40, 3)), _img((15, 40, 3))), "smaller than"),
        (lambda: psnr(_img(), _img(), data_range=0), "data_range"),
        (lambda: psnr(_img(), _img(), data_range=float("nan")), "data_range"),
        (lambda: psnr(_img((32, 32)), _img((32, 32)), data_range=1, y_channel=True), "HxWx3"),
        (lambda: psnr(_img((4, 32, 32, 3)), _img((4, 32, 32, 3)), data_range=1), "HxW or HxWxC"),
        (lambda: psnr(_img() > 0.5, _img() > 0.5, data_range=1), "dtype"),
        (
            lambda: psnr(_pair("coffee", "blur")[0], _pair("coffee", "blur")[1], data_range=1),
            "data_range=255",
        ),
        (lambda: score_pair(_img(), _img(), "matlab"), "unknown protocol"),
        (lambda: score_pair(_img(dtype=np.uint16), _img(dtype=np.uint16)), "uint8 or float"),
        (lambda: rgb_to_y(_img((8, 8, 4)), 1.0), "RGB"),
        (lambda: center_crop_multiple(_img(), 0), "multiple"),
    ],
)
def test_invalid_inputs_raise_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("data_range, clamp", [(1.0, True), (1.0, False), (2.0, False)])
def test_batch_psnr_matches_scikit_image_per_item(data_range, clamp):
    import torch
    from skimage.metrics import peak_signal_noise_ratio

    from adsrt.errors import MetricError
    from adsrt.metrics import batch_psnr

    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 17, 23, generator=g) * data_range
    output = target + 0.05 * data_range * torch.randn(3, 3, 17, 23, generator=g)
    got = batch_psnr(output, target, data_range=data_range, clamp=clamp)
    for i in range(3):
        out = output[i].clamp(0, data_range) if clamp else output[i]
        want = peak_signal_noise_ratio(target[i].double().numpy(), out.double().numpy(), data_range=data_range)
        assert float(got[i]) == pytest.approx(want, abs=1e-3)
    assert float(batch_psnr(target, target, data_range=data_range)[0]) == pytest.approx(100.0)
    with pytest.raises(MetricError, match="one shape"):
        batch_psnr(output, target[:2])
