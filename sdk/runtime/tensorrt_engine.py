"""TensorRT in the runtime: availability, the engine configuration, logging and deserialization.

Written against the TensorRT Python API of 10.x (10.3 is what JetPack 6 ships on Jetson Orin) and 11.x
(see the design notes, "TensorRT facts that shape the exporter"). Engines are built by the exporter
(:mod:`adsrt.export.tensorrt_build`, which documents the typing, flag and refit choices) from the
:class:`EngineConfig` the backend asks for; the runtime only reads them.

Nothing here imports ``tensorrt`` at module import time: :func:`tensorrt_unavailable_reason` says why
the TensorRT path cannot run (package missing, too old, no CUDA device), and the pure helpers
(:class:`EngineConfig`, :func:`has_fast_fp16`) work on any machine.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from adsrt.errors import AdsrtError, BackendError

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_MODES",
    "ENGINE_PRECISIONS",
    "MIN_TENSORRT",
    "EngineConfig",
    "EngineEnvironment",
    "current_environment",
    "deserialize_engine",
    "has_fast_fp16",
    "import_tensorrt",
    "tensorrt_logger",
    "tensorrt_unavailable_reason",
    "version_tuple",
]

ENGINE_MODES = ("swap", "branch", "um", "classifier")
ENGINE_PRECISIONS = ("fp32", "fp16")
MIN_TENSORRT = (10, 0)
# REFIT_INDIVIDUAL + INetworkDefinition.mark_weights_refittable arrived in 10.2 (used when the version is
# all we know; with the module at hand the decision comes from the attributes it has).
REFIT_INDIVIDUAL_SINCE = (10, 2)
MAX_OPTIMIZATION_LEVEL = 5


# ------------------------------------------------------------------------------------------ availability


def version_tuple(version: str | Sequence[int]) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; a sequence of ints passes through. Suffixes like ``"rc1"``
    or ``"+cuda12"`` end the numeric part."""
    if not isinstance(version, str):
        return tuple(int(v) for v in version)
    parts: list[int] = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    if not parts:
        raise AdsrtError(f"cannot read a version number from {version!r}")
    return tuple(parts)


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here (no ``tensorrt`` package, too old a release, no CUDA device
    visible to torch), or None when they can. Imports ``tensorrt`` lazily; never raises."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return (f"the tensorrt Python package is not installed ({exc}); install it with "
                "pip install 'adsrt[tensorrt]' on a CUDA machine (JetPack ships it on Jetson)")
    except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) raises other errors
        return f"the tensorrt package failed to import: {type(exc).__name__}: {exc}"
    try:
        version = version_tuple(getattr(trt, "__version__", "0"))
    except AdsrtError:
        version = (0,)
    if version < MIN_TENSORRT:
        return (f"TensorRT {getattr(trt, '__version__', '?')} is too old: adsrt needs "
                f"{'.'.join(map(str, MIN_TENSORRT))}+ (the name-based tensor API, strong typing)")
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device (TensorRT engines need an NVIDIA GPU and a CUDA build of torch)"
    return None


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`BackendError` with the reason it cannot be used here."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendError(f"TensorRT is unavailable: {reason}")
    import tensorrt as trt

    return trt


def has_fast_fp16(capability: tuple[int, int]) -> bool:
    """Whether a GPU of this compute capability runs FP16 at full speed (what TensorRT 10's
    ``platform_has_fast_fp16`` reports; 11.x removed that query). 5.3 (Jetson TX1), 6.0 (P100), 6.2 (TX2)
    and 7.0+ do; other Maxwell/Pascal parts (e.g. 6.1 consumer cards) run FP16 at 1/64 rate."""
    capability = (int(capability[0]), int(capability[1]))
    return capability >= (7, 0) or capability in {(5, 3), (6, 0), (6, 2)}


