"""Inference backends of the runtime, behind one small interface.

A :class:`Backend` runs the three device-side stages of a frame on tensors that already live on its
device (the :class:`adsrt.runtime.restorer.Restorer` does the conversion from and to images, tiling and the
temporal smoothing of ``c``):

- ``classify(x) -> logits`` ``[B, k + 1]`` (fp32; the last class is clean/unknown);
- ``update(c)`` with ``c`` ``[B, k]`` fp32 (``local`` mode: a map ``[B, k, h, w]``): make the next ``restore``
  use these coefficients;
- ``restore(x) -> y`` with ``x, y`` ``[B, 3, H, W]`` in the model's value range and channel order.

Registered backends (:data:`BACKENDS`):

- ``torch`` (CPU and CUDA; fp32 everywhere, fp16/bf16 on CUDA; optional CUDA-graph capture of
  classify -> update -> restore, see :class:`CudaGraphFrame`);
- ``onnxruntime`` (:mod:`adsrt.runtime.onnxruntime_backend`: the exported ONNX graphs on the CPU) and
  ``tensorrt`` (:mod:`adsrt.runtime.tensorrt_backend`: engines, refit in swap mode), imported on first use.

``name="auto"`` picks the best available backend and logs which: TensorRT where it runs, torch on CUDA,
else ONNX Runtime on the CPU (exporting and caching the graphs on first use), else torch.

Modes (:data:`MODES`): ``swap`` (the fused ADS update of :mod:`adsrt.kernels` rewrites the masked
weights in place), ``branch`` (constant weights, ``c`` as an input: :mod:`adsrt.runtime.branch`; one batch may
mix coefficients), ``local`` (branch mode with a coefficient map ``c`` ``[B, k, h, w]``: the degradation may
vary across the frame), and ``um`` (the unified model alone: no classifier, no deltas; the baseline of the
latency benchmark).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from adsrt.errors import BackendError

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "BRANCH_MODES",
    "MODES",
    "PRECISIONS",
    "Backend",
    "CudaGraphFrame",
    "TorchBackend",
    "available_backends",
    "create_backend",
    "resolve_device",
    "smooth_coefficients",
    "tensorrt_blocker",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("swap", "branch", "local", "um")
BRANCH_MODES = ("branch", "local")  # constant weights, c as an input (a vector, or a map in local mode)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when torch sees a GPU, else the CPU. Unknown or missing devices raise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BackendError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"device {device!r}: torch sees no CUDA device on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BackendError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise BackendError(f"device {device!r}: adsrt runs on cpu or cuda")
    return resolved


def smooth_coefficients(probs: Tensor, state: Tensor | None, ema: float) -> Tensor:
    """``c`` from classifier probabilities ``[B, k + 1]``: ``p[:, :k]``, smoothed over time with ``state``.

    ``state``: None (no smoothing: ``c = p[:, :k]``) or float32 ``[k + 1]`` on ``probs``' device, for one
    frame at a time: ``state[:k]`` is the last applied c, ``state[k]`` is 1 once a frame has been seen
    (a zeroed state, ``state[k] == 0``, restarts the smoothing, e.g. at a scene cut). Then
    ``c = ema * state[:k] + (1 - ema) * p[0, :k]`` (the first frame takes ``p`` as it is) and ``state``
    is updated in place. Device-side ops only (no host sync): CUDA-graph safe.
    """
    k = probs.shape[1] - 1
    c = probs[:, :k].float()
    if state is None:
        return c
    w = torch.where(state[k] > 0, ema, 0.0)
    c = w * state[:k] + (1.0 - w) * c[0]
    state[:k].copy_(c)
    state[k:].fill_(1.0)
    return c[None]


class Backend(ABC):
    """What a restorer needs from an inference engine (see the module doc)."""

    name: ClassVar[str]
    mode: str
    device: torch.device
    dtype: torch.dtype
    degradations: list[str]
    has_classifier: bool

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        return None

    @abstractmethod
    def classify(self, x: Tensor) -> Tensor:
        """Classifier logits ``[B, k + 1]`` (fp32) of frames ``x`` ``[B, 3, H, W]`` on :attr:`device`."""

    @abstractmethod
    def update(self, c: Tensor) -> None:
        """Coefficients ``[B, k]`` (fp32, on :attr:`device`) for the next :meth:`restore` call."""

    @abstractmethod
    def restore(self, x: Tensor) -> Tensor:
        """Restored frames, same shape as ``x``."""

    def describe(self) -> str:
        return f"{self.name} backend, {self.mode} mode, {self.device}, {str(self.dtype).removeprefix('torch.')}"


class TorchBackend(Backend):
    """PyTorch on the CPU or CUDA; swap mode uses the fused update (Triton on CUDA 8.0+, torch otherwise)."""

    name = "torch"

    def __init__(self, bundle, *, device: str | torch.device | None = "auto", precision: str = "fp32",
                 mode: str = "swap") -> None:
        if mode not in MODES:
            raise BackendError(f"mode must be one of {MODES}, got {mode!r}")
        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        self.dtype = PRECISIONS[precision]
        if self.device.type != "cuda" and self.dtype != torch.float32:
            raise BackendError(f"precision {precision} runs on CUDA only; use fp32 on the CPU")
        self.mode = mode
        self.degradations = list(bundle.degradations)
        self.layout = None
        self.branch = None
        model = bundle.build_um().to(device=self.device, dtype=self.dtype)
        self.classifier = None
        if bundle.classifier is not None:
            self.classifier = bundle.build_classifier().to(device=self.device, dtype=self.dtype)
        self.has_classifier = self.classifier is not None
        if mode == "swap":
            from adsrt.kernels.ads_layout import build_ads_layout
            from adsrt.kernels.ads_update import resolve_backend

            self.layout = build_ads_layout(model, bundle, device=self.device, dtype=self.dtype)
            self.update_backend = resolve_backend(self.device, "auto")
        elif mode in BRANCH_MODES:
            from adsrt.runtime.branch import to_branch

            self.branch = to_branch(model, bundle)
        self.model = model
        self._c: Tensor | None = None

    def classify(self, x: Tensor) -> Tensor:
        if self.classifier is None:
            raise BackendError("this bundle has no degradation classifier; force a degradation instead")
        return self.classifier(x).float()

    def update(self, c: Tensor) -> None:
        if self.mode == "swap":
            from adsrt.kernels.ads_update import ads_update

            if c.shape[0] != 1:
                raise BackendError("swap mode applies one c to all frames of a batch; use branch mode to mix them")
            # validate=False: no host sync (the restorer checks c's finiteness when it downloads the frame)
            ads_update(self.layout, c[0], backend=self.update_backend, validate=False)
        elif self.mode in BRANCH_MODES:
            self._c = c.to(self.dtype)

    def restore(self, x: Tensor) -> Tensor:
        if self.branch is not None:
            if self._c is None:
                raise BackendError("branch mode: call update(c) before restore")
            return self.branch(x, self._c)
        return self.model(x)

    def describe(self) -> str:
        text = super().describe()
        if self.layout is not None:
            text += f", fused update via {self.update_backend}"
        if self.device.type == "cpu":
            text += f", {torch.get_num_threads()} threads"
        return text


class _LazyBackend:
    """A backend of its own module, imported only when used (onnx, onnxruntime and
    tensorrt are optional and slow to import). Behaves like a backend class: call it to construct one."""

    def __init__(self, name: str, module: str, cls: str, reason: str) -> None:
        self.name, self._module, self._cls, self._reason = name, module, cls, reason

    def _load(self):
        import importlib

        return importlib.import_module(self._module)

    def __call__(self, bundle, **options) -> Backend:
        return getattr(self._load(), self._cls)(bundle, **options)

    def unavailable_reason(self) -> str | None:
        return getattr(self._load(), self._reason)()


BACKENDS: dict[str, type[Backend] | _LazyBackend] = {
    "torch": TorchBackend,
    "onnxruntime": _LazyBackend("onnxruntime", "adsrt.runtime.onnxruntime_backend", "OnnxRuntimeBackend",
                                    "onnxruntime_unavailable_reason"),
    "tensorrt": _LazyBackend("tensorrt", "adsrt.runtime.tensorrt_backend", "TensorRTBackend",
                                 "tensorrt_unavailable_reason"),
}
# Preference order of "auto" (the first available wins).
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")  # the order _auto_backend reports in


def available_backends() -> dict[str, str | None]:
    """Every registered backend and why it is unavailable (None: available)."""
    return {name: cls.unavailable_reason() for name, cls in BACKENDS.items()}


def _export_reason() -> str | None:
    """Why engines cannot be exported here (the export extra or the exporter missing), or None."""
    import importlib.util

    from adsrt.runtime.artifacts import exporter_unavailable_reason

    missing = [name for name in ("onnx", "onnxscript", "onnxsim") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'adsrt[export]')"
    return exporter_unavailable_reason()


def tensorrt_blocker(reason: str | None, *, wants_cuda: bool, precision: str, cuda_graph: bool,
                     graph: object = None, export_reason: str | None = None, mode: str = "swap") -> str | None:
    """Why ``auto`` must not pick TensorRT for this request, or None when it can run it: TensorRT itself
    (``reason``), frames on the CPU, a precision engines do not have, ``local`` mode (no engine yet), ``cuda_graph``
    (it captures the torch backend), or no way to export the engine's graph when no ``graph`` file is given. Pure logic: the
    availability probes come in as arguments."""
    from adsrt.runtime.tensorrt_engine import ENGINE_PRECISIONS

    if reason is not None:
        return reason
    if not wants_cuda:
        return "the frames go to the CPU"
    if precision not in ENGINE_PRECISIONS:
        return f"engines are {' or '.join(ENGINE_PRECISIONS)}, not {precision}"
    if mode == "local":
        return "local mode has no TensorRT engine yet (its coefficient-map graph is checked with ONNX Runtime only)"
    if cuda_graph:
        return "cuda_graph captures the torch backend"
    if graph is None and export_reason is not None:
        return f"its graphs cannot be exported: {export_reason}"
    return None


def _auto_backend(device, *, precision: str = "fp32", cuda_graph: bool = False, graph: object = None,
                  mode: str = "swap") -> str:
    """TensorRT where this request runs on it (:func:`tensorrt_blocker`); else torch when the frames go to a
    CUDA device; else ONNX Runtime (on 2 CPU cores it runs nafnet-small at 480p ~2x faster than torch:
    benchmarks/results/latency.csv); else torch. Logs the pick and why the others were passed over."""
    reasons = available_backends()
    text = "auto" if device is None else str(device)  # a torch.device too
    wants_cuda = text.startswith("cuda") or (text == "auto" and torch.cuda.is_available())
    trt = reasons["tensorrt"]
    if trt is None:  # only then is the (import-probing) export check worth making
        trt = tensorrt_blocker(None, wants_cuda=wants_cuda, precision=precision, cuda_graph=cuda_graph, graph=graph,
                               export_reason=_export_reason(), mode=mode)
    reasons = {**reasons, "tensorrt": trt}
    if trt is None:
        name = "tensorrt"
    elif wants_cuda:
        name = "torch"
    elif reasons["onnxruntime"] is None:
        name = "onnxruntime"
    else:
        name = "torch"
    skipped = [f"{n}: {reasons[n]}" for n in AUTO_ORDER if n != name and reasons[n] is not None]
    log.info("backend auto -> %s%s", name, f" ({'; '.join(skipped)})" if skipped else "")
    return name


def create_backend(bundle, name: str = "auto", *, device: str | torch.device | None = "auto",
                   precision: str = "fp32", mode: str = "swap", cuda_graph: bool = False, **options) -> Backend:
    """Build backend ``name`` (or the best available one for ``"auto"``) for ``bundle``.

    ``options`` go to engine backends only: ``graph`` (an exported ONNX file or TensorRT engine to run
    instead of exporting from the bundle) and ``cache_dir`` (where exported graphs and engines are cached).
    """
    if name == "auto":
        name = _auto_backend(device, precision=precision, cuda_graph=cuda_graph, graph=options.get("graph"), mode=mode)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}")
    options = {k: v for k, v in options.items() if v is not None}
    if name == "torch" and options:
        raise BackendError(f"the torch backend runs the bundle itself; {sorted(options)} are for onnxruntime/tensorrt")
    return BACKENDS[name](bundle, device=device, precision=precision, mode=mode, **options)


class CudaGraphFrame:
    """classify -> c (softmax, temporal smoothing) -> update -> restore of one frame shape, captured
    once as a CUDA graph and replayed per frame (torch backend on CUDA; the fused update then reads c
    from device memory, so nothing synchronises inside the frame).

    ``run(x)`` copies ``x`` into the static input and replays; it returns the static output, c and class
    probabilities (None when forced) tensors, overwritten by the next replay: copy what you keep. Warm-up,
    capture and replay run with the backend's device current (cuda:N). ``state`` is the caller's smoothing
    state (see :func:`smooth_coefficients`; None: no smoothing); the graph reads and writes it in place,
    so zeroing it restarts the smoothing. ``forced_c`` (``[1, k]``) skips the classifier.
    """

    def __init__(self, backend: Backend, shape: tuple[int, ...], *, temperature: float = 1.0, ema: float = 0.0,
                 state: Tensor | None = None, forced_c: Tensor | None = None, warmup: int = 3) -> None:
        if not isinstance(backend, TorchBackend) or backend.device.type != "cuda":
            raise BackendError("CUDA graphs need the torch backend on a CUDA device")
        self.backend = backend
        self.temperature, self.ema = temperature, ema
        self.state, self.forced_c = state, forced_c
        self.x = torch.zeros(shape, device=backend.device, dtype=backend.dtype)
        saved = None if state is None else state.clone()
        # torch.cuda.graph captures on the *current* device's stream and Triton launches on the current
        # device: on cuda:N (N > 0) both must run with that device current, for warm-up, capture and replay.
        with torch.cuda.device(backend.device):
            side = torch.cuda.Stream(backend.device)
            side.wait_stream(torch.cuda.current_stream(backend.device))
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(warmup):  # first launches compile kernels and allocate workspaces
                    self._body()
            torch.cuda.current_stream(backend.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.y, self.c, self.probs = self._body()
        if saved is not None:
            state.copy_(saved)  # warmup and capture ran the body: put the caller's state back

    def _body(self) -> tuple[Tensor, Tensor, Tensor | None]:
        probs = None
        if self.forced_c is not None:
            c = self.forced_c
        else:
            probs = torch.softmax(self.backend.classify(self.x) / self.temperature, dim=1)
            c = smooth_coefficients(probs, self.state, self.ema)
        self.backend.update(c)
        return self.backend.restore(self.x), c, probs

    def run(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        with torch.cuda.device(self.backend.device):
            self.x.copy_(x)
            self.graph.replay()
        return self.y, self.c, self.probs
