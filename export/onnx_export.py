"""ONNX export of a bundle: UM, swap and branch restorers, the classifier, and the fused image-to-image graph.

    from adsrt.export.onnx_export import OnnxExportConfig, export_onnx
    result = export_onnx(bundle, "model.onnx", OnnxExportConfig(mode="branch", precision="fp16"))

Graphs (``mode``):

==============  ====================  ========================  =================================
mode            inputs                outputs                   weights
==============  ====================  ========================  =================================
``um``          ``x`` [B, 3, H, W]    ``y`` [B, 3, H, W]        the UM, constant
``swap``        ``x``                 ``y``                     UM + a small conv per masked layer
                                                                (initializer ``ads.<layer>``, see
                                                                :mod:`adsrt.export.swap_split`)
``branch``      ``x``, ``c`` [B, k]   ``y``                     constant: UM + delta branches
``branch`` +    ``x``                 ``y``, ``probs`` [B, k+1] constant; c = softmax(classifier)[:k]
 fuse
``local``       ``x``, ``c``          ``y``                     as branch; ``c`` is a coefficient map
                [B, k, h, w]                                    over the frame (any h, w; resized
                                                                inside, :mod:`adsrt.runtime.branch`)
``classifier``  ``x``                 ``logits`` [B, k+1]       the degradation classifier
==============  ====================  ========================  =================================

B, H and W (and the map's h and w) are dynamic. I/O is float32 in the bundle's value range and channel order; ``precision="fp16"``
casts to half right after the inputs and back to float32 at the outputs, so FP16 is expressed in the
graph (TensorRT 11 is strongly typed and has no FP16 builder flag). A swap graph as written computes the
UM (its ``ads.*`` initializers hold the UM rows); a runtime writes ``W_um[rows] + sum_d c_d delta_d[rows]``
into them (TensorRT refit, or ONNX Runtime initializers overridden as inputs).

Export path: an export-only wrapper module -> ``torch.onnx.export(..., dynamo=True)`` (the exporter
current PyTorch recommends; it needs ``onnxscript``) with dynamic batch/height/width -> the swap
initializers renamed to their documented names -> onnxsim (names of the refittable initializers checked
after it) -> ``onnx.checker`` -> model metadata (``adsrt.*`` keys below) -> atomic write. Parity with
torch under ONNX Runtime is :func:`adsrt.export.parity.check_parity`.

Metadata (``metadata_props``): ``adsrt.mode``, ``adsrt.precision``, ``adsrt.fused_classifier``,
``adsrt.bundle_digest`` (:meth:`adsrt.bundle.Bundle.digest`), ``adsrt.degradations`` (JSON list),
``adsrt.refit`` (JSON {bundle layer: initializer name}, swap only), ``adsrt.input`` (JSON input contract).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from adsrt.errors import AdsrtError, OutputError
from adsrt.export.swap_split import to_swap_split
from adsrt.fileio import check_writable_folder
from adsrt.runtime.backends import PRECISIONS
from adsrt.runtime.onnx_graph import GRAPH_PRECISIONS
from adsrt.runtime.refit import SPLIT_MAX, SwapRows

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_MODES",
    "ExportResult",
    "OnnxExportConfig",
    "build_export_module",
    "export_onnx",
]

EXPORT_MODES = ("swap", "branch", "local", "um", "classifier")
EXPORT_PRECISIONS = {name: PRECISIONS[name] for name in GRAPH_PRECISIONS}  # graphs are fp32 or fp16 inside
MIN_SIDE, MAX_SIDE, MAX_BATCH = 16, 8192, 64
_ADS_PARAM = "ads_weight"


@dataclass
class OnnxExportConfig:
    """What :func:`export_onnx` writes."""

    mode: str = "swap"  # swap | branch | local | um | classifier
    precision: str = "fp32"  # fp32 | fp16 (inside the graph; I/O stays float32)
    fuse_classifier: bool = False  # branch only: image -> restored image, the classifier inside
    temperature: float | None = None  # fused graph: softmax temperature; None: the bundle's calibrated one
    split_max: float = SPLIT_MAX  # swap: split a layer when at most this share of its filters is masked
    opset: int = 18
    simplify: bool = True  # onnxsim
    sample_size: tuple[int, int] = (80, 112)  # (H, W) of the tracing example; any size works after export

    def check(self) -> None:
        if self.mode not in EXPORT_MODES:
            raise AdsrtError(f"export mode must be one of {EXPORT_MODES}, got {self.mode!r}")
        if self.precision not in EXPORT_PRECISIONS:
            raise AdsrtError(f"export precision must be one of {sorted(EXPORT_PRECISIONS)}, got {self.precision!r}")
        if self.fuse_classifier and self.mode != "branch":
            raise AdsrtError("--fuse-classifier needs --mode branch (c comes from the classifier inside the graph)")
        if self.temperature is not None and not self.temperature > 0:
            raise AdsrtError(f"temperature must be > 0, got {self.temperature}")
        if not 17 <= self.opset <= 23:
            raise AdsrtError(f"opset must be in 17..23, got {self.opset}")


@dataclass
class ExportResult:
    path: Path
    mode: str
    precision: str
    fused_classifier: bool
    inputs: list[str]
    outputs: list[str]
    refit_names: dict[str, str] = field(default_factory=dict)  # bundle layer -> initializer name
    nodes: int = 0
    bytes: int = 0


# ------------------------------------------------------------------------------------ export modules


class _Precision(nn.Module):
    """float32 in -> ``dtype`` inside -> float32 out."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def inner(self, t: Tensor) -> Tensor:
        return t if self.dtype == torch.float32 else t.to(self.dtype)

    @staticmethod
    def outer(t: Tensor) -> Tensor:
        return t.float()


