"""adsrt: all-in-one image and video restoration for edge devices.

One small CNN (the unified model, UM) restores frames with an unknown degradation; per degradation,
a sparse delta on the ~3% of convolution units that matter most (chosen by FAIG-SD) is blended into
the weights with the probabilities of a degradation classifier:

    theta_ads = theta_um + sum_d c_d * (delta_d * M_d)

The import package is laid out as ``adsrt`` (runtime, bundle, CLI), ``adsrt.kernels`` (fused ADS
update), ``adsrt.export`` (ONNX / TensorRT) and ``adsrt.train`` (degradations, data, models,
training).
"""

from importlib.metadata import PackageNotFoundError, version

from adsrt.errors import AdsrtError

try:
    __version__ = version("adsrt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["AdsrtError", "__version__"]
