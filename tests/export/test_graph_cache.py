"""The ONNX graph cache (:func:`adsrt.export.graph_cache.cached_graph`) behind the onnxruntime and tensorrt
backends: a matching graph is reused, a stale or corrupt one is exported again."""

from __future__ import annotations

import logging

import pytest

from adsrt.export.graph_cache import cached_graph
from adsrt.export.onnx_export import OnnxExportConfig, export_onnx

pytestmark = pytest.mark.slow  # exports ONNX graphs


def test_graph_cache_reuses_rebuilds_stale_and_corrupt(bundle_file, tmp_path, make_bundle, caplog):
    from adsrt.bundle import load_bundle

    bundle = load_bundle(bundle_file)
    first = cached_graph(bundle, "um", "fp32", tmp_path)
    stamp = first.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert cached_graph(bundle, "um", "fp32", tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert "cached graph" in caplog.text
    # another bundle's graph at this path (e.g. a copied cache): stale, exported again
    export_onnx(make_bundle(), first, OnnxExportConfig(mode="um"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cached_graph(bundle, "um", "fp32", tmp_path)
    assert "stale" in caplog.text and "bundle_digest" in caplog.text
    first.write_bytes(b"not a protobuf")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        path = cached_graph(bundle, "um", "fp32", tmp_path)
    assert "stale" in caplog.text and path.stat().st_size > 1000