class SingleInputGraph(_Precision):
    """``x -> one output``: the UM or swap-split restorer (``y``), or the classifier (``logits``)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__(dtype)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.model(self.inner(x)))


class BranchGraph(_Precision):
    """``(x, c) -> y`` with constant weights."""

    def __init__(self, branch: nn.Module, dtype: torch.dtype) -> None:
        super().__init__(dtype)
        self.branch = branch

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.outer(self.branch(self.inner(x), self.inner(c)))


class FusedGraph(_Precision):
    """``x -> (y, probs)``: classifier, ``c = softmax(logits / T)[:, :k]``, branch restorer."""

    def __init__(self, classifier: nn.Module, branch: nn.Module, k: int, temperature: float,
                 dtype: torch.dtype) -> None:
        super().__init__(dtype)
        self.classifier, self.branch, self.k, self.temperature = classifier, branch, k, temperature

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xi = self.inner(x)
        # softmax in float32: the probabilities are compared with thresholds and smoothed downstream
        probs = torch.softmax(self.classifier(xi).float() / self.temperature, dim=1)
        y = self.branch(xi, self.inner(probs[:, : self.k]))
        return self.outer(y), probs


def build_export_module(bundle, config: OnnxExportConfig) -> tuple[nn.Module, list[str], list[str], dict[str, SwapRows]]:
    """The export-only wrapper for ``config``: (module, input names, output names, refit rows by layer)."""
    config.check()
    dtype = EXPORT_PRECISIONS[config.precision]
    refit: dict[str, SwapRows] = {}
    needs_deltas = config.mode in ("swap", "branch", "local")
    if needs_deltas and not any(len(d.units) for per in bundle.deltas.values() for d in per.values()):
        raise AdsrtError(f"{config.mode} mode needs ADS deltas and this bundle has none; export --mode um instead")
    if (config.mode == "classifier" or config.fuse_classifier) and bundle.classifier is None:
        raise AdsrtError("this bundle has no degradation classifier to export")

    def classifier() -> nn.Module:
        dc = bundle.build_classifier()
        dc.always_grid = True  # no shape-dependent branch in the graph
        return dc

    if config.mode == "um":
        module, inputs, outputs = SingleInputGraph(bundle.build_um(), dtype), ["x"], ["y"]
    elif config.mode == "swap":
        model = bundle.build_um()
        refit = to_swap_split(model, bundle, config.split_max)
        module, inputs, outputs = SingleInputGraph(model, dtype), ["x"], ["y"]
    elif config.mode == "classifier":
        module, inputs, outputs = SingleInputGraph(classifier(), dtype), ["x"], ["logits"]
    else:
        from adsrt.runtime.branch import to_branch

        branch = to_branch(bundle.build_um(), bundle)
        for conv in branch.branch_layers().values():
            conv.use_conv_scatter()
        if config.fuse_classifier:
            temperature = config.temperature if config.temperature is not None else bundle.classifier.temperature
            module = FusedGraph(classifier(), branch, len(bundle.degradations), temperature, dtype)
            inputs, outputs = ["x"], ["y", "probs"]
        else:
            module, inputs, outputs = BranchGraph(branch, dtype), ["x", "c"], ["y"]
    return module.to(dtype).eval(), inputs, outputs, refit


# ------------------------------------------------------------------------------------------- export


def _sample_inputs(bundle, inputs: list[str], config: OnnxExportConfig) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    h, w = config.sample_size
    x = torch.rand(2, 3, h, w, generator=gen)  # batch 2: torch.export specialises sizes 0 and 1
    if "c" in inputs:
        if config.mode == "local":  # a map at 1/8 of the frame (any size works after export)
            return x, torch.rand(2, len(bundle.degradations), h // 8, w // 8, generator=gen)
        return x, torch.rand(2, len(bundle.degradations), generator=gen)
    return (x,)


def _dynamic_shapes(inputs: list[str], mode: str) -> dict[str, dict[int, object]]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    shapes: dict[str, dict[int, object]] = {"x": {0: batch, 2: height, 3: width}}
    if "c" in inputs:
        shapes["c"] = {0: batch}
        if mode == "local":
            shapes["c"].update({2: torch.export.Dim("map_height", min=1, max=MAX_SIDE),
                                3: torch.export.Dim("map_width", min=1, max=MAX_SIDE)})
    return shapes


def _rename_refit_initializers(model_proto, refit: dict[str, SwapRows]) -> None:
    """Give the swap graph's refittable initializers their documented names (``ads.<layer>``)."""
    wanted = {}
    for layer, rows in refit.items():
        module = layer.removesuffix(".weight")
        # state-dict name in the wrapper: the small conv's weight, or the layer's own weight when whole
        wanted[f"model.{layer}" if rows.whole else f"model.{module}.{_ADS_PARAM}"] = rows.name
    graph = model_proto.graph
    found = {}
    for init in graph.initializer:
        if init.name in wanted:
            found[init.name] = wanted[init.name]
            init.name = wanted[init.name]
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise AdsrtError(f"export: refittable weights not found as initializers: {missing[:3]}...")
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in found:
                node.input[i] = found[name]
    for vi in list(graph.value_info):
        if vi.name in found:
            vi.name = found[vi.name]


