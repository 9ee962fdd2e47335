"""Swap mode for engines: the masked filters of each layer as a separate, small, refittable convolution.

An engine (TensorRT, or ONNX Runtime with overridable initializers) refits whole named weight tensors,
not elements. So the swap-mode graph splits every convolution that holds masked units of some
degradation into

    y_full = conv(x, W_um)                       constant weights: every output filter
    y_ads  = conv(x, A)                          A = W[rows]: the filters that hold a masked unit of
                                                 *any* degradation (the union), refittable
    y      = gather_channels(concat(y_full, y_ads), channel_map)

where ``channel_map[o]`` is ``o`` for an untouched filter and ``out_channels + j`` for ``rows[j]``. The
ADS weights of a frame are then ``A = W_um[rows] + sum_d c_d delta_d[rows]``: the runtime computes them
with the fused update (:mod:`adsrt.kernels`) on the full weights and gathers the rows into the refit
buffers (:func:`gather_refit_weights`). The full convolution also computes the masked filters with
the UM values (wasted, about ``|rows| / out_channels`` of the layer, ~3-10% at q = 3%) and the gather
copies the output once; in exchange the big weight stays constant, so TensorRT can fold and fuse it,
and the refit moves only the small tensor.

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

from adsrt.ads import eligible_convs, unit_layouts
from adsrt.branch import side_conv
from adsrt.errors import AdsrtError

__all__ = [
    "REFIT_PREFIX",
    "SwapConv",
    "SwapRows",
    "gather_refit_weights",
    "refit_name",
    "swap_rows",
    "to_swap_split",
]

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


class SwapConv(nn.Module):
    """A convolution split into its full (constant) part and its refittable masked rows (module doc)."""

    def __init__(self, base: nn.Conv2d | nn.ConvTranspose2d, rows: SwapRows) -> None:
        super().__init__()
        self.base = base
        self.transposed = isinstance(base, nn.ConvTranspose2d)
        index = rows.rows
        weight = base.weight.detach().index_select(rows.dim, index.to(base.weight.device)).clone()
        # The parameter's name in the state dict ends in "ads_weight"; the exporter renames the
        # initializer to rows.name (see adsrt.export.onnx_export).
        self.ads_weight = nn.Parameter(weight, requires_grad=False)
        bias = None if base.bias is None else base.bias.detach()[index.to(base.bias.device)].clone()
        self.register_buffer("ads_bias", bias)
        out_channels = base.out_channels
        channel_map = torch.arange(out_channels, dtype=torch.int64)
        channel_map[index] = out_channels + torch.arange(len(index), dtype=torch.int64)
        self.register_buffer("channel_map", channel_map.to(base.weight.device))
        in_index = None
        self.ads_groups = 1
        if not self.transposed and base.groups > 1:
            in_per_group = base.in_channels // base.groups
            out_per_group = out_channels // base.groups
            group_of_row = index // out_per_group
            in_index = (group_of_row[:, None] * in_per_group + torch.arange(in_per_group)).reshape(-1)
            self.ads_groups = len(index)
            in_index = in_index.to(base.weight.device)
        self.register_buffer("in_index", in_index)
        self.rows = rows

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        z = side_conv(self.base, x, self.ads_weight, self.ads_bias, self.in_index, self.ads_groups)
        return torch.cat([y, z], 1).index_select(1, self.channel_map)


def to_swap_split(model: nn.Module, bundle, split_max: float = SPLIT_MAX) -> dict[str, SwapRows]:
    """Replace, in place, every convolution of ``model`` with masked rows by a :class:`SwapConv`
    (layers that are whole stay as they are). ``model`` holds the UM weights (``bundle.build_um()``).
    Returns the rows of every masked layer, keyed by bundle layer name."""
    convs = eligible_convs(model)
    rows_by_layer = swap_rows(bundle, model, split_max)
    for layer, rows in rows_by_layer.items():
        if rows.whole:
            continue
        module_name = layer.removesuffix(".weight")
        if module_name == layer or not module_name:
            raise AdsrtError(f"cannot split layer {layer!r}: not a submodule's weight")
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SwapConv(convs[layer], rows))
    return rows_by_layer
