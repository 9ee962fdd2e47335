"""Where the runtime gets the artifacts it runs (ONNX graphs, TensorRT engines): one door into the exporter.

The exporter (:mod:`adsrt.export`) sits above the runtime: it builds graphs from a bundle with the
runtime's own modules (branch convs, the refit plan). So the runtime never imports it. It asks for an
artifact through :func:`exported`, which calls the provider the installed distribution registers under
the entry-point group ``adsrt.artifacts`` (adsrt's own: :func:`adsrt.export.artifacts.provide`). A
slim install without the exporter gets a clear error, not an ImportError from deep inside.

Kinds:

- ``"onnx"``: the path of the bundle's ONNX graph for ``mode``/``precision`` (cached, exported on a miss
  or when stale; options ``cache_dir``, ``split_max``, ``filename``, ``digest``, ``rebuild``);
- ``"tensorrt"``: a loaded engine (``.engine``, ``.path``, ``.built``) for an
  :class:`adsrt.runtime.tensorrt_engine.EngineConfig`, built from the graph ``onnx_path`` or, without it,
  from the cached TensorRT graph of ``config.mode`` (options ``cache_dir``, ``rebuild``, ``refit_names``,
  ``environment``, ``digest``).

Graphs and engines are cached under :func:`cache_root`.
"""

from __future__ import annotations

import os
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from adsrt.errors import BackendError

__all__ = ["ARTIFACT_KINDS", "ENTRY_POINT_GROUP", "cache_root", "exported", "exporter_unavailable_reason"]

ARTIFACT_KINDS = ("onnx", "tensorrt")
ENTRY_POINT_GROUP = "adsrt.artifacts"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exported graphs and engines are cached: ``cache_dir``, else ``$ADSRT_CACHE_DIR``, else
    ``~/.cache/adsrt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ADSRT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adsrt"


def exporter_unavailable_reason() -> str | None:
    """Why :func:`exported` cannot export here (no or several providers registered), or None. Cheap: the
    provider is not imported (``backend="auto"`` asks this before choosing an engine backend)."""
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    if not found:
        return (f"no exporter is installed (entry point group {ENTRY_POINT_GROUP!r} is empty): reinstall adsrt "
                "with its export extra, pip install 'adsrt[export]'")
    if len(found) > 1:
        names = ", ".join(sorted(f"{ep.name} = {ep.value}" for ep in found))
        return f"more than one exporter is registered under {ENTRY_POINT_GROUP!r}: {names}"
    return None


@cache
def _provider():
    reason = exporter_unavailable_reason()
    if reason is not None:
        raise BackendError(reason)
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    try:
        return found[0].load()
    except ImportError as exc:
        raise BackendError(f"the exporter cannot be imported ({exc}); install the export extra: "
                           "pip install 'adsrt[export]'") from exc


def exported(kind: str, bundle, **options: Any) -> Any:
    """The artifact ``kind`` of ``bundle`` (see the module doc), from the cache or exported now."""
    if kind not in ARTIFACT_KINDS:
        raise BackendError(f"unknown artifact kind {kind!r}; known: {', '.join(ARTIFACT_KINDS)}")
    return _provider()(kind, bundle, **options)
