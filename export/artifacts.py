"""The exporter's side of the runtime's one door (:func:`adsrt.runtime.artifacts.exported`).

Registered in ``pyproject.toml`` under the entry-point group ``adsrt.artifacts``; the runtime finds it
there, so the runtime never imports :mod:`adsrt.export`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adsrt.errors import BackendError
from adsrt.export.engine_cache import EngineCache, LoadedEngine, build_or_load_engine
from adsrt.export.graph_cache import cached_graph
from adsrt.runtime.onnx_graph import graph_metadata, load_onnx
from adsrt.runtime.refit import SPLIT_MAX
from adsrt.runtime.tensorrt_engine import EngineConfig, EngineEnvironment
from adsrt.version import __version__

__all__ = ["provide", "tensorrt_engine", "tensorrt_graph"]


def tensorrt_graph(bundle, mode: str, precision: str, cache_dir: str | os.PathLike | None = None, *,
                   digest: str | None = None, rebuild: bool = False) -> Path:
    """The ONNX graph TensorRT builds from, for ``bundle`` in ``mode`` (swap, branch, um or classifier) and
    ``precision``: ``<cache root>/onnx/<digest16>/tensorrt-<mode>-<precision>-adsrt<version>.onnx``, through
    the shared graph cache (:func:`adsrt.export.graph_cache.cached_graph`) with the default ``split_max``
    (separate from the ONNX Runtime backend's swap graphs, which split no layer)."""
    return cached_graph(bundle, mode, precision, cache_dir, SPLIT_MAX, digest=digest, rebuild=rebuild,
                        filename=f"tensorrt-{mode}-{precision}-adsrt{__version__}.onnx")


def tensorrt_engine(bundle, config: EngineConfig, *, onnx_path: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, rebuild: bool = False,
                    refit_names: list[str] | None = None, environment: EngineEnvironment | None = None,
                    digest: str | None = None) -> LoadedEngine:
    """The engine ``config`` describes, from the engine cache or built now. From ``onnx_path`` (a user's
    graph) or, without it, from :func:`tensorrt_graph` of ``config.mode``; ``refit_names`` default to the
    graph's ``adsrt.refit`` metadata."""
    digest = bundle.digest() if digest is None else digest
    if onnx_path is None:
        onnx_path = tensorrt_graph(bundle, config.mode, config.precision, cache_dir, digest=digest, rebuild=rebuild)
    if refit_names is None:
        refit_names = list(json.loads(graph_metadata(load_onnx(onnx_path)).get("adsrt.refit", "{}")).values())
    return build_or_load_engine(digest, onnx_path, config, EngineCache(cache_dir), rebuild=rebuild,
                                refit_names=refit_names, environment=environment)


def provide(kind: str, bundle, **options: Any) -> Any:
    """``kind`` ``"onnx"``: :func:`adsrt.export.graph_cache.cached_graph`; ``"tensorrt"``: :func:`tensorrt_engine`."""
    if kind == "onnx":
        return cached_graph(bundle, **options)
    if kind == "tensorrt":
        return tensorrt_engine(bundle, **options)
    raise BackendError(f"the exporter provides onnx graphs and tensorrt engines, not {kind!r}")
