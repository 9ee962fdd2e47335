"""The networks of adsrt: the NAFNet restorer, the degradation classifier, and their cost model.

Core, not training code: loading a bundle builds these, so a camera that only restores never imports
:mod:`adsrt.train`. Configs are frozen dataclasses; :data:`BACKBONES` is a plain dict of named configs.
Nothing registers itself by import and there is no YAML.
"""

from adsrt.arch.classifier import CONTEXT_PREFIXES, ClassifierConfig, DegradationClassifier, build_classifier
from adsrt.arch.cost import ModelCost, count_params, model_cost
from adsrt.arch.nafnet import BACKBONES, NAFNet, NAFNetConfig, build_backbone

__all__ = [
    "BACKBONES",
    "CONTEXT_PREFIXES",
    "ClassifierConfig",
    "DegradationClassifier",
    "ModelCost",
    "NAFNet",
    "NAFNetConfig",
    "build_backbone",
    "build_classifier",
    "count_params",
    "model_cost",
]
