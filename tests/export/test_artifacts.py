"""The exporter's artifacts for the runtime (:mod:`adsrt.export.artifacts`): the ONNX graph a TensorRT engine
is built from, reused while its metadata matches the bundle (``bundle``: tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from adsrt.export.artifacts import tensorrt_graph
from adsrt.export.engine_cache import EngineCache


def test_tensorrt_graph_reuses_matching_graphs(bundle, tmp_path, monkeypatch, onnx_with_metadata):
    onnx_export = pytest.importorskip("adsrt.export.onnx_export", reason="adsrt.export.onnx_export not importable")

    exports = []

    def fake_export(b, out, config):
        exports.append((config.mode, config.precision))
        onnx_with_metadata(Path(out), **{"adsrt.mode": config.mode, "adsrt.precision": config.precision,
                                          "adsrt.bundle_digest": b.digest(), "adsrt.fused_classifier": "false",
                                          "adsrt.split_max": json.dumps(config.split_max)})
        return SimpleNamespace(path=Path(out))

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    cache = EngineCache(tmp_path)
    path = tensorrt_graph(bundle, "swap", "fp16", cache.root)
    assert path.parent == tmp_path / "onnx" / bundle.digest()[:16] and path.name.startswith("tensorrt-swap-fp16-")
    assert tensorrt_graph(bundle, "swap", "fp16", cache.root) == path and exports == [("swap", "fp16")]
    assert tensorrt_graph(bundle, "swap", "fp16", cache.root, rebuild=True) == path and len(exports) == 2
    onnx_with_metadata(path, **{"adsrt.mode": "swap", "adsrt.precision": "fp16", "adsrt.bundle_digest": "other"})
    tensorrt_graph(bundle, "swap", "fp16", cache.root)  # stale metadata: exported again
    assert len(exports) == 3
    path.write_bytes(b"truncated")
    tensorrt_graph(bundle, "swap", "fp16", cache.root)  # unreadable: exported again
    assert len(exports) == 4