def _check_refit_initializers(model_proto, refit: dict[str, SwapRows]) -> None:
    """Every refit name is an initializer feeding a Conv/ConvTranspose weight input directly."""
    inits = {i.name for i in model_proto.graph.initializer}
    conv_weights = {n.input[1] for n in model_proto.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    bad = [r.name for r in refit.values() if r.name not in inits or r.name not in conv_weights]
    if bad:
        raise AdsrtError(f"export: refittable weights lost or folded by the graph optimisation: {bad[:3]}")


def _simplify(model_proto, refittable: bool):
    import onnxsim

    # A refittable weight must stay the tensor its layer multiplies: onnxsim would fold the Mul by
    # NAFNet's beta/gamma that follows conv3/conv5 into the weight (a new, unnamed initializer).
    skipped = ["fuse_mul_into_conv"] if refittable else None
    with redirect_stdout(io.StringIO()):  # onnxsim prints its progress table
        simplified, ok = onnxsim.simplify(model_proto, skipped_optimizers=skipped)
    if not ok:
        log.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
        return model_proto
    return simplified


def export_onnx(bundle, out: str | os.PathLike, config: OnnxExportConfig | None = None) -> ExportResult:
    """Export ``bundle`` as described by ``config`` to ``out`` (written atomically). See the module doc."""
    import onnx

    from adsrt.fileio import atomic_write_bytes

    config = config or OnnxExportConfig()
    module, inputs, outputs, refit = build_export_module(bundle, config)
    out = Path(out)
    if out.exists() and out.is_dir():
        raise OutputError(f"{out} is a folder; give the ONNX file name")
    check_writable_folder(out.parent, out)

    sample = _sample_inputs(bundle, inputs, config)
    log.info("exporting %s graph (%s, %s)", config.mode, config.precision,
             "classifier fused" if config.fuse_classifier else "dynamic batch/height/width")
    # The exporter's own chatter ("torchvision is not installed", initializer deduplication, ...)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad(), redirect_stdout(io.StringIO()):  # it prints progress
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, sample, dynamo=True, input_names=inputs, output_names=outputs,
                dynamic_shapes=_dynamic_shapes(inputs, config.mode),
                opset_version=config.opset, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the message is what a user can act on
        raise AdsrtError(f"ONNX export of the {config.mode} graph failed: {exc}") from exc
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    model_proto = program.model_proto
    if refit:
        _rename_refit_initializers(model_proto, refit)
    if config.simplify:
        model_proto = _simplify(model_proto, refittable=bool(refit))
    if refit:
        _check_refit_initializers(model_proto, refit)
    meta = {
        "adsrt.mode": config.mode,
        "adsrt.precision": config.precision,
        "adsrt.fused_classifier": json.dumps(config.fuse_classifier),
        "adsrt.bundle_digest": bundle.digest(),
        "adsrt.degradations": json.dumps(list(bundle.degradations)),
        "adsrt.refit": json.dumps({layer: r.name for layer, r in refit.items()}),
        "adsrt.split_max": json.dumps(config.split_max),
        "adsrt.temperature": json.dumps(
            config.temperature if config.temperature is not None
            else (bundle.classifier.temperature if bundle.classifier is not None else 1.0)),
        "adsrt.input": json.dumps({**asdict(bundle.input), "value_range": list(bundle.input.value_range)}),
    }
    del model_proto.metadata_props[:]
    for key, value in meta.items():
        model_proto.metadata_props.add(key=key, value=value)
    model_proto.producer_name = "adsrt"
    onnx.checker.check_model(model_proto, full_check=True)
    data = model_proto.SerializeToString()
    atomic_write_bytes(out, data)
    log.info("wrote %s (%d nodes, %.2f MB)", out, len(model_proto.graph.node), len(data) / 1e6)
    return ExportResult(path=out, mode=config.mode, precision=config.precision,
                        fused_classifier=config.fuse_classifier, inputs=inputs, outputs=outputs,
                        refit_names={layer: r.name for layer, r in refit.items()}, nodes=len(model_proto.graph.node), bytes=len(data))
