"""Tiling: plans cover the frame, blending is a partition of unity (exact for local functions), and the
trained NAFNet tiled stays within 40+ dB of the untiled result; a memory cap (frame buffers included) turns
tiling on by itself; the classifier's window mosaic gives the frame's own logits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

import adsrt
from adsrt.arch import BACKBONES, ClassifierConfig, build_classifier
from adsrt.errors import AdsrtError
from adsrt.runtime.tiling import (
    FRAME_BYTES_PER_PIXEL,
    activation_bytes_per_pixel,
    auto_tile,
    plan_tiles,
    tiled_restore,
    window_mosaic,
)


def _to_input(crop: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0


def _to_output(y: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((y[0].permute(1, 2, 0) * 255.0).clamp(0, 255).round().to(torch.uint8).numpy())


@pytest.mark.parametrize(("h", "w", "tile", "overlap", "multiple"), [
    (100, 37, 32, 8, 4), (64, 64, 64, 16, 16), (200, 150, 70, 10, 16), (5, 300, 48, 16, 16),
])
def test_plans_cover_the_frame_with_aligned_tiles(h, w, tile, overlap, multiple):
    plan = plan_tiles(h, w, tile, overlap, multiple)
    assert plan.tile_h == min(h, tile // multiple * multiple) and plan.tile_w == min(w, tile // multiple * multiple)
    covered = np.zeros((h, w), dtype=int)
    for y in plan.ys:
        for x in plan.xs:
            assert y + plan.tile_h <= h and x + plan.tile_w <= w
            covered[y : y + plan.tile_h, x : x + plan.tile_w] += 1
    assert covered.min() >= 1
    for starts, size, length in ((plan.ys, plan.tile_h, h), (plan.xs, plan.tile_w, w)):
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:], strict=False))  # neighbours overlap


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(90, 130, 48, 12), (64, 64, 32, 0), (200, 37, 48, 20),
                                                    (33, 300, 64, 16)])
def test_blending_is_exact_for_pixelwise_functions(h, w, tile, overlap):
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)

    def fn(t):
        return 0.5 * t + 0.25

    out, finite = tiled_restore(fn, image, tile, overlap, 16, to_input=_to_input, to_output=_to_output)
    assert out.shape == image.shape and out.dtype == np.uint8 and bool(finite)
    np.testing.assert_array_equal(out, _to_output(fn(_to_input(image))))
    ident, _ = tiled_restore(lambda t: t, image, tile, overlap, 16, to_input=_to_input, to_output=_to_output)
    np.testing.assert_array_equal(ident, image)


def test_a_non_finite_tile_is_reported():
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    calls = []

    def fn(t):
        calls.append(1)
        return t * float("nan") if len(calls) == 3 else t

    _, finite = tiled_restore(fn, image, 32, 8, 16, to_input=_to_input, to_output=_to_output)
    assert not bool(finite)


@pytest.mark.parametrize("context_width", [0, 3])
@pytest.mark.parametrize(("h", "w", "window", "grid"), [(321, 481, 96, 3), (481, 100, 96, 3), (50, 700, 64, 4),
                                                        (300, 300, 96, 1), (97, 1000, 96, 2)])
def test_the_window_mosaic_gives_the_frames_logits(h, w, window, grid, context_width):
    """With or without a context trunk (which sees the windows in their places, so their mosaic too)."""
    torch.manual_seed(0)
    dc = build_classifier(ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2, window=window, grid=grid,
                                           context_width=context_width))
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mosaic = window_mosaic(image, window, grid)
    assert mosaic.shape[0] <= grid * window and mosaic.shape[1] <= grid * window
    with torch.no_grad():
        torch.testing.assert_close(dc(_to_input(mosaic)), dc(_to_input(image)), rtol=1e-5, atol=1e-5)


def test_bad_tile_settings_are_refused():
    with pytest.raises(AdsrtError, match="less than half"):
        plan_tiles(100, 100, 32, 16, 16)
    with pytest.raises(AdsrtError):
        plan_tiles(100, 100, 0, 0)
    with pytest.raises(AdsrtError, match="tile must be at least 16"):
        adsrt.RestorerConfig(tile=8).check()


def test_tiled_restore_matches_untiled(trained_bundle, noisy):
    from skimage import data

    big = noisy(cv2.resize(data.astronaut(), (256, 192), interpolation=cv2.INTER_AREA))
    whole = adsrt.load(trained_bundle, device="cpu", memory_limit_mb=0).restore(big)
    tiled = adsrt.load(trained_bundle, device="cpu", tile=96, tile_overlap=24)
    out = tiled.restore(big)
    assert out.shape == big.shape and tiled.last.tiles == plan_tiles(192, 256, 96, 24, 16).n_tiles == 12
    assert peak_signal_noise_ratio(whole, out, data_range=255) > 40.0


def test_a_memory_limit_tiles_large_frames_automatically(trained_bundle, noisy):
    from skimage import data

    big = noisy(cv2.resize(data.astronaut(), (256, 192), interpolation=cv2.INTER_AREA))
    bpp = activation_bytes_per_pixel(BACKBONES["nafnet-tiny"])
    # Room for the frame's uint8 buffers, a 128 px tile and its accumulator strip (36 bytes per strip pixel).
    limit_mb = (FRAME_BYTES_PER_PIXEL * 192 * 256 + 128 * 128 * bpp + 36 * 128 * 256) / 2**20
    assert auto_tile(192, 256, bpp, limit_mb, 16) == 128
    assert auto_tile(100, 100, bpp, limit_mb, 16) is None and auto_tile(10**4, 10**4, bpp, 0, 16) is None
    capped = adsrt.load(trained_bundle, device="cpu", memory_limit_mb=limit_mb)
    out = capped.restore(big)
    assert capped.last.tiles == plan_tiles(192, 256, 128, 32, 16).n_tiles == 6
    uncapped = adsrt.load(trained_bundle, device="cpu", memory_limit_mb=0)
    whole = uncapped.restore(big)
    assert peak_signal_noise_ratio(whole, out, data_range=255) > 40.0
    # The classifier saw the same windows: the tiled frame's mosaic against the whole decoded frame.
    assert uncapped.last.tiles == 1
    assert capped.last.probabilities == pytest.approx(uncapped.last.probabilities, abs=1e-5)
    with pytest.raises(AdsrtError, match="too small to restore"):
        auto_tile(4000, 4000, bpp, 140, 16)


def test_a_limit_below_the_frame_buffers_is_refused_with_the_need():
    bpp = activation_bytes_per_pixel(BACKBONES["nafnet-tiny"])
    with pytest.raises(AdsrtError, match=r"needs 1236 MB for its uint8 input and output alone"):
        auto_tile(12000, 12000, bpp, 512, 16)
    assert auto_tile(12000, 12000, bpp, 2048, 16) >= 256
    # A tile no larger than twice the overlap is no tile: refused as too small, not at the first frame.
    with pytest.raises(AdsrtError, match="too small to restore with a 600 px overlap"):
        auto_tile(12000, 12000, bpp, 2048, 16, overlap=600)
    with pytest.raises(AdsrtError, match="less than half the tile size"):
        adsrt.RestorerConfig(tile=64, tile_overlap=32).check()
