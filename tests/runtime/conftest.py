"""Fixtures of the runtime tests: odd convolution stacks with random masks; every runtime test runs with one
torch thread. The photos, noisy frames, videos, the trained bundle and the TensorRT fixtures are shared with
tests/io, tests/cli and tests/export (tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adsrt.ads import LayerDelta, unit_layouts


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every runtime test runs with one torch thread (``one_torch_thread``, tests/conftest.py)."""


# ----------------------------------------------------------------------------------- odd conv stacks

class OddConvs(nn.Module):
    """Every kind of eligible layer, with odd sizes: plain, strided + dilated, reflect padding, depthwise,
    grouped, 1x1, transposed with output padding."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 7, 3, padding=1),
            nn.Conv2d(7, 6, 3, stride=2, padding=2, dilation=2),
            nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect"),
            nn.Conv2d(6, 12, 3, padding=1, groups=6),  # depthwise with multiplier 2
            nn.Conv2d(12, 8, (3, 1), padding=(1, 0), groups=4),  # grouped
            nn.Conv2d(8, 5, 1),
            nn.ConvTranspose2d(5, 4, 3, stride=2, padding=1, output_padding=1),
            nn.Conv2d(4, 3, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return self.layers(x)


def _odd_case(granularity: str, k: int = 3, seed: int = 0, fraction: float = 0.3):
    """OddConvs with random weights and k random, overlapping masks (a bundle-like namespace)."""
    gen = torch.Generator().manual_seed(seed)
    model = OddConvs()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    layouts = unit_layouts(model, granularity)
    degradations = [f"d{i}" for i in range(k)]
    deltas = {}
    for d_index, d in enumerate(degradations):
        per_layer = {}
        for i, (name, layout) in enumerate(layouts.items()):
            if (i + d_index) % 4 == 3:  # some layers have no delta for some degradations
                continue
            chosen = torch.nonzero(torch.rand(layout.n_units, generator=gen) < fraction).reshape(-1)
            if not len(chosen):
                chosen = torch.randint(layout.n_units, (1,), generator=gen)
            per_layer[name] = LayerDelta(chosen, 0.3 * torch.randn(len(chosen), layout.unit_numel, generator=gen))
        deltas[d] = per_layer
    source = SimpleNamespace(um_state={k_: v.detach().clone() for k_, v in model.state_dict().items()}, deltas=deltas,
                             degradations=degradations, granularity=granularity)
    return model, source


@pytest.fixture
def odd_case():
    return _odd_case
