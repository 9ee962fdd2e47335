"""ADS data structures and the reference weight update (plain torch).

A *unit* is the smallest piece of a convolution weight that FAIG-SD scores and a mask selects:

- ``granularity="kernel"``: one kernel slice ``W[o, i]`` (FAIG's convention), ``kh * kw`` values;
- ``granularity="filter"``: one whole output filter ``W[o]`` (hardware friendly), ``C_in/groups * kh * kw``
  values.

Units of a layer are numbered output-major: kernel unit ``u = o * C_in_per_group + i``, filter unit
``u = o``. For ``nn.ConvTranspose2d`` (weight ``[C_in, C_out, kh, kw]``, groups 1) the numbering is the
same in terms of output channel ``o`` and input channel ``i``, so a filter unit is always "what makes
output channel o"; :meth:`UnitLayout.element_offsets` hides the memory layout.

Per degradation ``d`` and layer, a :class:`LayerDelta` holds the masked units (sorted, unique int64
indices: the mask ``M_d`` stored sparsely) and their delta values ``[n_units, unit_numel]``. Storage
therefore grows with ``sum_d |M_d|``, not k times the model. The base values of a unit are its UM
weights, which the bundle already holds.

:func:`apply_ads` is the reference semantics that every fast path (the fused kernels of
``adsrt.kernels``, branch mode, the exporters) is tested against:

    W_ads = W_um + sum_d c_d * scatter(delta_d)        on the masked units; elsewhere W_ads = W_um
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adsrt.errors import AdsrtError

GRANULARITIES = ("kernel", "filter")


@dataclass(frozen=True)
class UnitLayout:
    """How the units of one eligible convolution weight are numbered and where they live in memory."""

    name: str  # parameter name in the model's state dict, e.g. "encoders.0.0.conv1.weight"
    shape: tuple[int, ...]  # weight shape as stored (Conv2d: [O, I/g, kh, kw]; ConvTranspose2d: [I, O, kh, kw])
    transposed: bool
    granularity: str

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise AdsrtError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if len(self.shape) != 4:
            raise AdsrtError(f"{self.name}: expected a 4-D convolution weight, got shape {self.shape}")

    @property
    def out_channels(self) -> int:
        return self.shape[1] if self.transposed else self.shape[0]

    @property
    def in_channels(self) -> int:
        """Input channels per group (what one output filter sees)."""
        return self.shape[0] if self.transposed else self.shape[1]

    @property
    def kernel_numel(self) -> int:
        return self.shape[2] * self.shape[3]

    @property
    def n_units(self) -> int:
        if self.granularity == "filter":
            return self.out_channels
        return self.out_channels * self.in_channels

    @property
    def unit_numel(self) -> int:
        if self.granularity == "filter":
            return self.in_channels * self.kernel_numel
        return self.kernel_numel

    @property
    def numel(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_numel

    def element_offsets(self, units: torch.Tensor) -> torch.Tensor:
        """Flat offsets into the weight of every value of ``units``: int64 ``[len(units), unit_numel]``.

        Row j lists the values of unit ``units[j]`` in the order its delta row stores them
        (input channel major, then kernel row, then kernel column).
        """
        units = units.to(torch.int64).reshape(-1, 1)
        k = self.kernel_numel
        kernel_pos = torch.arange(k, dtype=torch.int64, device=units.device)
        if not self.transposed:
            # Conv2d weights are contiguous per output filter and per kernel slice.
            return units * self.unit_numel + torch.arange(self.unit_numel, device=units.device)
        out_ch = self.out_channels
        if self.granularity == "kernel":
            o, i = units // self.in_channels, units % self.in_channels
            return (i * out_ch + o) * k + kernel_pos
        in_pos = torch.arange(self.in_channels, dtype=torch.int64, device=units.device)
        return ((in_pos[:, None] * out_ch + units[:, :, None]) * k + kernel_pos).reshape(len(units), self.unit_numel)


@dataclass
class LayerDelta:
    """The masked units of one layer for one degradation and their delta values."""

    units: torch.Tensor  # int64 [n], sorted, unique, in [0, n_units)
    values: torch.Tensor  # float32 [n, unit_numel]

    @property
    def n_params(self) -> int:
        return self.values.numel()


# degradation name -> layer (parameter) name -> its delta
Deltas = dict[str, dict[str, LayerDelta]]


def eligible_convs(model: nn.Module) -> dict[str, nn.Module]:
    """ADS-eligible layers, keyed by weight parameter name: every Conv2d (1x1 and depthwise included)
    and every ConvTranspose2d with groups 1. Norms, biases and linear layers are never eligible."""
    layers: dict[str, nn.Module] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.ConvTranspose2d):
            if module.groups != 1:
                raise AdsrtError(f"{module_name}: grouped ConvTranspose2d is not supported by ADS")
        elif not isinstance(module, nn.Conv2d):
            continue
        layers[f"{module_name}.weight" if module_name else "weight"] = module
    return layers


def unit_layouts(model: nn.Module, granularity: str) -> dict[str, UnitLayout]:
    """The unit layout of every eligible layer of ``model``, in module order."""
    return {
        name: UnitLayout(name, tuple(m.weight.shape), isinstance(m, nn.ConvTranspose2d), granularity)
        for name, m in eligible_convs(model).items()
    }


def gather_units(weight: torch.Tensor, layout: UnitLayout, units: torch.Tensor) -> torch.Tensor:
    """Values of ``units`` in ``weight``, as ``[len(units), unit_numel]`` (a copy)."""
    return weight.reshape(-1)[layout.element_offsets(units.to(weight.device))]


def extract_delta(
    layout: UnitLayout, um_weight: torch.Tensor, target_weight: torch.Tensor, units: torch.Tensor
) -> LayerDelta:
    """delta_d on the masked ``units``: target (IM) minus UM values, float32."""
    if um_weight.shape != target_weight.shape or tuple(um_weight.shape) != layout.shape:
        raise AdsrtError(
            f"{layout.name}: weight shapes differ (UM {tuple(um_weight.shape)}, target "
            f"{tuple(target_weight.shape)}, layout {layout.shape})"
        )
    units = torch.unique(units.to(torch.int64).cpu())  # sorted and unique
    diff = target_weight.detach().float().cpu() - um_weight.detach().float().cpu()
    return LayerDelta(units=units, values=gather_units(diff, layout, units).contiguous())


def check_coefficients(c: torch.Tensor | Sequence[float], k: int) -> torch.Tensor:
    """Validate blending coefficients: exactly k finite values (non-finite ones are refused, not clamped,
    so a broken classifier output never silently reaches the weights). Returns float32 on the CPU."""
    c = torch.as_tensor(c, dtype=torch.float32).detach().cpu().reshape(-1)
    if c.numel() != k:
        raise AdsrtError(f"expected {k} coefficients (one per degradation), got {c.numel()}")
    if not torch.isfinite(c).all():
        raise AdsrtError(f"coefficients must be finite, got {c.tolist()}")
    return c


def ads_weights(
    um_state: Mapping[str, torch.Tensor],
    layouts: Mapping[str, UnitLayout],
    deltas: Deltas,
    degradations: Sequence[str],
    c: torch.Tensor | Sequence[float],
) -> dict[str, torch.Tensor]:
    """The blended weights of every layer that has at least one masked unit (fp32, on the CPU)."""
    c = check_coefficients(c, len(degradations))
    out: dict[str, torch.Tensor] = {}
    for d_index, name in enumerate(degradations):
        for layer, delta in deltas.get(name, {}).items():
            if layer not in out:
                out[layer] = um_state[layer].detach().float().cpu().clone()
            flat = out[layer].reshape(-1)
            flat.index_add_(0, layouts[layer].element_offsets(delta.units).reshape(-1), c[d_index] * delta.values.reshape(-1))
    return out


def apply_ads(model: nn.Module, bundle, c: torch.Tensor | Sequence[float]) -> nn.Module:
    """Reference ADS update: set ``model``'s masked layers to ``W_um + sum_d c_d * delta_d``.

    ``bundle`` is an :class:`adsrt.bundle.Bundle` (UM weights, deltas, degradation order); ``c`` holds
    one coefficient per degradation in the bundle's order (drop the classifier's clean/unknown class).
    Layers without masked units are left as they are (load the UM weights into ``model`` first). The
    result does not depend on what the masked layers held before, so calls can be repeated with new c.
    """
    layouts = unit_layouts(model, bundle.granularity)
    missing = {layer for per_d in bundle.deltas.values() for layer in per_d} - layouts.keys()
    if missing:
        raise AdsrtError(f"model has no eligible layers named {sorted(missing)[:5]} (bundle/model mismatch)")
    blended = ads_weights(bundle.um_state, layouts, bundle.deltas, bundle.degradations, c)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for layer, weight in blended.items():
            params[layer].copy_(weight.to(params[layer].device, params[layer].dtype))
    return model
