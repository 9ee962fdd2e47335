"""Coefficient maps for ``local`` mode: where in the frame each degradation's delta applies.

A frame can be rainy on one side and clean on the other. The classifier is trained on windows of
``window`` pixels, so it can say what each part of a frame suffers from: :func:`window_lattice` spreads
windows evenly over the frame (half a window apart, at most :data:`MAX_LATTICE` per side so the cost is
bounded whatever the frame size), the classifier scores each one, and a :class:`CoefficientGrid` holds the
coefficients ``c = p[:k]`` at the window centres. :meth:`CoefficientGrid.region` turns them into a smooth
map over any region of the frame by bilinear interpolation between the centres (constant beyond the outer
centres), sampled every :data:`MAP_STEP` pixels; the branch model resizes it to each layer
(:mod:`adsrt.runtime.branch`). Tiles take the part of the same map that covers them, so tiled and whole
frames use one map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adsrt.errors import AdsrtError

__all__ = ["MAP_STEP", "MAX_LATTICE", "CoefficientGrid", "window_lattice"]

MAP_STEP = 8  # frame pixels per map sample: the map is smooth, and 1/8 of a frame is a few kB
MAX_LATTICE = 16  # windows per side at most (a 4K frame: 16 x 16 windows of 96 px, ~7 MB of float crops)


def _starts(length: int, window: int) -> list[int]:
    """Window starts along one axis: half a window apart (more where MAX_LATTICE caps them), the first at 0
    and the last ending at the border."""
    span = min(window, length)
    if length <= span:
        return [0]
    n = min(MAX_LATTICE, math.ceil((length - span) / max(1, span // 2)) + 1)
    return [round(i * (length - span) / (n - 1)) for i in range(n)]


def window_lattice(height: int, width: int, window: int) -> tuple[list[int], list[int], int, int]:
    """``(ys, xs, h, w)``: the starts of the lattice of windows over a frame and the window's size there
    (the window, or the frame's side where the frame is smaller)."""
    if window < 1:
        raise AdsrtError(f"local mode needs a classifier trained on windows (its window is {window})")
    return _starts(height, window), _starts(width, window), min(window, height), min(window, width)


def _interpolation(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Matrix ``[len(positions), len(centres)]`` of linear interpolation weights between the centres,
    constant beyond the first and last (rows sum to 1)."""
    eye = np.eye(len(centres), dtype=np.float64)
    return np.stack([np.interp(positions, centres, eye[j]) for j in range(len(centres))], axis=1)


@dataclass
class CoefficientGrid:
    """Coefficients ``values`` ``[k, len(ys), len(xs)]`` at the window centres ``ys`` x ``xs`` (pixels)."""

    values: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        self.ys, self.xs = np.asarray(self.ys, np.float64), np.asarray(self.xs, np.float64)
        if self.values.ndim != 3 or self.values.shape[1:] != (len(self.ys), len(self.xs)):
            raise AdsrtError(f"coefficient grid of shape {self.values.shape} does not match its "
                             f"{len(self.ys)} x {len(self.xs)} centres")
        if not np.isfinite(self.values).all():
            raise AdsrtError("coefficient grid holds NaN or infinite values")
        if (np.diff(self.ys) <= 0).any() or (np.diff(self.xs) <= 0).any():
            raise AdsrtError("coefficient grid centres must increase strictly along each axis")

    @classmethod
    def from_windows(cls, values: np.ndarray, ys: list[int], xs: list[int], h: int, w: int) -> CoefficientGrid:
        """From per-window coefficients ``[k, len(ys), len(xs)]`` of windows starting at ``ys`` x ``xs``."""
        return cls(values, np.asarray(ys, np.float64) + (h - 1) / 2, np.asarray(xs, np.float64) + (w - 1) / 2)

    @classmethod
    def constant(cls, c: np.ndarray) -> CoefficientGrid:
        """The same coefficients ``[k]`` everywhere."""
        return cls(np.asarray(c, np.float32).reshape(-1, 1, 1), np.zeros(1), np.zeros(1))

    @property
    def k(self) -> int:
        return self.values.shape[0]

    def mean(self) -> np.ndarray:
        """The frame's mean coefficients ``[k]`` (over the windows)."""
        return self.values.mean(axis=(1, 2))

    def region(self, y0: int, x0: int, h: int, w: int, step: int = MAP_STEP) -> np.ndarray:
        """The map ``[k, ceil(h / step), ceil(w / step)]`` over the frame region ``[y0, y0 + h) x [x0, x0 + w)``,
        sampled at the centres of that many equal cells (``step`` pixels, or a little less)."""
        # n cells spread exactly over the region (cells are slightly smaller than step when it does not divide
        # the side), so that the branch model's resize of the map to the region puts each sample at its centre.
        ny, nx = math.ceil(h / step), math.ceil(w / step)
        py = y0 + (np.arange(ny) + 0.5) * h / ny - 0.5
        px = x0 + (np.arange(nx) + 0.5) * w / nx - 0.5
        wy, wx = _interpolation(py, self.ys), _interpolation(px, self.xs)
        return np.einsum("yi,kij,xj->kyx", wy, self.values.astype(np.float64), wx).astype(np.float32)
