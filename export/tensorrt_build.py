"""TensorRT engines built from the exported ONNX graphs: builder flags and the build itself.
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
  (``ads.<layer>`` initializers, :func:`adsrt.runtime.refit.refit_name`): ``REFIT_INDIVIDUAL`` plus
  ``INetworkDefinition.mark_weights_refittable(name)`` (10.2+) keeps every other weight constant, so
  TensorRT still folds and fuses them; older releases fall back to ``REFIT`` (everything refittable,
  slower engine). Branch, um and classifier engines are not refittable. A refittable engine allows one
  optimization profile, so every engine here has exactly one (``EngineConfig.min/opt/max_shape``).
- **FP32 means FP32.** ``TF32`` is cleared for fp32 engines (it is on by default and rounds conv inputs
  to 10 mantissa bits), so the fp32 engine matches the torch reference to > 50 dB.

Nothing here imports ``tensorrt`` at module import time; :func:`builder_flags` and
:func:`onnx_conv_initializers` work on any machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adsrt.errors import AdsrtError, BackendError
from adsrt.fileio import atomic_write_bytes
from adsrt.runtime.tensorrt_engine import (
    ENGINE_MODES,
    ENGINE_PRECISIONS,
    REFIT_INDIVIDUAL_SINCE,
    EngineConfig,
    deserialize_engine,
    import_tensorrt,
    tensorrt_logger,
    version_tuple,
    with_errors,
)

log = logging.getLogger(__name__)

__all__ = [
    "BuilderFlags",
    "build_engine",
    "builder_flags",
    "onnx_conv_initializers",
    "read_onnx_metadata",
]


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
    include every refit name; the runtime compares them with :func:`adsrt.runtime.refit.swap_rows`."""
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
        raise BackendError(with_errors(f"{onnx_path}: TensorRT refused the shape profile {config.profile()}", logger))

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
        raise BackendError(with_errors(f"{onnx_path}: TensorRT failed to build the {config.mode} engine", logger))
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
