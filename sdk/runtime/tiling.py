"""Large frames in tiles: overlapping tiles, restored one at a time, blended with linear ramps.

A tile is ``tile x tile`` pixels (rounded down to the model's pad multiple, so no tile is padded
except where the frame itself is smaller); neighbours overlap by ``overlap`` pixels. Each tile's output
is weighted by a separable ramp that rises linearly over the overlap on every side that has a neighbour
(and is flat at the frame border), and the weighted sum is divided by the summed weights, so seams
fade across the overlap instead of showing a step.

Tiling is not exact for NAFNet: its receptive field spans the whole tile, and its channel attention
pools over the whole input, so a tile sees less context than the frame. With an overlap of a few
dozen pixels the blended result stays within a few 1/100 of a grey level of the untiled one (the tests
require > 40 dB between them).

:func:`tiled_restore` reads tiles from the uint8 frame and writes the uint8 result strip by strip, so a
large frame never exists as a float tensor; :func:`window_mosaic` gives the classifier its windows of such a
frame the same way. :func:`auto_tile` picks a tile size from a memory cap that covers the frame's uint8
buffers (:data:`FRAME_BYTES_PER_PIXEL`), the accumulator strip and one tile's activations
(:func:`activation_bytes_per_pixel`, an estimate of the peak of one NAFNet forward pass per input pixel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from adsrt.arch import NAFNetConfig
from adsrt.errors import AdsrtError

__all__ = ["FRAME_BYTES_PER_PIXEL", "TilePlan", "activation_bytes_per_pixel", "auto_tile", "plan_tiles",
           "release_freed_memory", "tiled_restore", "window_mosaic"]

# uint8 buffers of one frame while it is restored: the input (3 bytes per pixel), the output (3) and the
# encoder's BGR copy of it (3). The memory limit covers them as well as the activations.
FRAME_BYTES_PER_PIXEL = 9
# Bytes per pixel of the accumulator strip of tiled_restore: the fp32 sum (12, normalised in place), the
# scaled copy the conversion to uint8 makes (12) and its uint8 results (6), with room for the tile's weights.
STRIP_BYTES_PER_PIXEL = 36


@dataclass(frozen=True)
class TilePlan:
    """Tile origins along each axis and the tile size actually used."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


