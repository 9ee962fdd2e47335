"""The refit plan of swap-mode graphs: which filter rows of which layer an engine refits, and how to fill them.

An engine (TensorRT, or ONNX Runtime with overridable initializers) refits whole named weight tensors,
not elements. The exporter (:mod:`adsrt.export.swap_split`) splits each convolution with masked units
into a constant full convolution and a small refittable one over the rows below; the runtime computes
the frame's ADS weights with the fused update (:mod:`adsrt.kernels`) on the full weights and gathers
the rows into the refit buffers (:func:`gather_refit_weights`). Both sides take the rows from
:func:`swap_rows`, so graph and runtime agree by construction.


**Whole layers.** When the rows are more than ``split_max`` of a layer's filters (kernel granularity
with six degradations marks most filters of many layers), the split would cost more than it saves: that
layer is not split and its whole weight is the refittable tensor (``SwapRows.whole``). ``split_max=0``
makes every masked layer whole: the graph is then the UM graph with those weights renamed, which is what
ONNX Runtime wants (it overrides initializers for free, with no refit to keep small).

Rows per layer: with ``granularity="filter"`` the masked filters; with ``"kernel"`` every output filter
with at least one masked kernel slice (its unmasked slices keep their UM values in ``A``). Grouped and
depthwise convolutions run the small convolution with one group per row over the gathered input
channels of each row's group. ``ConvTranspose2d`` (groups 1) holds its filters in dimension 1.

**Names** (stable: the TensorRT refitter and the runtime use them, see :func:`refit_name`): the weight
of the small convolution of bundle layer ``encoders.0.0.conv1.weight`` (or the layer's own weight, when
whole) is the ONNX initializer ``ads.encoders.0.0.conv1.weight``; biases are constant and not renamed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adsrt.ads import unit_layouts
from adsrt.errors import AdsrtError

__all__ = ["REFIT_PREFIX", "SPLIT_MAX", "SwapRows", "gather_refit_weights", "refit_name", "swap_rows"]

REFIT_PREFIX = "ads."
SPLIT_MAX = 0.5  # default: split a layer when at most half of its filters hold masked units


def refit_name(layer: str) -> str:
    """The ONNX initializer / TensorRT weight name of the refittable rows of bundle layer ``layer``."""
    return REFIT_PREFIX + layer


@dataclass(frozen=True)
class SwapRows:
    """The refittable rows of one layer."""

    layer: str  # bundle layer (parameter) name, e.g. "encoders.0.0.conv1.weight"
    rows: Tensor  # int64, sorted unique output-filter indices
    transposed: bool  # ConvTranspose2d: filters live in dimension 1 of the weight
    shape: tuple[int, ...]  # shape of the refittable tensor
    whole: bool = False  # the refittable tensor is the layer's whole weight (not split, see module doc)

    @property
    def name(self) -> str:
        return refit_name(self.layer)

    @property
    def dim(self) -> int:
        """The dimension of the full weight the rows index."""
        return 1 if self.transposed else 0

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def swap_rows(bundle, model: nn.Module | None = None, split_max: float = SPLIT_MAX) -> dict[str, SwapRows]:
    """The refittable rows of every layer with masked units in ``bundle`` (union over degradations),
    in module order; layers with more than ``split_max`` of their filters in the union are whole.
    ``model`` defaults to a fresh backbone of the bundle."""
    if not 0.0 <= split_max <= 1.0:
        raise AdsrtError(f"split_max must be in [0, 1], got {split_max}")
    model = bundle.build_um() if model is None else model
    layouts = unit_layouts(model, bundle.granularity)
    union: dict[str, set[int]] = {}
    for d in bundle.degradations:
        for layer, delta in bundle.deltas.get(d, {}).items():
            if layer not in layouts:
                raise AdsrtError(f"bundle/model mismatch: the model has no eligible convolution {layer!r}")
            if not len(delta.units):
                continue
            units = delta.units.to(torch.int64)
            outs = units if bundle.granularity == "filter" else units // layouts[layer].in_channels
            union.setdefault(layer, set()).update(outs.tolist())
    out: dict[str, SwapRows] = {}
    for layer, layout in layouts.items():  # module order, not degradation order
        if layer not in union:
            continue
        rows = torch.tensor(sorted(union[layer]), dtype=torch.int64)
        if len(rows) > split_max * layout.out_channels:
            rows = torch.arange(layout.out_channels, dtype=torch.int64)
            out[layer] = SwapRows(layer, rows, layout.transposed, tuple(layout.shape), whole=True)
            continue
        shape = list(layout.shape)
        shape[1 if layout.transposed else 0] = len(rows)
        out[layer] = SwapRows(layer, rows, layout.transposed, tuple(shape))
    return out


def gather_refit_weights(weights: dict[str, Tensor], rows: dict[str, SwapRows],
                         out: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The refittable tensors (keyed by :func:`refit_name`) from full layer ``weights`` (keyed by layer).

    With ``out`` (preallocated, contiguous, same keys) the rows are written in place with
    ``index_select(out=...)``: no allocation, no host sync, so it can follow the fused update inside a
    CUDA graph or on the refit stream."""
    result = {} if out is None else out
    for layer, r in rows.items():
        w = weights[layer]
        if r.whole:
            if out is None:
                result[r.name] = w.detach().clone()
            else:
                out[r.name].copy_(w)
            continue
        index = r.rows if r.rows.device == w.device else r.rows.to(w.device)
        if out is None:
            result[r.name] = w.index_select(r.dim, index).contiguous()
        else:
            torch.index_select(w, r.dim, index, out=out[r.name])
    return result
