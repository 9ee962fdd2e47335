"""Reading exported ONNX graphs in the runtime: load with a clear error, metadata, overridable weights.

The graphs are written by :mod:`adsrt.export.onnx_export`; their ``metadata_props`` (``adsrt.mode``,
``adsrt.precision``, ``adsrt.bundle_digest``, ``adsrt.refit``, ...) say what they are, so the runtime
checks a graph against the bundle before running it.
"""

from __future__ import annotations

import os
from pathlib import Path

from adsrt.errors import AdsrtError, BackendError

__all__ = ["GRAPH_PRECISIONS", "expose_initializers", "graph_metadata", "load_onnx"]

GRAPH_PRECISIONS = ("fp32", "fp16")  # graph I/O is float32 at both; fp16 casts inside the graph


def graph_metadata(model_proto) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model as a dict."""
    return {p.key: p.value for p in model_proto.metadata_props}


def load_onnx(path: str | os.PathLike):
    """Load an ONNX file with a clear error for a missing or corrupt file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise AdsrtError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise AdsrtError(f"{path}: not a readable ONNX model ({exc})") from exc


def expose_initializers(model_proto, names: list[str]):
    """Declare initializers ``names`` as graph inputs too, so a run may override them."""
    from onnx import helper

    inits = {i.name: i for i in model_proto.graph.initializer}
    existing = {i.name for i in model_proto.graph.input}
    for name in names:
        if name not in inits:
            raise BackendError(f"swap graph has no refittable initializer {name!r}: export it again")
        if name not in existing:
            init = inits[name]
            model_proto.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    return model_proto
