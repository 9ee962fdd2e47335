"""Branch mode: ADS with constant weights and the coefficients as an input.

Swap mode writes ``W_um + sum_d c_d delta_d`` into the live weights before each frame (see
:mod:`adsrt.kernels`). Branch mode never writes a weight. Each convolution that has masked units for
at least one degradation is wrapped in a :class:`BranchConv`, which computes, by linearity of the
convolution in its weight,

    y = conv(x, W_um) + b + scatter_o( c[:, d_r] * conv(x, D_r) )

where row ``r`` of ``D`` is output filter ``o_r`` of the dense delta of degradation ``d_r`` (zero
outside that degradation's masked units), for every output filter that holds at least one masked unit
of ``d_r``. All rows of all degradations of a layer run as *one* extra convolution, scaled per row by
the coefficient of its degradation and added back into their output channels (``index_add``, so rows
of several degradations on one filter sum up). The result equals :func:`adsrt.ads.apply_ads` with the
same ``c`` up to floating-point rounding; ``c`` is a tensor ``[B, k]``, so one batch can carry frames
with different degradations (``[1, k]`` or ``[k]`` broadcast over the batch).

**Coefficient maps** (``local`` mode): ``c`` may also be a map ``[B or 1, k, h, w]``, a coefficient per
degradation and pixel, for a frame whose degradation varies across it. The map covers the frame (any
``h, w``: it is resized to the frame with bilinear interpolation, then padded by edge replication the way
the backbone pads the frame to its multiple), and each branch layer scales its rows by the map resized to
its own output size. The weights stay constant, so this is exact by linearity wherever the map is
constant (a constant map gives global branch mode's output) and a per-pixel blend of the degradations'
branch outputs where it varies (a smooth map keeps the receptive fields of neighbouring pixels alike).

Both granularities work. ``granularity="filter"``: a row is a whole masked filter. ``"kernel"``: a row
is an output filter with at least one masked kernel slice ``W[o, i]``, zero on its other slices; for
ungrouped convolutions the extra convolution also reads only the input channels that some masked slice
uses. So the extra cost is about ``rows / out_channels`` of the layer (about ``k * q`` with filter
granularity; more with kernel granularity, where q% of the slices touch many more than q% of the
filters).

Layers: every ``nn.Conv2d`` (any groups: for grouped and depthwise convolutions each row gathers the
input channels of its own group and the extra convolution runs with one group per row; any padding
mode) and every ``nn.ConvTranspose2d`` with groups 1, as :func:`adsrt.ads.eligible_convs` defines them.
The wrapped model keeps the UM weights it was given (build it with ``bundle.build_um()``); the deltas
are buffers, so ``.to(device, dtype)`` moves and casts them with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adsrt.ads import UnitLayout, eligible_convs, unit_layouts
from adsrt.errors import AdsrtError

__all__ = ["BranchConv", "BranchModel", "side_conv", "to_branch"]


class _CoefficientSlot:
    """The coefficients of the current forward pass, shared by every :class:`BranchConv` of a model.

    :class:`BranchModel` sets it for the duration of one call; a plain attribute (not a buffer), so a
    trace sees ``c`` as the graph input it is.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Tensor | None = None


def side_conv(base: nn.Conv2d | nn.ConvTranspose2d, x: Tensor, weight: Tensor, bias: Tensor | None,
              in_index: Tensor | None, groups: int) -> Tensor:
    """A convolution with ``base``'s geometry (stride, padding and padding mode, dilation, output padding)
    and another ``weight``, over the input channels ``in_index`` (None: all) in ``groups`` groups: the
    extra rows of branch mode and the refittable rows of the swap split (:mod:`adsrt.export.swap_split`)."""
    xs, padding = x, base.padding
    if base.padding_mode != "zeros":
        xs = F.pad(xs, base._reversed_padding_repeated_twice, mode=base.padding_mode)
        padding = 0
    if in_index is not None:
        xs = xs.index_select(1, in_index)
    if isinstance(base, nn.ConvTranspose2d):
        return F.conv_transpose2d(xs, weight, bias, base.stride, base.padding, base.output_padding, 1, base.dilation)
    return F.conv2d(xs, weight, bias, base.stride, padding, base.dilation, groups)


