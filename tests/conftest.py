"""Shared fixtures: tiny bundles with random sparse deltas, real photos from scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from adsrt.arch import ClassifierConfig
from adsrt.bundle import Bundle, synthetic_bundle


def _make_bundle(
    *,
    degradations: tuple[str, ...] = ("noise", "blur", "rain"),
    granularity: str = "kernel",
    q: float = 0.05,
    seed: int = 0,
    with_classifier: bool = True,
) -> Bundle:
    """A valid bundle of the tiny backbone whose deltas mark a random q of the eligible units."""
    classifier = ClassifierConfig(num_classes=len(degradations) + 1, input_size=32, width=4, depth=2)
    bundle = synthetic_bundle(
        "nafnet-tiny",
        degradations,
        q=q,
        granularity=granularity,
        seed=seed,
        delta_scale=0.1,
        perturb_um=0.05,  # NAFNet zero-initialises its layer scales; make every layer matter
        classifier=classifier if with_classifier else None,
    )
    bundle.metrics = {"psnr": {"noise": 30.0}}
    return bundle


@pytest.fixture
def make_bundle():
    return _make_bundle


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo (scikit-image's astronaut, 512x512) cropped to 192x256 to keep tests fast."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[64:256, 128:384])


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Exported graphs and engines go to a per-session folder, never ~/.cache/adsrt."""
    import os

    folder = tmp_path_factory.mktemp("adsrt-cache")
    previous = os.environ.get("ADSRT_CACHE_DIR")
    os.environ["ADSRT_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("ADSRT_CACHE_DIR", None)
    else:
        os.environ["ADSRT_CACHE_DIR"] = previous