def _starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends at the border
    return tuple(starts)


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TilePlan:
    """Where the tiles of a ``height x width`` frame go (see the module doc)."""
    if tile < 1 or overlap < 0 or multiple < 1:
        raise AdsrtError(f"tile must be >= 1 and overlap >= 0, got tile {tile}, overlap {overlap}")
    tile = max(multiple, tile // multiple * multiple)
    if overlap * 2 >= tile:
        raise AdsrtError(f"tile overlap {overlap} must be less than half the tile size {tile}")
    tile_h, tile_w = min(tile, height), min(tile, width)
    return TilePlan(height, width, tile_h, tile_w, overlap, _starts(height, tile, overlap), _starts(width, tile, overlap))


def _ramp(start: int, size: int, length: int, overlap: int, device, dtype) -> Tensor:
    w = torch.ones(size, device=device, dtype=dtype)
    if overlap == 0:
        return w
    ramp = torch.arange(1, overlap + 1, device=device, dtype=dtype) / (overlap + 1)
    n = min(overlap, size)
    if start > 0:  # a neighbour before this tile
        w[:n] = ramp[:n]
    if start + size < length:  # a neighbour after it
        w[size - n :] = torch.minimum(w[size - n :], ramp[:n].flip(0))
    return w


def _total_weight(starts: tuple[int, ...], size: int, length: int, overlap: int, device) -> Tensor:
    """The sum of the ramps of every tile along one axis (their blend weights add up to this)."""
    total = torch.zeros(length, device=device, dtype=torch.float32)
    for start in starts:
        total[start : start + size] += _ramp(start, size, length, overlap, device, torch.float32)
    return total


def tiled_restore(fn: Callable[[Tensor], Tensor], image: np.ndarray, tile: int, overlap: int, multiple: int, *,
                  to_input: Callable[[np.ndarray], Tensor], to_output: Callable[[Tensor], np.ndarray],
                  before_tile: Callable[[int, int, int, int], None] | None = None,
                  ) -> tuple[np.ndarray, Tensor]:
    """``fn`` (an image-to-image network) applied tile by tile to a uint8 ``H x W x C`` frame, blended.

    Only tiles are ever converted: ``to_input`` turns a uint8 crop into the network's input tensor and
    ``to_output`` a restored float block ``[1, C, h, W]`` into uint8 ``h x W x C``. Tiles run row by row;
    a float accumulator one tile row high (``tile x W``) collects the weighted outputs, and the rows no later
    tile touches are normalised and converted as soon as their tile row is done. So the memory is the uint8
    input and output, one accumulator strip and one tile's activations, whatever the frame size (a 12000 x
    12000 frame would take 1.7 GB per float copy). The blend weight of a tile is the outer product of two
    ramps and the tiles form a grid, so the summed weight is the outer product of the per-axis sums: no
    weight buffer either.

    ``before_tile(y0, x0, h, w)``, when given, is called before each tile with its region of the frame (the
    local mode's coefficient map is cut to the tile there).

    Returns the uint8 frame and a 0-d bool tensor (on the input's device): whether every restored tile was
    finite (checked by the caller once, with a single device sync).
    """
    h, w = image.shape[:2]
    plan = plan_tiles(h, w, tile, overlap, multiple)
    th, tw = plan.tile_h, plan.tile_w
    out = np.empty_like(image)
    finite: Tensor | None = None
    acc: Tensor | None = None
    total_x: Tensor | None = None
    total_y: Tensor | None = None
    for row, y0 in enumerate(plan.ys):
        next_y = plan.ys[row + 1] if row + 1 < len(plan.ys) else h
        for x0 in plan.xs:
            if before_tile is not None:
                before_tile(y0, x0, th, tw)
            piece = fn(to_input(image[y0 : y0 + th, x0 : x0 + tw])).float()
            if acc is None:
                device = piece.device
                acc = torch.zeros(1, piece.shape[1], th, w, device=device, dtype=torch.float32)
                total_x = _total_weight(plan.xs, tw, w, overlap, device)
                total_y = _total_weight(plan.ys, th, h, overlap, device)
                finite = torch.ones((), dtype=torch.bool, device=device)
            finite &= torch.isfinite(piece).all()
            wy = _ramp(y0, th, h, overlap, piece.device, torch.float32)
            wx = _ramp(x0, tw, w, overlap, piece.device, torch.float32)
            acc[:, :, :, x0 : x0 + tw] += piece * (wy[:, None] * wx[None, :])
        # Rows [y0, next_y) are complete: no later tile row reaches above next_y.
        n = next_y - y0
        done = acc[:, :, :n].div_(total_y[y0:next_y, None] * total_x[None, :])  # in place: no second strip
        out[y0:next_y] = to_output(done)
        if row + 1 < len(plan.ys):  # shift the overlap rows up (a copy of those few rows) and clear the rest
            acc[:, :, : th - n] = acc[:, :, n:].clone()
            acc[:, :, th - n :] = 0.0
    assert finite is not None
    return out, finite


def release_freed_memory() -> None:
    """Give the memory a tiled frame freed back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A tile's activations are tens of MB, below glibc's mmap threshold once it has adapted to them, so they
    live on the heap and stay in the process after they are freed; the frame's output buffers are allocated
    after them and the heap cannot shrink below those. Without the trim that slack adds to the peak of the
    next large allocation (the encoder's copy of the output), past the memory limit.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): no malloc_trim
        return


def window_mosaic(image: np.ndarray, window: int, grid: int) -> np.ndarray:
    """The classifier's windows of a large uint8 frame, side by side in a small frame that the classifier
    sees through exactly the same windows (:meth:`adsrt.arch.DegradationClassifier.views`).

    The windows of a frame start at ``i * (size - window) // (grid - 1)``; in a mosaic of ``grid`` windows
    per axis they start at ``i * window``, which is the same formula on the mosaic's size. So classifying the
    mosaic gives the frame's logits while only ``grid**2`` window crops are converted to floats (an axis no
    longer than the window stays whole: the classifier repeats it, and so does the mosaic by being its size).
    """
    h, w = image.shape[:2]

    def starts(size: int) -> list[int]:
        if size <= window:
            return [0]
        if grid == 1:
            return [(size - window) // 2]
        return [i * (size - window) // (grid - 1) for i in range(grid)]

    sh, sw = min(window, h), min(window, w)
    rows = [np.concatenate([image[y : y + sh, x : x + sw] for x in starts(w)], axis=1) for y in starts(h)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def activation_bytes_per_pixel(config: NAFNetConfig, element_size: int = 4) -> int:
    """Estimated peak activation memory of one NAFNet forward pass, bytes per input pixel.

    At full resolution a NAFBlock holds its input, the expanded ``dw_expand * width`` channels twice
    (1x1 then depthwise output), the gated half and the skip, about ``(4 + 2 * dw_expand) * width``
    channels at once; the lower levels add a third (each has 2x the channels on 1/4 of the pixels);
    the input, its padded copy and the output add 9 channels. The factor 1.6 on top is calibrated on the
    peak RSS growth of one fp32 forward pass on the CPU at 854x480 (measured 1,188 / 598 / 392 bytes per
    pixel for nafnet-edge / -small / -tiny; this estimate gives 1,152 / 604 / 331).
    """
    channels = (4 + 2 * config.dw_expand) * config.width * 4 / 3 + 9
    return math.ceil(1.6 * channels * element_size)


def auto_tile(height: int, width: int, bytes_per_pixel: int, memory_limit_mb: float, multiple: int,
              overlap: int = 0) -> int | None:
    """A tile size whose frame buffers, accumulator strip and activations fit ``memory_limit_mb``, or None
    when the whole frame fits (its buffers and activations). The tile must exceed twice ``overlap``."""
    if memory_limit_mb <= 0:
        return None
    budget = memory_limit_mb * 2**20
    frame = FRAME_BYTES_PER_PIXEL * height * width
    if frame + bytes_per_pixel * height * width <= budget:
        return None
    room = budget - frame
    if room <= 0:
        raise AdsrtError(f"a {width} x {height} frame needs {frame / 2**20:.0f} MB for its uint8 input and output "
                         f"alone, over the memory limit of {memory_limit_mb:g} MB (raise the limit)")
    # The largest t with bytes_per_pixel * t**2 (one tile) + STRIP_BYTES_PER_PIXEL * t * width (a strip) <= room.
    strip = STRIP_BYTES_PER_PIXEL * width
    t = (-strip + math.sqrt(strip * strip + 4 * bytes_per_pixel * room)) / (2 * bytes_per_pixel)
    tile = int(t) // multiple * multiple
    if tile < 4 * multiple or tile <= 2 * overlap:
        raise AdsrtError(
            f"memory limit {memory_limit_mb:g} MB leaves tiles of {tile} px for a {width} x {height} frame: too "
            f"small to restore with a {overlap} px overlap (raise the limit)"
        )
    return tile
