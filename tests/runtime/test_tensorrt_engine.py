"""The runtime's TensorRT pieces (:mod:`adsrt.runtime.tensorrt_engine`), everywhere (no TensorRT, no GPU):
why TensorRT is unavailable, version parsing, fast FP16 by compute capability, engine config validation."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from adsrt.errors import AdsrtError, BackendError
from adsrt.runtime.tensorrt_engine import (
    EngineConfig,
    has_fast_fp16,
    tensorrt_unavailable_reason,
    version_tuple,
)

# --------------------------------------------------------------------------------------------- availability


def test_unavailable_reason_checks_version_then_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="8.6.1"))
    assert "too old" in tensorrt_unavailable_reason()
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA" in tensorrt_unavailable_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tensorrt_unavailable_reason() is None


@pytest.mark.parametrize(("text", "expected"), [("10.3.0.30", (10, 3, 0, 30)), ("11.4.1", (11, 4, 1)),
                                                ("10.8.0rc1", (10, 8, 0)), ("10.2", (10, 2)), ((10, 3), (10, 3))])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_version_tuple_rejects_garbage():
    with pytest.raises(AdsrtError):
        version_tuple("unknown")


@pytest.mark.parametrize(("capability", "fast"), [((8, 7), True), ((7, 2), True), ((9, 0), True), ((6, 1), False),
                                                  ((6, 2), True), ((5, 3), True), ((5, 2), False), ((6, 0), True)])
def test_has_fast_fp16(capability, fast):
    assert has_fast_fp16(capability) is fast


# --------------------------------------------------------------------------------------------------- config


def test_engine_config_defaults_and_profile():
    config = EngineConfig(min_shape=[1, 16, 16], opt_shape=(1, 64, 96), max_shape=(2, 128, 128))
    assert config.min_shape == (1, 16, 16) and isinstance(config.min_shape, tuple)
    assert config.profile() == {"min": [1, 16, 16], "opt": [1, 64, 96], "max": [2, 128, 128]}
    assert config.refittable and not EngineConfig(mode="branch").refittable
    assert config.contains(2, 32, 128) and not config.contains(3, 32, 32) and not config.contains(1, 8, 32)
    assert json.loads(json.dumps(config.to_dict()))["mode"] == "swap"


@pytest.mark.parametrize(("changes", "message"), [
    ({"mode": "turbo"}, "mode must be one of"),
    ({"precision": "bf16"}, "precision must be one of"),
    ({"precision": "int8"}, "strongly typed"),
    ({"min_shape": (0, 16, 16)}, "three positive integers"),
    ({"min_shape": (1, 16)}, "three positive integers"),
    ({"max_shape": "1x16x16"}, "three positive integers"),
    ({"opt_shape": (1, 16.5, 16)}, "three positive integers"),
    ({"opt_shape": (1, 2048, 64)}, "height must satisfy min <= opt <= max"),
    ({"min_shape": (4, 16, 16)}, "batch must satisfy"),
    ({"workspace_mb": 0}, "workspace_mb"),
    ({"workspace_mb": 1.5}, "workspace_mb"),
    ({"workspace_mb": True}, "workspace_mb"),
    ({"builder_optimization_level": 6}, "builder_optimization_level"),
    ({"builder_optimization_level": -1}, "builder_optimization_level"),
    ({"timing_cache": ""}, "timing_cache"),
])
def test_engine_config_validation(changes, message):
    with pytest.raises(BackendError, match=message):
        EngineConfig(**changes)
