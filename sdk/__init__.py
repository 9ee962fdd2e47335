"""adsrt: all-in-one image and video restoration for edge devices.

One small CNN (the unified model, UM) restores frames with an unknown degradation; per degradation,
a sparse delta on the ~3% of convolution units that matter most (chosen by FAIG-SD) is blended into
the weights with the probabilities of a degradation classifier:

    theta_ads = theta_um + sum_d c_d * (delta_d * M_d)

Runtime API: ``adsrt.load(bundle, backend=..., device=..., precision=..., mode=...)`` returns a
:class:`adsrt.runtime.restorer.Restorer` with ``restore``, ``classify``, ``stream`` and ``timings``.

Layers, every import pointing down (``tests/test_layering.py`` enforces it): ``adsrt.cli``; ``adsrt.train``,
``adsrt.export``, ``adsrt.bench``; ``adsrt.io``; ``adsrt.runtime``; ``adsrt.kernels``; the core
(``adsrt.errors``, ``fileio``, ``imageio``, ``metrics``, ``ads``, ``bundle``, ``arch``). This module is the
public facade above them all.
"""

from adsrt.errors import AdsrtError
from adsrt.version import __version__

__all__ = ["AdsrtError", "Restorer", "RestorerConfig", "__version__", "load"]

# The runtime API loads lazily, so ``import adsrt`` (and ``adsrt --version``) does not import torch.
_LAZY = {"load": "adsrt.runtime.restorer", "Restorer": "adsrt.runtime.restorer", "RestorerConfig": "adsrt.runtime.restorer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adsrt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
