"""Shared fixtures: tiny bundles with random sparse deltas, real photos from scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adsrt.ads import LayerDelta, unit_layouts
from adsrt.bundle import Bundle, InputContract
from adsrt.train.models import BACKBONES, ClassifierConfig, build_backbone, build_classifier


def _make_bundle(
    *,
    degradations: tuple[str, ...] = ("noise", "blur", "rain"),
    granularity: str = "kernel",
    q: float = 0.05,
    seed: int = 0,
    with_classifier: bool = True,
) -> Bundle:
    """A valid bundle of the tiny backbone whose deltas mark a random q of the eligible units."""
    torch.manual_seed(seed)
    config = BACKBONES["nafnet-tiny"]
    model = build_backbone(config)
    with torch.no_grad():  # NAFNet zero-initialises its layer scales; make every layer matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    layouts = unit_layouts(model, granularity)
    names = list(layouts)
    offsets = np.cumsum([0] + [layouts[n].n_units for n in names])
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for d in degradations:
        # Global top-q like FAIG-SD, here on random scores: layers get uneven shares, some none.
        chosen = torch.randperm(int(offsets[-1]), generator=gen)[: max(1, int(q * offsets[-1]))]
        per_layer = {}
        for i, name in enumerate(names):
            sel = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - int(offsets[i])
            if len(sel):
                units = torch.sort(sel).values
                values = 0.1 * torch.randn(len(units), layouts[name].unit_numel, generator=gen)
                per_layer[name] = LayerDelta(units=units, values=values)
        deltas[d] = per_layer
    classifier = ClassifierConfig(num_classes=len(degradations) + 1, input_size=32, width=4, depth=2)
    return Bundle(
        backbone=config,
        um_state={k: v.clone() for k, v in model.state_dict().items()},
        degradations=list(degradations),
        granularity=granularity,
        q=q,
        deltas=deltas,
        classifier=classifier if with_classifier else None,
        classifier_state=build_classifier(classifier).state_dict() if with_classifier else None,
        input=InputContract(pad_multiple=config.pad_multiple),
        provenance={"made_by": "tests/conftest.py", "seed": seed},
        metrics={"psnr": {"noise": 30.0}},
    )


@pytest.fixture
def make_bundle():
    return _make_bundle


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo (scikit-image's astronaut, 512x512) cropped to 192x256 to keep tests fast."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[64:256, 128:384])
