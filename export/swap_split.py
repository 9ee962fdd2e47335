"""Swap mode for engines: the masked filters of each layer as a separate, small, refittable convolution.

The swap-mode graph splits every convolution that holds masked units of some degradation into

    y_full = conv(x, W_um)                       constant weights: every output filter
    y_ads  = conv(x, A)                          A = W[rows]: the filters that hold a masked unit of
                                                 *any* degradation (the union), refittable
    y      = gather_channels(concat(y_full, y_ads), channel_map)

where ``channel_map[o]`` is ``o`` for an untouched filter and ``out_channels + j`` for ``rows[j]``. The
rows, the whole-layer rule and the refit names are the runtime's refit plan
(:mod:`adsrt.runtime.refit`). The full convolution also computes the masked filters with the UM values
(wasted, about ``|rows| / out_channels`` of the layer, ~3-10% at q = 3%) and the gather copies the output
once; in exchange the big weight stays constant, so TensorRT can fold and fuse it, and the refit moves
only the small tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adsrt.ads import eligible_convs
from adsrt.errors import AdsrtError
from adsrt.runtime.branch import side_conv
from adsrt.runtime.refit import SPLIT_MAX, SwapRows, swap_rows

__all__ = ["SwapConv", "to_swap_split"]


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
