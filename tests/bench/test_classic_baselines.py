"""The classic baselines of benchmarks/classic.py (references for bench_baselines.py): each returns an RGB
uint8 frame of the input's size and improves the degradation it is meant for on a real photo; the oracle
blur kernel is the one the degradation applied; the guided filter reproduces its defining properties."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from adsrt.train.degradations import degrade, keyed_rng
from adsrt.train.evaluate import EvalCase

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def classic():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("classic")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return peak_signal_noise_ratio(b, a, data_range=255)


@pytest.mark.parametrize(("spec", "method", "param"), [
    ("noise/awgn:25", "nlm", 14.0), ("haze:1.5", "dark_channel_prior", 0.75), ("lowlight:3", "gamma", 2.5),
    ("lowlight:3", "illumination", 0.7),
])
def test_each_baseline_improves_its_degradation(classic, clean, spec, method, param):
    degraded = degrade(clean, spec, keyed_rng(0, spec))
    out = getattr(classic, method)(degraded, param, classic.Context(sigma=25.0))
    assert out.dtype == np.uint8 and out.shape == clean.shape
    assert _psnr(out, clean) > _psnr(degraded, clean) + 0.3


def test_the_oracle_kernel_is_the_degradations_own(classic, clean):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench = importlib.import_module("bench_baselines")
    finally:
        sys.path.remove(str(BENCHMARKS))
    spec, name = "blur:2", "a.png"
    degraded = degrade(clean, spec, keyed_rng(0, spec, name))  # what synthetic_cases does
    kernel = bench.context_of(EvalCase(spec, name, degraded, clean, "blur"), seed=0).kernel
    again = cv2.filter2D(clean.astype(np.float32) / 255.0, -1, kernel, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(again * 255.0, degraded, atol=0.51)
    for method, param in (("wiener", 0.01), ("richardson_lucy", 20)):
        out = getattr(classic, method)(degraded, param, classic.Context(kernel=kernel))
        assert _psnr(out, clean) > _psnr(degraded, clean) + 1.0, method


def test_guided_filter_properties(classic, clean):
    x = clean.astype(np.float32) / 255.0
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    # A constant source stays constant; with eps -> 0 the filter reproduces its own guide (a = 1, b = 0).
    const = np.full_like(grey, 0.3)
    np.testing.assert_allclose(classic.guided_filter(grey, const, 4, 1e-3), const, atol=1e-5)
    np.testing.assert_allclose(classic.guided_filter(grey, grey, 4, 1e-8), grey, atol=2e-3)
    # A huge eps turns it into the box mean of the box mean (a -> 0, b -> mean p, output mean b).
    box = cv2.boxFilter(cv2.boxFilter(grey, -1, (9, 9), borderType=cv2.BORDER_REFLECT), -1, (9, 9),
                        borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(classic.guided_filter(grey, grey, 4, 1e6), box, atol=1e-4)


def test_the_rain_and_snow_filters_match_their_references(classic, clean):
    from scipy.ndimage import median_filter

    degraded = degrade(clean, "rain:3", keyed_rng(0))
    expected = np.stack([median_filter(degraded[..., c], size=3, mode="reflect") for c in range(3)], -1)
    np.testing.assert_array_equal(classic.median(degraded, 3, classic.Context())[1:-1, 1:-1], expected[1:-1, 1:-1])
    smooth = classic.guided_smooth(degraded, 0.004, classic.Context())
    assert smooth.shape == clean.shape and smooth.std() < degraded.std()


def test_cbm3d_with_the_true_sigma(classic, clean):
    pytest.importorskip("bm3d", reason="the bm3d package (pip install bm3d) is only needed by bench_baselines")
    small = clean[:64, :64]
    noisy = degrade(small, "noise/awgn:25", keyed_rng(0))
    out = classic.cbm3d(noisy, 0.0, classic.Context(sigma=25.0))
    assert _psnr(out, small) > _psnr(noisy, small) + 5.0
