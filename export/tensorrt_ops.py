"""Will the TensorRT ONNX parser take this graph? A check that runs without TensorRT.

TensorRT cannot be installed on the development and CI machines, so every exported graph is checked
against the operators and attributes the TensorRT 10.x ONNX parser documents as supported
(onnx-tensorrt ``docs/operators.md``, TensorRT 10.0-10.15: opsets 9-20). The list below is deliberately
narrow: the operators a CNN restorer and classifier need, each with the restrictions that matter here.
An operator outside it is reported even if some TensorRT version might parse it: widening the list is
a decision to take with a TensorRT build at hand, not by default.

:func:`tensorrt_compatibility` returns the problems (an empty list means the graph passes).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MAX_OPSET", "MIN_OPSET", "SUPPORTED_OPS", "tensorrt_compatibility"]

MIN_OPSET, MAX_OPSET = 9, 20  # TensorRT 10.0 parses opsets 9..20 (later 10.x keep that floor)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _resize(node) -> str | None:
    if _attr(node, "antialias", 0):
        return "antialias=1 (TensorRT's resize has no antialiasing)"
    mode = _text(_attr(node, "mode", b"nearest"))
    if mode not in ("nearest", "linear", "cubic"):
        return f"mode={mode}"
    ctm = _text(_attr(node, "coordinate_transformation_mode", b"half_pixel"))
    if ctm == "tf_crop_and_resize":
        return "coordinate_transformation_mode=tf_crop_and_resize"
    if _attr(node, "keep_aspect_ratio_policy") not in (None, b"stretch", "stretch"):
        return "keep_aspect_ratio_policy other than stretch"
    return None


def _pad(node) -> str | None:
    mode = _text(_attr(node, "mode", b"constant"))
    return None if mode in ("constant", "reflect", "edge") else f"mode={mode}"


def _conv(node) -> str | None:
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and len(kernel) not in (2, 3):
        return f"{len(kernel)}-D kernel (TensorRT: 2-D or 3-D convolutions)"
    return None


def _reduce(node) -> str | None:
    if _attr(node, "noop_with_empty_axes", 0):
        return "noop_with_empty_axes=1"
    return None


# op -> restriction check (None: no restriction that our exporter could violate)
SUPPORTED_OPS: dict[str, Callable | None] = {
    "Add": None, "Sub": None, "Mul": None, "Div": None, "Mod": None, "Pow": None, "Sqrt": None,
    "Neg": None, "Abs": None, "Exp": None, "Log": None, "Erf": None, "Min": None, "Max": None,
    "Clip": None, "Relu": None, "LeakyRelu": None, "PRelu": None, "Sigmoid": None, "Tanh": None,
    "HardSigmoid": None, "HardSwish": None, "Softmax": None, "Gelu": None,
    "Conv": _conv, "ConvTranspose": _conv, "MatMul": None, "Gemm": None,
    "BatchNormalization": None, "InstanceNormalization": None, "LayerNormalization": None,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce,
    "GlobalAveragePool": None, "AveragePool": None, "MaxPool": None,
    "Resize": _resize, "Pad": _pad, "DepthToSpace": None, "SpaceToDepth": None,
    "Concat": None, "Split": None, "Slice": None, "Gather": None, "Reshape": None, "Flatten": None,
    "Transpose": None, "Squeeze": None, "Unsqueeze": None, "Expand": None, "Tile": None,
    "Shape": None, "Cast": None, "Constant": None, "ConstantOfShape": None, "Identity": None,
    "Range": None, "Where": None, "Equal": None, "Less": None, "Greater": None, "Not": None,
    "And": None, "Or": None, "Floor": None, "Ceil": None, "Round": None,
}

# ONNX TensorProto data types TensorRT 10 takes inside a network
_DTYPE_OK = {1: "FLOAT", 10: "FLOAT16", 16: "BFLOAT16", 6: "INT32", 7: "INT64", 9: "BOOL", 3: "INT8"}


def tensorrt_compatibility(model_proto) -> list[str]:
    """Problems the TensorRT 10.x ONNX parser would have with ``model_proto`` (empty list: none)."""
    problems: list[str] = []
    opsets = {o.domain or "ai.onnx": o.version for o in model_proto.opset_import}
    opset = opsets.get("ai.onnx")
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset}: TensorRT 10 parses opsets {MIN_OPSET}-{MAX_OPSET}")
    extra = sorted(d for d in opsets if d != "ai.onnx")
    if extra:
        problems.append(f"custom operator domains {extra} (TensorRT would need plugins)")
    graph = model_proto.graph
    if model_proto.functions:
        problems.append(f"model-local functions {[f.name for f in model_proto.functions][:3]} (inline them)")
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or node.op_type}: operator {node.domain}::{node.op_type}")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{node.name or node.op_type}: operator {node.op_type} is not on the TensorRT list")
            continue
        check = SUPPORTED_OPS[node.op_type]
        why = check(node) if check else None
        if why:
            problems.append(f"{node.name or node.op_type}: {node.op_type} with {why}")
    for init in graph.initializer:
        if init.data_type not in _DTYPE_OK:
            problems.append(f"initializer {init.name}: data type {init.data_type} (TensorRT: {sorted(_DTYPE_OK.values())})")
    for value in list(graph.input) + list(graph.output):
        dtype = value.type.tensor_type.elem_type
        if dtype not in _DTYPE_OK:
            problems.append(f"graph I/O {value.name}: data type {dtype}")
    return problems
