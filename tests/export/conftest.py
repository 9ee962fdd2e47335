"""Fixtures of the export tests (the tiny ``bundle``, ``trt_cache`` and ``trt_profile`` are shared with
tests/runtime: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _onnx_with_metadata(path: Path, doc: str = "", **meta: str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, doc_string=doc)
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def onnx_with_metadata():
    """``onnx_with_metadata(path, doc="", **meta)``: a tiny ONNX file (an Identity graph) with these model
    properties (skips the test where onnx is missing)."""
    return _onnx_with_metadata
