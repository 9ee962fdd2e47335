"""Fixtures of the kernel tests: backends and devices (with their skip reasons), small conv models with
random overlapping masks, and the dense torch reference every fused update is checked against."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adsrt.ads import LayerDelta, UnitLayout, unit_layouts
from adsrt.kernels.ads_update import HAS_TRITON

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (kind, in_channels, out_channels, kernel, groups); odd sizes on purpose.
LAYER_SETS = {
    "one_odd_conv": [("conv", 5, 3, (3, 3), 1)],
    "transposed": [("convT", 3, 5, (3, 2), 1)],
    "many": [
        ("conv", 3, 7, (3, 3), 1),
        ("conv", 7, 7, (3, 3), 7),  # depthwise
        ("conv", 7, 5, (1, 1), 1),  # pointwise
        ("convT", 5, 3, (2, 2), 1),
        ("conv", 3, 6, (5, 3), 1),
        ("conv", 6, 4, (3, 3), 2),  # grouped
    ],
}


@pytest.fixture(params=["torch", "triton"])
def backend(request) -> str:
    if request.param == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    return request.param


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, backend) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend == "triton" and request.param == "cpu" and not INTERPRET:
        pytest.skip("Triton runs CPU tensors only under TRITON_INTERPRET=1 (make test sets it where no GPU is visible)")
    return torch.device(request.param)


def _skip_unsupported(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16 and (INTERPRET or device.type == "cpu"):
        pytest.skip("the Triton interpreter has no bf16 (bf16 is checked on the torch path and on real GPUs)")


@pytest.fixture
def skip_unsupported():
    return _skip_unsupported


def _module(kind: str, cin: int, cout: int, kernel: tuple[int, int], groups: int) -> nn.Module:
    if kind == "conv":
        return nn.Conv2d(cin, cout, kernel, groups=groups, padding=(kernel[0] // 2, kernel[1] // 2))
    return nn.ConvTranspose2d(cin, cout, kernel, stride=2)


def _build_case(layers: str, k: int, granularity: str, seed: int = 0):
    """A conv model and a bundle-like source whose k masks overlap.

    Each degradation masks a random ~40% of each layer's units (so masks overlap), unit 0 of the first
    layer is masked by every degradation (a row with k entries), and the last layer has no delta for
    odd degradations (layers may be missing per degradation)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(*(_module(*spec) for spec in LAYER_SETS[layers]))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    layouts = unit_layouts(model, granularity)
    names = list(layouts)
    degradations = [f"d{i}" for i in range(k)]
    deltas = {}
    for d_index, d in enumerate(degradations):
        per_layer = {}
        for i, name in enumerate(names):
            if d_index % 2 == 1 and i == len(names) - 1 and len(names) > 1:
                continue
            n = layouts[name].n_units
            chosen = torch.nonzero(torch.rand(n, generator=gen) < 0.4).reshape(-1)
            if i == 0:
                chosen = torch.unique(torch.cat([chosen, torch.tensor([0])]))
            if len(chosen):
                values = 0.5 * torch.randn(len(chosen), layouts[name].unit_numel, generator=gen)
                per_layer[name] = LayerDelta(units=chosen, values=values)
        deltas[d] = per_layer
    source = SimpleNamespace(
        um_state={name: t.detach().clone() for name, t in model.state_dict().items()},
        deltas=deltas,
        degradations=degradations,
        granularity=granularity,
    )
    return model, source


@pytest.fixture
def make_case():
    return _build_case


def unit_slice(weight: torch.Tensor, layout: UnitLayout, unit: int) -> torch.Tensor:
    """A unit by plain indexing, from the definitions (not from element offsets)."""
    if layout.granularity == "filter":
        return weight[:, unit] if layout.transposed else weight[unit]
    o, i = divmod(unit, layout.in_channels)
    return weight[i, o] if layout.transposed else weight[o, i]


def _dense_reference(model: nn.Module, source, c) -> dict[str, torch.Tensor]:
    """W_um + sum_d c_d * dense(delta_d) * M_d per eligible layer, fp32 on the CPU."""
    c = [float(v) for v in c]
    layouts = unit_layouts(model, source.granularity)
    out = {name: source.um_state[name].detach().float().cpu().clone() for name in layouts}
    for d_index, d in enumerate(source.degradations):
        for layer, delta in source.deltas.get(d, {}).items():
            layout = layouts[layer]
            dense = torch.zeros(layout.shape)
            mask = torch.zeros(layout.shape, dtype=torch.bool)
            for row, unit in enumerate(delta.units.tolist()):
                piece = unit_slice(dense, layout, unit)
                piece.copy_(delta.values[row].reshape(piece.shape))
                unit_slice(mask, layout, unit).fill_(True)
            out[layer] += c[d_index] * dense * mask
    return out


@pytest.fixture
def dense_reference():
    return _dense_reference
