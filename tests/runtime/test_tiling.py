"""Tiling: plans cover the frame, blending is a partition of unity (exact for local functions), and the
trained NAFNet tiled stays within 40+ dB of the untiled result; a memory cap turns tiling on by itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

import adsrt
from adsrt.arch import BACKBONES
from adsrt.errors import AdsrtError
from adsrt.runtime.tiling import activation_bytes_per_pixel, auto_tile, plan_tiles, tiled_forward


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


def test_blending_is_exact_for_pixelwise_functions():
    x = torch.rand(2, 3, 90, 130, generator=torch.Generator().manual_seed(0))

    def fn(t):
        return 2.0 * t + 1.0

    torch.testing.assert_close(tiled_forward(fn, x, 48, 12, 16), fn(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tiled_forward(lambda t: t, x, 32, 0, 16), x, rtol=0, atol=0)


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
    limit_mb = 128 * 128 * bpp / 2**20  # room for a 128 x 128 tile
    assert auto_tile(192, 256, bpp, limit_mb, 16) == 128
    assert auto_tile(100, 100, bpp, limit_mb, 16) is None and auto_tile(10**4, 10**4, bpp, 0, 16) is None
    capped = adsrt.load(trained_bundle, device="cpu", memory_limit_mb=limit_mb)
    out = capped.restore(big)
    assert capped.last.tiles == plan_tiles(192, 256, 128, 32, 16).n_tiles == 6
    whole = adsrt.load(trained_bundle, device="cpu", memory_limit_mb=0).restore(big)
    assert peak_signal_noise_ratio(whole, out, data_range=255) > 40.0
    with pytest.raises(AdsrtError, match="too small to restore"):
        auto_tile(4000, 4000, bpp, 0.01, 16)
