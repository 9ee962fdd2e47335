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

:func:`auto_tile` picks a tile size from a memory cap, using :func:`activation_bytes_per_pixel`, an
estimate of the peak activation memory of one NAFNet forward pass per input pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adsrt.arch import NAFNetConfig
from adsrt.errors import AdsrtError

__all__ = ["TilePlan", "activation_bytes_per_pixel", "auto_tile", "plan_tiles", "tiled_forward"]


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


def tiled_forward(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, multiple: int = 1) -> Tensor:
    """``fn`` (an image-to-image network, output shape = input shape) applied tile by tile to ``x``
    ``[B, C, H, W]``, blended (accumulated in fp32 on ``x``'s device)."""
    b, _, h, w = x.shape
    plan = plan_tiles(h, w, tile, overlap, multiple)
    out: Tensor | None = None
    weight = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)
    for y0 in plan.ys:
        wy = _ramp(y0, plan.tile_h, h, overlap, x.device, torch.float32)
        for x0 in plan.xs:
            wx = _ramp(x0, plan.tile_w, w, overlap, x.device, torch.float32)
            piece = fn(x[:, :, y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w])
            if out is None:
                out = torch.zeros(b, piece.shape[1], h, w, device=x.device, dtype=torch.float32)
            m = wy[:, None] * wx[None, :]
            out[:, :, y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w] += piece.float() * m
            weight[:, :, y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w] += m
    assert out is not None
    return (out / weight).to(x.dtype)


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


def auto_tile(height: int, width: int, bytes_per_pixel: int, memory_limit_mb: float, multiple: int) -> int | None:
    """A tile size whose estimated activations fit ``memory_limit_mb``, or None when the frame fits whole."""
    if memory_limit_mb <= 0:
        return None
    budget_pixels = memory_limit_mb * 2**20 / bytes_per_pixel
    if height * width <= budget_pixels:
        return None
    tile = int(math.sqrt(budget_pixels)) // multiple * multiple
    if tile < 4 * multiple:
        raise AdsrtError(
            f"memory limit {memory_limit_mb:g} MB leaves tiles of {tile} px: too small to restore (raise the limit)"
        )
    return tile
