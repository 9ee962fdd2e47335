"""The ``tensorrt`` runtime backend: the restorer (swap, branch or um) and the degradation classifier as
TensorRT engines, driven with torch CUDA tensors and streams.

**Engines.** Without ``engine=``, the backend asks the exporter for them
(:func:`adsrt.runtime.artifacts.exported`, kind ``"tensorrt"``): the ONNX graphs are exported into
``<cache>/onnx`` (reused while the bundle digest, mode, precision and adsrt version match) and the engines
built or loaded through the exporter's engine cache (``cache_dir``, default ``$ADSRT_CACHE_DIR`` or
``~/.cache/adsrt``). The first run on a machine builds (minutes on a Jetson); later runs load.
``engine=PATH`` uses a prebuilt restorer engine instead (checked against its cache sidecar when one lies
beside it). The classifier engine (when the bundle has a classifier) always comes from the cache; in um
mode it is built only if :meth:`classify` is called.

**Buffers and streams.** Inputs and outputs are torch CUDA tensors bound with
``context.set_tensor_address``; outputs are fresh tensors from torch's caching allocator each call (so a
caller may keep them, as with the torch backend; after the first frame of a shape no ``cudaMalloc``
happens). ``set_input_shape`` runs only when the frame shape changes, and the output shapes are
re-queried then. All TensorRT work (``execute_async_v3`` and the refits) is enqueued on one private
torch stream (TensorRT synchronises extra on the legacy default stream); it waits for the caller's
current stream before, and the caller's stream waits for it after, so callers see plain stream order
and no host synchronisation happens in :meth:`restore`, :meth:`classify` or :meth:`update`.

**Swap mode: refit.** The engine holds constant UM weights plus, per masked layer, a small refittable
convolution ``ads.<layer>`` (:mod:`adsrt.runtime.refit`, written by :mod:`adsrt.export.swap_split`). The backend keeps a torch copy of the
masked layers' full weights in an ADS arena (:func:`adsrt.kernels.ads_layout.build_ads_layout`, dtype of
the engine's refit weights), one device buffer per refit name, and one long-lived ``trt.Refitter``
(``weights_validation = False``) to which each buffer is registered once with
``set_named_weights(name, trt.Weights(dtype, ptr, count), trt.TensorLocation.DEVICE)``. Then
``update(c)`` is: fused ADS update of the arena (:func:`adsrt.kernels.ads_update.ads_update`, no host
sync) -> gather the refittable rows into the registered buffers
(:func:`adsrt.runtime.refit.gather_refit_weights`) -> ``refit_cuda_engine_async`` on the inference
stream (refitting while inference is pending on another stream is undefined, so everything shares
one). Missing weights (``get_missing_weights``) or unknown names fail at load with the list. The first
refit is ~100x slower than the next ones, so the backend pre-warms at load.

**Branch mode.** Constant weights; ``c`` (``[B, k]`` fp32) is a second engine input, so one batch may
mix coefficients (a ``[1, k]`` c is broadcast over the batch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adsrt.errors import BackendError
from adsrt.runtime.artifacts import exported
from adsrt.runtime.backends import Backend, resolve_device
from adsrt.runtime.refit import SwapRows, gather_refit_weights, refit_name, swap_rows
from adsrt.runtime.tensorrt_engine import (
    EngineConfig,
    current_environment,
    deserialize_engine,
    has_fast_fp16,
    import_tensorrt,
    tensorrt_logger,
    tensorrt_unavailable_reason,
)

log = logging.getLogger(__name__)

__all__ = [
    "TENSORRT_MODES",
    "TENSORRT_PRECISIONS",
    "TensorRTBackend",
    "refit_rows_from_sizes",
    "tensorrt_unavailable_reason",
]

TENSORRT_MODES = ("swap", "branch", "um")
TENSORRT_PRECISIONS = ("fp32", "fp16")
# TensorRT wants I/O addresses aligned (256 bytes is the documented safe value); torch's caching
# allocator hands out 512-byte aligned blocks, so only offset views get copied.
_ALIGN = 256
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}


def _dtype_name(trt_dtype: Any) -> str:
    return getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]


def _torch_dtype(trt_dtype: Any, what: str) -> torch.dtype:
    name = _dtype_name(trt_dtype)
    if name not in _TORCH_DTYPES:
        raise BackendError(f"{what}: TensorRT data type {name} has no torch equivalent here")
    return _TORCH_DTYPES[name]


def refit_rows_from_sizes(bundle, sizes: dict[str, int]) -> dict[str, SwapRows]:
    """The refittable rows of each masked layer of ``bundle`` as an engine holds them, from the number of
    values of each refit weight (``{refit name: count}``, e.g. ``Refitter.get_weights_prototype``): a
    layer is split (its masked rows) or whole (:mod:`adsrt.export.swap_split`, ``split_max``), and the
    sizes tell which, whatever ``split_max`` the graph was exported with. :class:`BackendError` lists the
    names that are missing or fit neither."""
    model = bundle.build_um()
    split = swap_rows(bundle, model, split_max=1.0)
    whole = swap_rows(bundle, model, split_max=0.0)
    out: dict[str, SwapRows] = {}
    bad: list[str] = []
    for layer, r in split.items():
        n = sizes.get(r.name)
        if n is None:
            bad.append(f"{r.name}: missing")
        elif int(n) == r.numel:
            out[layer] = r
        elif int(n) == whole[layer].numel:
            out[layer] = whole[layer]
        else:
            bad.append(f"{r.name}: {n} values, expected {r.numel} (masked rows) or {whole[layer].numel} (whole layer)")
    if bad:
        raise BackendError(f"the engine's refit weights do not fit this bundle ({len(bad)} of {len(split)}): "
                           f"{'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; rebuild the engine from this bundle")
    return out


class _EngineRunner:
    """An engine, its execution context and the shape bookkeeping of its I/O tensors."""

    def __init__(self, trt: Any, engine: Any, device: torch.device, label: str) -> None:
        self.trt, self.engine, self.device, self.label = trt, engine, device, label
        if engine.num_optimization_profiles != 1:
            raise BackendError(f"{label}: expected an engine with one optimization profile, it has "
                               f"{engine.num_optimization_profiles}")
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{label}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n), f"{label} tensor {n}") for n in names}
        self.profile = {n: [tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, 0)]
                        for n in self.inputs}
        self._in_shapes: dict[str, tuple[int, ...]] = {}
        self._out_shapes: dict[str, tuple[int, ...]] | None = None

    def expect(self, inputs: set[str], outputs: set[str]) -> None:
        if set(self.inputs) != inputs or set(self.outputs) != outputs:
            raise BackendError(f"{self.label}: engine I/O is inputs {self.inputs}, outputs {self.outputs}; expected "
                               f"inputs {sorted(inputs)}, outputs {sorted(outputs)}: an engine of another mode?")

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=False)):
            hint = ""
            if name == "x" and len(shape) == 4:
                hint = ("; restore larger frames with tiling (RestorerConfig.tile) or build the engine with a "
                        "larger EngineConfig.max_shape")
            raise BackendError(f"{self.label}: input {name} of shape {list(shape)} is outside the engine's shape "
                               f"profile (min {list(lo)}, max {list(hi)}){hint}")

    def run(self, feeds: dict[str, Tensor], stream: torch.cuda.Stream) -> dict[str, Tensor]:
        """Bind ``feeds`` (ready, engine dtype, contiguous) and fresh outputs; enqueue on ``stream``."""
        for name in self.inputs:
            shape = tuple(feeds[name].shape)
            if self._in_shapes.get(name) != shape:
                self._check_profile(name, shape)
                if not self.context.set_input_shape(name, shape):
                    raise BackendError(f"{self.label}: TensorRT rejected input shape {list(shape)} for {name}")
                self._in_shapes[name] = shape
                self._out_shapes = None
        if self._out_shapes is None:
            shapes = {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self.outputs}
            if any(d < 0 for s in shapes.values() for d in s):
                raise BackendError(f"{self.label}: output shapes {shapes} unresolved for inputs {self._in_shapes}")
            self._out_shapes = shapes
        outs = {n: torch.empty(s, dtype=self.dtypes[n], device=self.device) for n, s in self._out_shapes.items()}
        for name, tensor in (*feeds.items(), *outs.items()):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise BackendError(f"{self.label}: TensorRT rejected the address of tensor {name}")
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"{self.label}: execute_async_v3 failed (see the TensorRT log)")
        return outs

    def feed(self, name: str, t: Tensor) -> Tensor:
        """``t`` as the engine wants input ``name``: its dtype, contiguous, aligned (copies only if needed)."""
        t = t.to(device=self.device, dtype=self.dtypes[name]).contiguous()
        if t.data_ptr() % _ALIGN:
            t = t.clone()
        return t


class TensorRTBackend(Backend):
    """TensorRT engines built from the exported ONNX (refit for swap mode, constant weights for branch)."""

    name = "tensorrt"

    def __init__(self, bundle, *, device: str | torch.device | None = "auto", precision: str = "fp32",
                 mode: str = "swap", engine: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, graph: str | os.PathLike | None = None,
                 rebuild: bool = False, engine_config: EngineConfig | None = None, warmup_refits: int = 2) -> None:
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise BackendError(f"the tensorrt backend cannot run here: {reason}")
        if mode not in TENSORRT_MODES:
            raise BackendError(f"mode must be one of {TENSORRT_MODES}, got {mode!r}")
        if precision not in TENSORRT_PRECISIONS:
            raise BackendError(f"the tensorrt backend runs precision {' or '.join(TENSORRT_PRECISIONS)}, "
                               f"got {precision!r}")
        if engine is not None and graph is not None:
            raise BackendError("give engine= (a TensorRT engine) or graph= (an ONNX file or an engine), not both")
        self.device = resolve_device(device)
        if self.device.type != "cuda":
            raise BackendError(f"the tensorrt backend runs on CUDA devices, got {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        capability = torch.cuda.get_device_capability(self.device)
        if precision == "fp16" and not has_fast_fp16(capability):
            raise BackendError(f"precision fp16: {torch.cuda.get_device_name(self.device)} (compute capability "
                               f"{capability[0]}.{capability[1]}) has no fast FP16; use precision fp32")
        trt = import_tensorrt()
        self.trt = trt
        self.mode, self.precision = mode, precision
        self.dtype = torch.float32  # graph I/O is fp32 at every precision (fp16 graphs cast inside)
        self.degradations = list(bundle.degradations)
        self.k = len(self.degradations)
        self._cache_dir = cache_dir
        self.rebuild = rebuild
        self._digest = bundle.digest()
        self._config = replace(engine_config or EngineConfig(), mode=mode, precision=precision)
        self._bundle = bundle if mode == "um" and bundle.classifier is not None else None  # lazy classifier
        self.has_classifier = bundle.classifier is not None
        self._c: Tensor | None = None
        self.refitter = None
        self.layout = None
        self.engine_paths: dict[str, Path] = {}

        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            refit_names = [refit_name(layer) for layer in swap_rows(bundle)] if mode == "swap" else []
            self.restorer = self._restorer_runner(bundle, engine if engine is not None else graph, refit_names)
            self.restorer.expect({"x", "c"} if mode == "branch" else {"x"}, {"y"})
            self.classifier = None
            if self.has_classifier and mode != "um":
                self.classifier = self._classifier_runner(bundle)
            if mode == "swap":
                self._setup_refit(bundle, refit_names, warmup_refits)

    # ------------------------------------------------------------------------------------------ setup

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return tensorrt_unavailable_reason()

    def _load(self, bundle, mode: str, refit_names: list[str], onnx_path: Path | None = None):
        """The engine of ``mode``, built from ``onnx_path`` (a user's graph) or from the bundle's own
        cached TensorRT graph, through the exporter (:func:`adsrt.runtime.artifacts.exported`)."""
        loaded = exported("tensorrt", bundle, config=replace(self._config, mode=mode), onnx_path=onnx_path,
                          cache_dir=self._cache_dir, rebuild=self.rebuild, refit_names=refit_names,
                          environment=current_environment(self.device), digest=self._digest)
        self.engine_paths[mode] = loaded.path
        return loaded.engine

    def _restorer_runner(self, bundle, given: str | os.PathLike | None, refit_names: list[str]) -> _EngineRunner:
        if given is None:
            engine = self._load(bundle, self.mode, refit_names)
        else:
            path = Path(given)
            if not path.is_file():
                raise BackendError(f"{path}: no such ONNX file or TensorRT engine")
            if path.suffix.lower() == ".onnx":  # the user's export: built (and cached) like our own
                engine = self._load(bundle, self.mode, refit_names, onnx_path=path)
            else:
                self._check_engine_sidecar(path)
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise BackendError(f"{path}: cannot read the engine file ({exc})") from exc
                engine = deserialize_engine(data, path)
                self.engine_paths[self.mode] = path
        return _EngineRunner(self.trt, engine, self.device, f"{self.mode} engine {self.engine_paths[self.mode]}")

    def _check_engine_sidecar(self, path: Path) -> None:
        """A prebuilt engine with an adsrt cache sidecar beside it must be of this bundle, mode and
        precision, and of this TensorRT release (engines without a sidecar are taken on trust)."""
        side = path.with_suffix(".json")
        if not side.is_file():
            log.info("%s has no sidecar: assuming it was built from this bundle in %s mode", path, self.mode)
            return
        try:
            key = json.loads(side.read_text()).get("key", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise BackendError(f"{side}: unreadable engine sidecar ({exc})") from exc
        expected = {"bundle_digest": self._digest, "mode": self.mode, "precision": self.precision,
                    "tensorrt_version": str(self.trt.__version__)}
        wrong = [f"{k} {key.get(k)!r} (engine) != {v!r}" for k, v in expected.items() if key.get(k) != v]
        if wrong:
            raise BackendError(f"{path} does not fit: {'; '.join(wrong)}; rebuild it (or omit engine= to use the cache)")

    def _classifier_runner(self, bundle) -> _EngineRunner:
        engine = self._load(bundle, "classifier", [])
        runner = _EngineRunner(self.trt, engine, self.device, f"classifier engine {self.engine_paths['classifier']}")
        runner.expect({"x"}, {"logits"})
        return runner

    def _setup_refit(self, bundle, refit_names: list[str], warmup: int) -> None:
        from adsrt.kernels.ads_layout import build_ads_layout
        from adsrt.kernels.ads_update import resolve_backend

        trt = self.trt
        if not refit_names:
            log.warning("swap mode: the bundle has no masked units; the engine is the UM and update() does nothing")
            return
        label = self.restorer.label
        refitter = trt.Refitter(self.restorer.engine, tensorrt_logger())
        refitter.weights_validation = False  # our buffers always have the right size; skip the host scan
        known = set(refitter.get_all_weights())
        absent = [n for n in refit_names if n not in known]
        if absent:
            raise BackendError(f"{label}: no refittable weights named {absent[:5]} ({len(absent)} of {len(refit_names)}): "
                               "the engine was not built from this bundle in swap mode; rebuild it (rebuild=True)")
        prototypes = {name: refitter.get_weights_prototype(name) for name in refit_names}
        trt_dtypes = {name: p.dtype for name, p in prototypes.items()}
        try:  # split or whole layers, as the graph was exported (see swap_split)
            rows = refit_rows_from_sizes(bundle, {name: int(p.size) for name, p in prototypes.items()})
        except BackendError as exc:
            raise BackendError(f"{label}: {exc} (rebuild=True)") from exc
        torch_dtypes = {_torch_dtype(d, f"{label} refit weight {n}") for n, d in trt_dtypes.items()}
        if len(torch_dtypes) != 1:
            raise BackendError(f"{label}: refit weights mix data types {sorted(map(str, torch_dtypes))}")
        (arena_dtype,) = torch_dtypes
        model = bundle.build_um()
        self.layout = build_ads_layout(model, bundle, device=self.device, dtype=arena_dtype)
        self.update_backend = resolve_backend(self.device, "auto")
        slots = self.layout.slots
        self._full = {layer: self.layout.arena[slots[layer].start: slots[layer].start + slots[layer].numel]
                      .view(slots[layer].shape) for layer in rows}
        self._rows = {layer: replace(r, rows=r.rows.to(self.device)) for layer, r in rows.items()}
        self._buffers = {r.name: torch.empty(r.shape, dtype=arena_dtype, device=self.device) for r in rows.values()}
        gather_refit_weights(self._full, self._rows, out=self._buffers)  # UM rows until the first update
        torch.cuda.synchronize(self.device)
        for name, buf in self._buffers.items():
            weights = trt.Weights(trt_dtypes[name], buf.data_ptr(), buf.numel())
            if not refitter.set_named_weights(name, weights, trt.TensorLocation.DEVICE):
                raise BackendError(f"{label}: the refitter rejected device weights {name} "
                                   f"({buf.numel()} x {arena_dtype})")
        missing = list(refitter.get_missing_weights())
        if missing:
            raise BackendError(f"{label}: refitting also needs weights adsrt does not update: {missing[:8]}"
                               f"{' ...' if len(missing) > 8 else ''}; the engine must be built with REFIT_INDIVIDUAL "
                               "from a swap-mode graph (rebuild=True)")
        self.refitter = refitter
        zeros = torch.zeros(1, self.k, dtype=torch.float32, device=self.device)
        for i in range(max(1, warmup)):  # the first refit is ~100x slower than the next ones
            t0 = time.perf_counter()
            self.update(zeros)
            self.stream.synchronize()
            log.debug("warm-up refit %d: %.2f ms", i, 1e3 * (time.perf_counter() - t0))
        log.info("swap mode: %d refittable convolutions (%s), fused update via %s", len(self._buffers),
                 str(arena_dtype).removeprefix("torch."), self.update_backend)

    # ----------------------------------------------------------------------------------------- frames

    @contextlib.contextmanager
    def _on_stream(self):
        """Run TensorRT work on the private stream, ordered after and before the caller's stream."""
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            try:
                with torch.cuda.stream(self.stream):
                    yield self.stream
            finally:
                current.wait_stream(self.stream)

    def _check_frames(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise BackendError(f"expected frames [B, 3, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        if x.device != self.device:
            raise BackendError(f"frames are on {x.device}, the tensorrt backend runs on {self.device}")

    def classify(self, x: Tensor) -> Tensor:
        if not self.has_classifier:
            raise BackendError("this bundle has no degradation classifier; force a degradation instead")
        self._check_frames(x)
        if self.classifier is None:  # um mode builds it on demand
            with torch.cuda.device(self.device):
                self.classifier = self._classifier_runner(self._bundle)
        feeds = {"x": self.classifier.feed("x", x)}
        with self._on_stream() as stream:
            logits = self.classifier.run(feeds, stream)["logits"]
        return logits.float()

    def update(self, c: Tensor) -> None:
        if self.mode == "um":
            return
        if not isinstance(c, Tensor) or c.dim() != 2 or c.shape[1] != self.k:
            raise BackendError(f"c must be [B, {self.k}] (one coefficient per degradation), got "
                               f"{getattr(c, 'shape', type(c).__name__)}")
        if c.device != self.device:
            raise BackendError(f"c is on {c.device}, the tensorrt backend runs on {self.device}")
        if self.mode == "branch":
            self._c = c.to(torch.float32).contiguous()
            return
        if c.shape[0] != 1:
            raise BackendError("swap mode applies one c to all frames of a batch; use branch mode to mix them")
        if self.refitter is None:
            return  # no masked units: nothing to refit
        from adsrt.kernels.ads_update import ads_update

        with self._on_stream() as stream:
            # validate=False: no host sync (the restorer checks c's finiteness when it downloads the frame)
            ads_update(self.layout, c[0].to(torch.float32), backend=self.update_backend, validate=False)
            gather_refit_weights(self._full, self._rows, out=self._buffers)
            if not self.refitter.refit_cuda_engine_async(stream.cuda_stream):
                raise BackendError(f"{self.restorer.label}: refit_cuda_engine_async failed (see the TensorRT log)")

    def restore(self, x: Tensor) -> Tensor:
        self._check_frames(x)
        feeds = {"x": self.restorer.feed("x", x)}
        if self.mode == "branch":
            if self._c is None:
                raise BackendError("branch mode: call update(c) before restore")
            c = self._c
            if c.shape[0] != x.shape[0]:
                if c.shape[0] != 1:
                    raise BackendError(f"branch mode: c has {c.shape[0]} rows for a batch of {x.shape[0]} frames")
                c = c.expand(x.shape[0], -1)
            feeds["c"] = self.restorer.feed("c", c)
        with self._on_stream() as stream:
            y = self.restorer.run(feeds, stream)["y"]
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def describe(self) -> str:
        text = f"{super().describe()}, TensorRT {self.trt.__version__} {self.precision} engine"
        if self.refitter is not None:
            text += f", refit of {len(self._buffers)} convolutions, fused update via {self.update_backend}"
        return text