class BranchConv(nn.Module):
    """A convolution with UM weights plus the masked delta rows of every degradation (see module doc)."""

    def __init__(self, base: nn.Conv2d | nn.ConvTranspose2d, layout: UnitLayout,
                 deltas: list[tuple[int, Tensor, Tensor]], slot: _CoefficientSlot) -> None:
        """``deltas``: (degradation index, unit indices, delta values ``[n, unit_numel]``) per degradation."""
        super().__init__()
        self.base = base
        self.transposed = isinstance(base, nn.ConvTranspose2d)
        self._slot = slot
        in_per_group = layout.in_channels
        weights, row_degradation, row_channel, in_used = [], [], [], set()
        for d_index, units, values in deltas:
            units = units.to(torch.int64).cpu()
            dense = torch.zeros(layout.numel, dtype=torch.float32)
            dense[layout.element_offsets(units).reshape(-1)] = values.detach().float().cpu().reshape(-1)
            dense = dense.view(layout.shape)
            if layout.granularity == "filter":
                outs = units
                in_used.update(range(in_per_group))
            else:
                outs = torch.unique(units // in_per_group)
                in_used.update((units % in_per_group).tolist())
            weights.append(dense[:, outs] if self.transposed else dense[outs])
            row_degradation.append(torch.full((len(outs),), d_index, dtype=torch.int64))
            row_channel.append(outs)
        weight = torch.cat(weights, dim=1 if self.transposed else 0)
        channels = torch.cat(row_channel)
        in_index = None
        groups = base.groups
        if groups == 1:
            if len(in_used) < in_per_group:  # kernel granularity: read only the inputs a masked slice uses
                in_index = torch.tensor(sorted(in_used), dtype=torch.int64)
                weight = weight[in_index] if self.transposed else weight[:, in_index]
            self.delta_groups = 1
        else:
            # One group per row: row r reads the in_per_group input channels of its filter's group.
            out_per_group = base.out_channels // groups
            group_of_row = channels // out_per_group
            in_index = (group_of_row[:, None] * in_per_group + torch.arange(in_per_group)).reshape(-1)
            self.delta_groups = len(channels)
        self.register_buffer("delta_weight", weight.contiguous())
        self.register_buffer("row_degradation", torch.cat(row_degradation))
        self.register_buffer("row_channel", channels)
        self.register_buffer("in_index", in_index)
        # Set by use_conv_scatter(): scatter rows into channels with a one-hot 1x1 convolution
        # instead of index_add (exported graphs: Conv is supported everywhere, ScatterElements with
        # reduction="add" is not; the cost is rows x out_channels MACs per pixel).
        self.register_buffer("scatter_weight", None)

    @property
    def rows(self) -> int:
        """Extra output filters this layer computes (all degradations together)."""
        return int(self.row_channel.numel())

    def forward(self, x: Tensor) -> Tensor:
        c = self._slot.value
        if c is None:
            raise AdsrtError("a BranchConv runs inside BranchModel.forward(x, c), which supplies the coefficients")
        y = self.base(x)
        z = side_conv(self.base, x, self.delta_weight.to(x.dtype), None, self.in_index, self.delta_groups)
        if c.dim() == 4:  # a coefficient map at the padded frame's resolution: at this layer's resolution
            c = F.interpolate(c, size=z.shape[-2:], mode="bilinear", align_corners=False)
            z = z * c.index_select(1, self.row_degradation).to(z.dtype)  # [B or 1, rows, h, w]
        else:
            z = z * c.index_select(1, self.row_degradation).to(z.dtype)[:, :, None, None]  # [B or 1, rows]
        if self.scatter_weight is not None:
            return y + F.conv2d(z, self.scatter_weight.to(z.dtype))
        return y.index_add(1, self.row_channel, z)

    def use_conv_scatter(self) -> None:
        """Add the rows into their channels with a one-hot 1x1 convolution (for export, see __init__)."""
        out_channels = self.base.out_channels
        weight = torch.zeros(out_channels, self.rows, 1, 1, device=self.delta_weight.device, dtype=self.delta_weight.dtype)
        weight[self.row_channel.cpu(), torch.arange(self.rows), 0, 0] = 1.0
        self.scatter_weight = weight

    def extra_repr(self) -> str:
        return f"rows={self.rows}, delta_groups={self.delta_groups}, inputs={'all' if self.in_index is None else len(self.in_index)}"


class BranchModel(nn.Module):
    """A model whose masked convolutions are :class:`BranchConv`; ``forward(x, c)`` with ``c`` ``[B, k]``
    (or ``[k]``), or a coefficient map ``[B or 1, k, h, w]`` (module doc)."""

    def __init__(self, model: nn.Module, degradations: list[str], slot: _CoefficientSlot) -> None:
        super().__init__()
        self.model = model
        self.degradations = list(degradations)
        self._slot = slot

    @property
    def k(self) -> int:
        return len(self.degradations)

    def branch_layers(self) -> dict[str, BranchConv]:
        return {name: m for name, m in self.model.named_modules() if isinstance(m, BranchConv)}

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if c.dim() == 1:
            c = c.unsqueeze(0)
        if c.dim() not in (2, 4) or c.shape[1] != self.k or c.shape[0] not in (1, x.shape[0]):
            raise AdsrtError(
                f"coefficients must have shape [B, {self.k}], [{self.k}] or a map [B, {self.k}, h, w] for a batch "
                f"of {x.shape[0]}, got {tuple(c.shape)}"
            )
        if c.dim() == 4:
            c = self._padded_map(c, x)
        self._slot.value = c
        try:
            return self.model(x)
        finally:
            self._slot.value = None

    def _padded_map(self, c: Tensor, x: Tensor) -> Tensor:
        """The map over the frame ``x`` as the backbone pads it: resized to ``x``'s size, then the bottom and
        right padding filled with the edge values (the same symbolic formula as the backbone's, so it
        exports with dynamic sizes)."""
        h, w = x.shape[-2], x.shape[-1]
        c = F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
        m = getattr(getattr(self.model, "config", None), "pad_multiple", 1)
        return F.pad(c, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="replicate")


def to_branch(model: nn.Module, bundle) -> BranchModel:
    """Wrap every convolution of ``model`` that has masked units in ``bundle`` (see the module doc).

    ``model`` must hold the UM weights (``bundle.build_um()``) and is modified in place (its masked
    convolutions become :class:`BranchConv` modules); the returned :class:`BranchModel` owns it.
    """
    convs = eligible_convs(model)
    layouts = unit_layouts(model, bundle.granularity)
    per_layer: dict[str, list[tuple[int, Tensor, Tensor]]] = {}
    for d_index, d in enumerate(bundle.degradations):
        for layer, delta in bundle.deltas.get(d, {}).items():
            if layer not in convs:
                raise AdsrtError(f"bundle/model mismatch: the model has no eligible convolution {layer!r}")
            if len(delta.units):
                per_layer.setdefault(layer, []).append((d_index, delta.units, delta.values))
    slot = _CoefficientSlot()
    for layer, deltas in per_layer.items():
        module_name = layer.rsplit(".", 1)[0] if "." in layer else ""
        if not module_name:
            raise AdsrtError("the model itself is a convolution; wrap it in a container first")
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = BranchConv(convs[layer], layouts[layer], deltas, slot)
        base = convs[layer]
        wrapper.to(device=base.weight.device, dtype=base.weight.dtype)
        setattr(parent, child, wrapper)
    return BranchModel(model, list(bundle.degradations), slot)
