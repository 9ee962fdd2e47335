"""Coefficient maps of local mode: the window lattice covers the frame within its bound, and the map is
the bilinear interpolation between window centres (checked against a hand-written formula)."""

from __future__ import annotations

import numpy as np
import pytest

from adsrt.errors import AdsrtError
from adsrt.runtime.coefficient_map import MAX_LATTICE, CoefficientGrid, window_lattice


@pytest.mark.parametrize("size, window", [(50, 96), (96, 96), (321, 96), (481, 96), (4000, 96), (130, 48)])
def test_lattice_covers_the_frame_half_a_window_apart(size, window):
    ys, xs, h, w = window_lattice(size, size + 7, window)
    assert h == min(window, size) and w == min(window, size + 7)
    for starts, length, span in ((ys, size, h), (xs, size + 7, w)):
        assert starts[0] == 0 and starts[-1] + span == length
        assert len(starts) <= MAX_LATTICE
        gaps = np.diff(starts)
        assert (gaps > 0).all() and (gaps <= max(span // 2, (length - span) / (MAX_LATTICE - 1)) + 1).all()


def test_lattice_needs_a_windowed_classifier():
    with pytest.raises(AdsrtError, match="windows"):
        window_lattice(100, 100, 0)


def test_region_is_bilinear_between_centres_and_flat_beyond():
    values = np.array([[[0.0, 1.0], [2.0, 3.0]]])  # k = 1, centres at y in {10, 30}, x in {20, 60}
    grid = CoefficientGrid(values, ys=[10, 30], xs=[20, 60])
    m = grid.region(0, 0, 48, 96, step=8)  # samples at 3.5, 11.5, ... (cell centres)
    assert m.shape == (1, 6, 12)
    for i, y in enumerate(3.5 + 8 * np.arange(6)):
        for j, x in enumerate(3.5 + 8 * np.arange(12)):
            ty, tx = np.clip((y - 10) / 20, 0, 1), np.clip((x - 20) / 40, 0, 1)
            expected = (1 - ty) * ((1 - tx) * 0 + tx * 1) + ty * ((1 - tx) * 2 + tx * 3)
            assert m[0, i, j] == pytest.approx(expected, abs=1e-6)


def test_tiles_cut_the_same_map_and_constants_stay_constant():
    rng = np.random.default_rng(0)
    grid = CoefficientGrid.from_windows(rng.random((3, 4, 5)), [0, 30, 60, 90], [0, 40, 80, 120, 160], 40, 40)
    whole = grid.region(0, 0, 128, 200)
    np.testing.assert_allclose(grid.region(32, 64, 64, 96), whole[:, 4:12, 8:20], atol=1e-6)
    c = np.array([0.2, 0.5, 0.3])
    np.testing.assert_allclose(CoefficientGrid.constant(c).region(5, 9, 33, 17), np.broadcast_to(c[:, None, None], (3, 5, 3)),
                               atol=1e-7)
    np.testing.assert_allclose(grid.mean(), grid.values.mean((1, 2)))


def test_bad_grids_are_refused():
    with pytest.raises(AdsrtError, match="does not match"):
        CoefficientGrid(np.zeros((2, 3, 3)), ys=[0, 1], xs=[0, 1, 2])
    with pytest.raises(AdsrtError, match="NaN"):
        CoefficientGrid(np.full((1, 1, 1), np.nan), ys=[0], xs=[0])


@pytest.mark.parametrize("width", [100, 104, 9, 854])
def test_the_map_resized_to_its_region_lands_on_the_pixels(width):
    """The branch model resizes the map to the region (bilinear, align_corners=False): the samples must sit
    where that resize puts them, also when 8 does not divide the side."""
    import torch
    import torch.nn.functional as F

    grid = CoefficientGrid(np.array([[[0.0, 1.0]]]), ys=[0], xs=[0, width - 1])
    m = torch.from_numpy(grid.region(0, 0, 1, width))[None]
    resized = F.interpolate(m, size=(1, width), mode="bilinear", align_corners=False)[0, 0, 0].numpy()
    exact = np.arange(width) / (width - 1)
    half_cell = int(np.ceil(width / np.ceil(width / 8) / 2))  # beyond the outer samples the map is flat
    inner = slice(half_cell, width - half_cell)
    np.testing.assert_allclose(resized[inner], exact[inner], atol=0.02)


def test_centres_must_increase():
    with pytest.raises(AdsrtError, match="increase"):
        CoefficientGrid(np.zeros((1, 1, 2)), ys=[0], xs=[5, 5])
