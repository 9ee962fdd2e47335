"""TensorRT engines from the exported ONNX graphs: availability, build configuration and the build itself.

Written against the TensorRT Python API of 10.x (10.3 is what JetPack 6 ships on Jetson Orin) and 11.x
(see the design notes, "TensorRT facts that shape the exporter"):

- **Strongly typed networks only.** TensorRT 11 removed weak typing (``BuilderFlag.FP16``/``INT8``,
  calibrators). The network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (required
  for strong typing on 10.x, accepted and ignored on 11.x) and FP16 lives in the ONNX graph itself:
  the fp16 graphs of :mod:`adsrt.export.onnx_export` keep fp32 inputs/outputs and cast inside.
- **Flags by name, never by integer.** Every builder flag is looked up with ``getattr`` on
  ``trt.BuilderFlag`` (enum values moved between releases, some flags are gone in 11.x);
  :func:`builder_flags` decides them from the attributes the installed ``tensorrt`` has, so tests can
  drive it with a plain namespace.
- **Refit.** Swap-mode engines are refittable, and only in the small ADS convolutions
  (``ads.<layer>`` initializers, :func:`adsrt.export.swap_split.refit_name`): ``REFIT_INDIVIDUAL`` plus
  ``INetworkDefinition.mark_weights_refittable(name)`` (10.2+) keeps every other weight constant, so
  TensorRT still folds and fuses them; older releases fall back to ``REFIT`` (everything refittable,
  slower engine). Branch, um and classifier engines are not refittable. A refittable engine allows one
  optimization profile, so every engine here has exactly one (``EngineConfig.min/opt/max_shape``).
- **FP32 means FP32.** ``TF32`` is cleared for fp32 engines (it is on by default and rounds conv inputs
  to 10 mantissa bits), so the fp32 engine matches the torch reference to > 50 dB.

Nothing here imports ``tensorrt`` at module import time: :func:`tensorrt_unavailable_reason` says why
the TensorRT path cannot run (package missing, too old, no CUDA device), and the pure helpers
(:class:`EngineConfig`, :func:`builder_flags`, :func:`has_fast_fp16`, :func:`onnx_conv_initializers`)
work on any machine.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from adsrt.errors import AdsrtError, BackendError
from adsrt.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_MODES",
    "ENGINE_PRECISIONS",
    "MIN_TENSORRT",
    "BuilderFlags",
    "EngineConfig",
    "EngineEnvironment",
    "build_engine",
    "builder_flag_names",
    "builder_flags",
    "current_environment",
    "deserialize_engine",
    "has_fast_fp16",
    "import_tensorrt",
    "onnx_conv_initializers",
    "read_onnx_metadata",
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
    ``adsrt.export.tensorrt_engine``) and keeps the last error messages for the exceptions adsrt raises
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


def _with_errors(message: str, logger: Any) -> str:
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


# --------------------------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class BuilderFlags:
    """Builder flags by name: ``set`` and ``clear`` on the builder config; ``mark_refittable``: call
    ``network.mark_weights_refittable`` for each refit name (only with ``REFIT_INDIVIDUAL``)."""

    set: tuple[str, ...] = ()
    clear: tuple[str, ...] = ()
    mark_refittable: bool = False


def _has_refit_individual(api: Any) -> bool:
    flags = getattr(api, "BuilderFlag", None)
    network = getattr(api, "INetworkDefinition", None)
    return hasattr(flags, "REFIT_INDIVIDUAL") and hasattr(network, "mark_weights_refittable")


def builder_flags(mode: str, precision: str, api: Any) -> BuilderFlags:
    """The builder flags of an engine, by name.

    ``api`` is the ``tensorrt`` module (or any namespace shaped like it: ``BuilderFlag`` and
    ``INetworkDefinition`` attributes), or a TensorRT version (``"10.3.0"`` or ``(10, 3)``).

    - swap: ``REFIT_INDIVIDUAL`` (+ marking the ADS weights refittable) when the API has both the flag and
      ``INetworkDefinition.mark_weights_refittable`` (10.2+), else ``REFIT``;
    - branch, um, classifier: no refit flag (constant weights);
    - fp32: clear ``TF32`` where the flag exists (strong typing expresses every other precision choice in
      the graph, so no precision flag is ever set: they are gone in TensorRT 11).
    """
    if mode not in ENGINE_MODES:
        raise BackendError(f"mode must be one of {ENGINE_MODES}, got {mode!r}")
    if precision not in ENGINE_PRECISIONS:
        raise BackendError(f"precision must be one of {ENGINE_PRECISIONS}, got {precision!r}")
    if isinstance(api, (str, tuple, list)):
        version = version_tuple(api)
        individual = version >= REFIT_INDIVIDUAL_SINCE
        has_refit, has_tf32 = True, True
    else:
        individual = _has_refit_individual(api)
        flags = getattr(api, "BuilderFlag", None)
        has_refit, has_tf32 = hasattr(flags, "REFIT"), hasattr(flags, "TF32")
    to_set: list[str] = []
    mark = False
    if mode == "swap":
        if individual:
            to_set.append("REFIT_INDIVIDUAL")
            mark = True
        elif has_refit:
            to_set.append("REFIT")
        else:
            raise BackendError("this TensorRT has neither BuilderFlag.REFIT_INDIVIDUAL nor BuilderFlag.REFIT: "
                               "swap mode needs a refittable engine; use mode='branch'")
    clear = ["TF32"] if precision == "fp32" and has_tf32 else []
    return BuilderFlags(tuple(to_set), tuple(clear), mark)


def builder_flag_names(mode: str, api: Any, precision: str = "fp32") -> list[str]:
    """The names of the builder flags :func:`build_engine` sets (see :func:`builder_flags`)."""
    return list(builder_flags(mode, precision, api).set)


# ---------------------------------------------------------------------------------------------- ONNX


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (``adsrt.mode``, ``adsrt.precision``,
    ``adsrt.bundle_digest``, ``adsrt.refit``...). Needs the ``onnx`` package (``adsrt[export]``)."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendError("reading ONNX files needs the onnx package: pip install 'adsrt[export]'") from exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BackendError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    return {p.key: p.value for p in model.metadata_props}


def onnx_conv_initializers(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Initializers that feed the weight input of a ``Conv``/``ConvTranspose`` node directly:
    ``{name: (element type name, shape)}`` (e.g. ``("FLOAT16", (4, 8, 1, 1))``). In swap graphs these
    include every refit name; the runtime compares them with :func:`adsrt.export.swap_split.swap_rows`."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendError("reading ONNX files needs the onnx package: pip install 'adsrt[export]'") from exc
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            t = inits[node.input[1]]
            out[t.name] = (onnx.TensorProto.DataType.Name(t.data_type), tuple(int(d) for d in t.dims))
    return out


# --------------------------------------------------------------------------------------------- build


def _network_inputs(network) -> dict[str, Any]:
    return {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}


def _expected_inputs(mode: str, names: Iterable[str]) -> None:
    names = set(names)
    allowed = ({"x", "c"}, {"x"}) if mode == "branch" else ({"x"},)  # fused branch graphs take x only
    if names not in allowed:
        raise BackendError(f"the {mode} graph should have inputs {' or '.join(sorted(map(str, allowed)))}, "
                           f"it has {sorted(names)}: was it exported by adsrt.export.onnx_export for this mode?")


def _parser_error(error) -> str:
    try:
        return f"{error.desc()} (node {error.node()})"
    except Exception:  # noqa: BLE001 - older bindings: the object's own text
        return str(error)


def _timing_cache(trt_config, path: Path | None):
    if path is None:
        return None
    data = b""
    if path.is_file():
        data = path.read_bytes()
    cache = trt_config.create_timing_cache(data)
    if cache is None or not trt_config.set_timing_cache(cache, False):
        log.warning("timing cache %s unusable (another TensorRT or GPU?); building without it", path)
        return None
    return cache


def build_engine(onnx_path: str | os.PathLike, config: EngineConfig, refit_names: Sequence[str] = ()) -> bytes:
    """Build a serialized TensorRT engine (a plan) from an adsrt ONNX graph.

    ``refit_names``: the weights a swap-mode engine must be able to refit (``ads.<layer>``); each must
    name a weight of the parsed network, else :class:`BackendError`. Ignored (must be empty) for the
    other modes. Raises :class:`BackendError` with TensorRT's messages when parsing or building fails.
    """
    trt = import_tensorrt()
    logger = tensorrt_logger()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendError(f"{onnx_path}: no such ONNX file")
    refit_names = list(refit_names)
    if refit_names and not config.refittable:
        raise BackendError(f"refit names given for a {config.mode} engine; only swap engines are refittable")
    logger.recent_errors()  # forget messages of earlier work

    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"{onnx_path}: TensorRT's ONNX parser rejected the graph: " + " | ".join(errors or ["?"]))

    inputs = _network_inputs(network)
    _expected_inputs(config.mode, inputs)
    trt_config = builder.create_builder_config()
    trt_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.builder_optimization_level is not None:
        trt_config.builder_optimization_level = config.builder_optimization_level

    profile = builder.create_optimization_profile()
    channels = int(inputs["x"].shape[1])
    if channels < 1:
        raise BackendError(f"{onnx_path}: input x must have a static channel count, got shape {tuple(inputs['x'].shape)}")
    (b0, h0, w0), (b1, h1, w1), (b2, h2, w2) = config.min_shape, config.opt_shape, config.max_shape
    profile.set_shape("x", (b0, channels, h0, w0), (b1, channels, h1, w1), (b2, channels, h2, w2))
    if "c" in inputs:
        k = int(inputs["c"].shape[-1])
        if k < 1 or len(inputs["c"].shape) != 2:
            raise BackendError(f"{onnx_path}: input c must be [B, k] with a static k, got {tuple(inputs['c'].shape)}")
        profile.set_shape("c", (b0, k), (b1, k), (b2, k))
    if trt_config.add_optimization_profile(profile) < 0:
        raise BackendError(_with_errors(f"{onnx_path}: TensorRT refused the shape profile {config.profile()}", logger))

    flags = builder_flags(config.mode, config.precision, trt)
    if config.refittable and not refit_names:
        log.warning("swap engine from %s with no refit names: the bundle has no masked units; building a "
                    "constant engine", onnx_path)
        flags = BuilderFlags((), flags.clear, False)
    for name in flags.clear:
        trt_config.clear_flag(getattr(trt.BuilderFlag, name))
    for name in flags.set:
        trt_config.set_flag(getattr(trt.BuilderFlag, name))
    if flags.mark_refittable:
        missing = [name for name in refit_names if not network.mark_weights_refittable(name)]
        if missing:
            raise BackendError(f"{onnx_path}: the graph has no weights named {missing[:5]}"
                               f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(refit_names)} refit "
                               "names): it was not exported in swap mode from this bundle")

    cache_path = None if config.timing_cache is None else Path(config.timing_cache)
    timing_cache = _timing_cache(trt_config, cache_path)
    log.info("building a TensorRT %s engine (%s, %s, profile %s, flags %s) from %s; this takes a while",
             trt.__version__, config.mode, config.precision, config.profile(), list(flags.set) or "none", onnx_path)
    plan = builder.build_serialized_network(network, trt_config)
    if plan is None:
        raise BackendError(_with_errors(f"{onnx_path}: TensorRT failed to build the {config.mode} engine", logger))
    data = bytes(plan)
    if timing_cache is not None and cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache_path, bytes(trt_config.get_timing_cache().serialize()))
        except (OSError, AdsrtError) as exc:
            log.warning("could not save the timing cache %s: %s", cache_path, exc)
    if refit_names and not flags.mark_refittable:
        # plain REFIT: every weight is refittable, but check the names resolve (the parser names weights
        # after the ONNX initializers)
        _check_refit_names(trt, logger, data, refit_names, onnx_path)
    return data


def _check_refit_names(trt, logger, plan: bytes, names: Sequence[str], source: Path) -> None:
    engine = deserialize_engine(plan, source)
    refitter = trt.Refitter(engine, logger)
    known = set(refitter.get_all_weights())
    missing = [n for n in names if n not in known]
    if missing:
        raise BackendError(f"{source}: the engine has no refittable weights named {missing[:5]} "
                           f"({len(missing)} of {len(names)}): the graph was not exported in swap mode")


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
        raise BackendError(_with_errors(f"{source}: TensorRT cannot deserialize this engine "
                                        f"({type(exc).__name__}: {exc})", logger)) from exc
    if engine is None:
        raise BackendError(_with_errors(f"{source}: TensorRT cannot deserialize this engine (corrupt, or built by "
                                        "another TensorRT version or for another GPU)", logger))
    return engine


_RUNTIME: Any = None


def _runtime(trt, logger):
    """One ``trt.Runtime`` per process: engines keep a reference to the runtime that made them."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = trt.Runtime(logger)
    return _RUNTIME