@dataclass(frozen=True)
class EngineEnvironment:
    """What a serialized engine is bound to besides its network: TensorRT release and GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"


def current_environment(device: Any = None) -> EngineEnvironment:
    """The TensorRT version and the GPU (name, compute capability) of ``device`` (default: current)."""
    trt = import_tensorrt()
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return EngineEnvironment(str(trt.__version__), torch.cuda.get_device_name(device), f"{major}.{minor}")


# ----------------------------------------------------------------------------------------------- logging


_SEVERITY_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "VERBOSE": logging.DEBUG,
}
_LOGGER: Any = None


def tensorrt_logger() -> Any:
    """One process-wide ``trt.ILogger`` that forwards TensorRT's messages to :mod:`logging` (logger
    ``adsrt.runtime.tensorrt_engine``) and keeps the last error messages for the exceptions adsrt raises
    (``logger.recent_errors()``). TensorRT wants the logger of a builder/runtime/refitter to outlive
    every object created through it, hence one long-lived instance."""
    global _LOGGER
    if _LOGGER is not None:
        return _LOGGER
    trt = import_tensorrt()

    class _LoggingBridge(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._errors: collections.deque[str] = collections.deque(maxlen=8)

        def log(self, severity, msg) -> None:  # called by TensorRT, possibly from its threads
            level = _SEVERITY_LEVELS.get(getattr(severity, "name", str(severity)).rsplit(".", 1)[-1], logging.INFO)
            if level >= logging.ERROR:
                self._errors.append(str(msg))
            if log.isEnabledFor(level):
                log.log(level, "TensorRT: %s", msg)

        def recent_errors(self, clear: bool = True) -> list[str]:
            errors = list(self._errors)
            if clear:
                self._errors.clear()
            return errors

    _LOGGER = _LoggingBridge()
    return _LOGGER


def with_errors(message: str, logger: Any) -> str:
    errors = logger.recent_errors() if hasattr(logger, "recent_errors") else []
    return message + ("" if not errors else " TensorRT said: " + " | ".join(errors[-3:]))


# -------------------------------------------------------------------------------------------- config


Shape = tuple[int, int, int]  # (batch, height, width) of the input x


def _shape(value: Any, what: str) -> Shape:
    try:
        shape = tuple(int(v) for v in value)
        ok = not isinstance(value, (str, bytes)) and len(shape) == 3 and all(int(v) == v for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(shape) < 1:
        raise BackendError(f"EngineConfig.{what} must be three positive integers (batch, height, width), "
                           f"got {value!r}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineConfig:
    """How to build one engine: graph mode, precision, the one optimization profile of input ``x``
    (``(batch, height, width)`` triples; branch graphs give ``c`` ``[batch, k]`` the same batch range),
    the builder workspace, and optional builder optimization level (0-5; TensorRT's default is 3) and
    timing-cache file (shared between builds; speeds up rebuilds)."""

    mode: str = "swap"
    precision: str = "fp32"
    min_shape: Shape = (1, 16, 16)
    opt_shape: Shape = (1, 720, 1280)
    max_shape: Shape = (1, 1088, 1920)
    workspace_mb: int = 1024
    builder_optimization_level: int | None = None
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ENGINE_MODES:
            raise BackendError(f"EngineConfig.mode must be one of {ENGINE_MODES}, got {self.mode!r}")
        if self.precision not in ENGINE_PRECISIONS:
            raise BackendError(f"EngineConfig.precision must be one of {ENGINE_PRECISIONS}, got {self.precision!r} "
                               "(TensorRT engines are built from strongly typed fp32 or fp16 graphs)")
        shapes = {}
        for what in ("min_shape", "opt_shape", "max_shape"):
            shapes[what] = _shape(getattr(self, what), what)
            object.__setattr__(self, what, shapes[what])
        lo, opt, hi = shapes["min_shape"], shapes["opt_shape"], shapes["max_shape"]
        for i, dim in enumerate(("batch", "height", "width")):
            if not lo[i] <= opt[i] <= hi[i]:
                raise BackendError(f"EngineConfig: {dim} must satisfy min <= opt <= max, got "
                                   f"{lo[i]} / {opt[i]} / {hi[i]} (min_shape={lo}, opt_shape={opt}, max_shape={hi})")
        if isinstance(self.workspace_mb, bool) or not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise BackendError(f"EngineConfig.workspace_mb must be a positive integer (MiB), got {self.workspace_mb!r}")
        level = self.builder_optimization_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                                  or not 0 <= level <= MAX_OPTIMIZATION_LEVEL):
            raise BackendError(f"EngineConfig.builder_optimization_level must be None or an integer "
                               f"0..{MAX_OPTIMIZATION_LEVEL}, got {level!r}")
        if self.timing_cache is not None:
            if not isinstance(self.timing_cache, (str, os.PathLike)) or not str(self.timing_cache):
                raise BackendError(f"EngineConfig.timing_cache must be a file path or None, got {self.timing_cache!r}")
            object.__setattr__(self, "timing_cache", str(self.timing_cache))

    @property
    def refittable(self) -> bool:
        return self.mode == "swap"

    def profile(self) -> dict[str, list[int]]:
        """The shape profile of ``x`` as plain lists (``{"min": [B, H, W], "opt": ..., "max": ...}``)."""
        return {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)}

    def build_options(self) -> dict[str, Any]:
        """Builder settings that change the engine but not what it computes (part of the cache key)."""
        return {"workspace_mb": self.workspace_mb, "builder_optimization_level": self.builder_optimization_level}

    def contains(self, batch: int, height: int, width: int) -> bool:
        """Whether an input ``x`` of this size lies inside the profile."""
        size = (batch, height, width)
        return all(lo <= s <= hi for lo, s, hi in zip(self.min_shape, size, self.max_shape, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deserialize_engine(data: bytes, source: str | os.PathLike = "<memory>") -> Any:
    """``trt.ICudaEngine`` from plan bytes; :class:`BackendError` naming ``source`` when TensorRT cannot
    read it (corrupt file, or built by another TensorRT release or for another GPU)."""
    trt = import_tensorrt()
    logger = tensorrt_logger()
    logger.recent_errors()
    runtime = _runtime(trt, logger)
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:
        raise BackendError(with_errors(f"{source}: TensorRT cannot deserialize this engine "
                                        f"({type(exc).__name__}: {exc})", logger)) from exc
    if engine is None:
        raise BackendError(with_errors(f"{source}: TensorRT cannot deserialize this engine (corrupt, or built by "
                                        "another TensorRT version or for another GPU)", logger))
    return engine


_RUNTIME: Any = None


def _runtime(trt, logger):
    """One ``trt.Runtime`` per process: engines keep a reference to the runtime that made them."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = trt.Runtime(logger)
    return _RUNTIME
