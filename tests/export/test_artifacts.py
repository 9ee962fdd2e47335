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


def test_tensorrt_engine_hands_the_request_to_the_engine_cache(bundle, tmp_path, monkeypatch, onnx_with_metadata):
    """adsrt.export.artifacts.tensorrt_engine (what the runtime's "tensorrt" request reaches): the digest, the
    graph (a user's, or the cached TensorRT graph), its refit names, rebuild, environment and cache root."""
    import adsrt.export.artifacts as artifacts
    from adsrt.runtime.artifacts import exported
    from adsrt.runtime.tensorrt_engine import EngineConfig, EngineEnvironment

    calls = []

    def fake_build_or_load(digest, onnx_path, config, cache, rebuild=False, *, refit_names=(), environment=None):
        calls.append(dict(digest=digest, onnx=Path(onnx_path), config=config, root=cache.root, rebuild=rebuild,
                          refit=list(refit_names), environment=environment))
        return SimpleNamespace(engine="engine", path=Path(onnx_path).with_suffix(".engine"), built=True)

    monkeypatch.setattr(artifacts, "build_or_load_engine", fake_build_or_load)
    graph = onnx_with_metadata(tmp_path / "user.onnx", **{"adsrt.refit": json.dumps({"a.weight": "ads.a.weight"})})
    env = EngineEnvironment("10.3.0", "Orin", "8.7")
    config = EngineConfig(mode="swap", precision="fp16")
    loaded = exported("tensorrt", bundle, config=config, onnx_path=graph, cache_dir="~/adsrt-cache", rebuild=True,
                      environment=env)
    assert loaded.engine == "engine"
    (call,) = calls
    assert call["digest"] == bundle.digest() and call["onnx"] == graph and call["config"] == config
    assert call["refit"] == ["ads.a.weight"]  # read from the graph when the caller gives none
    assert call["rebuild"] is True and call["environment"] == env
    assert call["root"] == Path("~/adsrt-cache").expanduser()  # "~" means home, for graphs and engines alike
    # without a graph: the cached TensorRT graph of config.mode is exported first, then built
    monkeypatch.setattr(artifacts, "tensorrt_graph", lambda b, mode, precision, cache_dir, **kw: graph)
    exported("tensorrt", bundle, config=EngineConfig(mode="branch"), refit_names=[], digest="d" * 64)
    assert calls[-1]["digest"] == "d" * 64 and calls[-1]["onnx"] == graph and calls[-1]["refit"] == []
