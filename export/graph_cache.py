"""The cache of exported ONNX graphs, shared by the onnxruntime and tensorrt backends.

A graph is kept under ``<root>/onnx/<bundle digest[:16]>/<file>`` (root:
:func:`adsrt.runtime.artifacts.cache_root`) and reused while its metadata names the bundle's digest, the
mode and precision (and, for swap graphs, the ``split_max`` it was split with); a stale or unreadable
file is exported again, never run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from adsrt.errors import AdsrtError, BackendError
from adsrt.runtime.artifacts import cache_root
from adsrt.runtime.onnx_graph import graph_metadata, load_onnx

log = logging.getLogger(__name__)

__all__ = ["cached_graph"]


def _graph_matches(path: Path, digest: str, mode: str, precision: str, split_max: float) -> str | None:
    """None when the cached graph at ``path`` is the one wanted, else why not."""
    try:
        meta = graph_metadata(load_onnx(path))
    except AdsrtError as exc:
        return str(exc)
    want = {"adsrt.bundle_digest": digest, "adsrt.mode": mode, "adsrt.precision": precision,
            "adsrt.fused_classifier": "false"}
    if mode == "swap":  # the split only shapes swap graphs
        want["adsrt.split_max"] = json.dumps(split_max)
    diff = [f"{k}={meta.get(k)!r} (want {v!r})" for k, v in want.items() if meta.get(k) != v]
    return "; ".join(diff) or None


def cached_graph(bundle, mode: str, precision: str, cache_dir: str | os.PathLike | None = None,
                 split_max: float = 0.0, *, filename: str | None = None, digest: str | None = None,
                 rebuild: bool = False) -> Path:
    """The ONNX graph of ``bundle`` for ``mode``/``precision`` (``mode`` may be ``"classifier"``),
    exported into the cache when missing, stale or ``rebuild``. ``split_max`` (swap): 0 = no layer split,
    every masked weight whole, the right graph for ONNX Runtime (see :mod:`adsrt.export.swap_split`).
    ``filename`` overrides the default file name; ``digest`` saves recomputing the bundle's."""
    from adsrt.export.onnx_export import OnnxExportConfig, export_onnx

    digest = bundle.digest() if digest is None else digest
    folder = cache_root(cache_dir) / "onnx" / digest[:16]
    if filename is None:
        filename = f"{mode}-{precision}-split{split_max:g}.onnx" if mode == "swap" else f"{mode}-{precision}.onnx"
    path = folder / filename
    if path.is_file() and not rebuild:
        why = _graph_matches(path, digest, mode, precision, split_max)
        if why is None:
            log.info("cached graph %s", path)
            return path
        log.warning("cached graph %s is stale (%s); exporting again", path, why)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot create the graph cache {folder}: {exc}") from exc
    log.info("exporting the %s graph (%s) of bundle %s into %s (once; later runs reuse it)",
             mode, precision, digest[:12], path)
    export_onnx(bundle, path, OnnxExportConfig(mode=mode, precision=precision, split_max=split_max))
    return path
