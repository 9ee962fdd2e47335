"""The ``onnxruntime`` backend of the runtime: the exported graphs under ONNX Runtime (CPU).

Graphs come from a file the user exported (``graph=``) or are exported on first use and cached
(through :func:`adsrt.runtime.artifacts.exported`; stale entries are exported again, never run).

Modes:

- ``um``, ``branch`` and ``local``: constant weights; branch feeds ``c`` ``[B, k]`` as the graph input ``c``,
  local a coefficient map ``[B, k, h, w]``.
- ``swap``: the graph's refittable initializers (``ads.<layer>``, :mod:`adsrt.runtime.refit`) are
  also declared graph inputs, which ONNX Runtime lets a run override. The cached swap graph splits no
  layer (``split_max=0``: every masked weight is overridden whole, which costs ONNX Runtime nothing,
  while a split costs a gather per layer); a user's graph with split layers works too. ``update(c)`` runs the fused ADS
  update (:mod:`adsrt.kernels`, torch path) on a CPU copy of the UM weights and gathers the masked rows
  into preallocated buffers; ``restore`` feeds them as those inputs. Nothing is re-initialised per frame.

The classifier runs as its own graph (``mode="classifier"`` export) when the bundle has one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from adsrt.errors import BackendError
from adsrt.kernels.ads_layout import build_ads_layout
from adsrt.kernels.ads_update import ads_update, resolve_backend
from adsrt.runtime.artifacts import exported, exporter_unavailable_reason
from adsrt.runtime.backends import BRANCH_MODES, MODES, Backend, resolve_device
from adsrt.runtime.onnx_graph import GRAPH_PRECISIONS, expose_initializers, graph_metadata, load_onnx
from adsrt.runtime.refit import gather_refit_weights, swap_rows

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend", "onnxruntime_unavailable_reason"]


def onnxruntime_unavailable_reason() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'adsrt[export]')"
    return exporter_unavailable_reason()  # graphs come from the exporter on first use


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU, running the graphs :mod:`adsrt.export.onnx_export` writes (module doc)."""

    name = "onnxruntime"

    def __init__(self, bundle, *, device: str | torch.device | None = "auto", precision: str = "fp32",
                 mode: str = "swap", graph: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        reason = onnxruntime_unavailable_reason()
        if reason:
            raise BackendError(f"the onnxruntime backend is unavailable: {reason}")
        import onnxruntime as ort

        if mode not in MODES:
            raise BackendError(f"mode must be one of {MODES}, got {mode!r}")
        if precision not in GRAPH_PRECISIONS:
            raise BackendError(f"the onnxruntime backend runs {sorted(GRAPH_PRECISIONS)}, not {precision!r}")
        self.device = resolve_device("cpu" if device in (None, "auto") else device)
        if self.device.type != "cpu":
            raise BackendError("the onnxruntime backend runs on the CPU here; use --backend tensorrt or torch on CUDA")
        self.mode, self.precision = mode, precision
        self.dtype = torch.float32  # graph I/O is float32 at every precision
        self.degradations = list(bundle.degradations)
        self.k = len(self.degradations)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._options = options

        if graph is not None:
            path = Path(graph)
            meta = graph_metadata(load_onnx(path))
            want = {"adsrt.mode": mode, "adsrt.bundle_digest": bundle.digest()}
            bad = [f"{k} is {meta.get(k)!r}, expected {v!r}" for k, v in want.items() if meta.get(k) != v]
            if meta.get("adsrt.fused_classifier") == "true":
                bad.append("it is a fused graph (classifier inside); give the plain branch graph")
            if bad:
                raise BackendError(f"{path} does not fit: " + "; ".join(bad))
            self.precision = meta.get("adsrt.precision", precision)
        else:
            path = exported("onnx", bundle, mode=mode, precision=precision, cache_dir=cache_dir)
        self.graph_path = path
        proto = load_onnx(path)
        self.refit_names: dict[str, str] = json.loads(graph_metadata(proto).get("adsrt.refit", "{}"))
        if mode == "swap":
            proto = expose_initializers(proto, list(self.refit_names.values()))
        self.session = self._session(proto, path)

        # The classifier graph is exported/loaded on the first classify() (um mode may never call it).
        self.classifier_session = None
        self.has_classifier = bundle.classifier is not None
        self._bundle, self._cache_dir = bundle, cache_dir

        self.layout = None
        self._feeds: dict[str, np.ndarray] = {}
        if mode == "swap":
            model = bundle.build_um()
            split_max = json.loads(graph_metadata(proto).get("adsrt.split_max", "0.5"))
            self.rows = swap_rows(bundle, model, split_max)
            if {r.name for r in self.rows.values()} != set(self.refit_names.values()):
                raise BackendError(f"{path}: its refittable weights do not match the bundle's masked layers")
            self.layout = build_ads_layout(model, bundle, device=self.device, dtype=torch.float32)
            self.update_backend = resolve_backend(self.device, "auto")
            self._weights = {layer: self.layout.modules[layer].weight.detach() for layer in self.rows}
            # fp32 whole layers: the feed is a view of the arena, so the fused update writes it directly.
            # Split layers (a user's graph) gather their rows, fp16 graphs cast: those go through buffers.
            direct = self.precision == "fp32"
            self._staged = {layer: r for layer, r in self.rows.items() if not (direct and r.whole)}
            self._feeds = {r.name: self._weights[layer].numpy() for layer, r in self.rows.items()
                           if layer not in self._staged}
            self._buffers = gather_refit_weights(self._weights, self._staged)  # starts at the UM rows
            # fp32: the feed is the buffer itself; fp16: a half copy made per update
            self._feeds.update({name: buf.numpy() if direct else np.empty(tuple(buf.shape), np.float16)
                                for name, buf in self._buffers.items()})
            self._sync_feeds()
        self._c: np.ndarray | None = None

    def _session(self, proto, path: Path):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(proto.SerializeToString(), self._options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (e.g. NOT_IMPLEMENTED for fp16 ops)
            raise BackendError(f"ONNX Runtime cannot run {path} ({self.precision}) on the CPU: {exc}") from exc

    def _sync_feeds(self) -> None:
        """fp16 graphs: cast the staged buffers into their half feeds (fp32 feeds are the buffers)."""
        if self.precision == "fp16":
            for name, buf in self._buffers.items():
                self._feeds[name][...] = buf.numpy()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return onnxruntime_unavailable_reason()

    def classify(self, x: Tensor) -> Tensor:
        if not self.has_classifier:
            raise BackendError("this bundle has no degradation classifier; force a degradation instead")
        if self.classifier_session is None:
            path = exported("onnx", self._bundle, mode="classifier", precision="fp32", cache_dir=self._cache_dir)
            self.classifier_session = self._session(load_onnx(path), path)
        (logits,) = self.classifier_session.run(None, {"x": x.float().contiguous().numpy()})
        return torch.from_numpy(logits)

    def update(self, c: Tensor) -> None:
        if self.mode == "swap":
            if c.shape[0] != 1:
                raise BackendError("swap mode applies one c to all frames of a batch; use branch mode to mix them")
            ads_update(self.layout, c[0], backend=self.update_backend, validate=False)
            if self._staged:
                gather_refit_weights(self._weights, self._staged, out=self._buffers)
                self._sync_feeds()
        elif self.mode in BRANCH_MODES:
            self._c = c.float().contiguous().numpy()

    def restore(self, x: Tensor) -> Tensor:
        feeds = {"x": x.float().contiguous().numpy()}
        if self.mode in BRANCH_MODES:
            if self._c is None:
                raise BackendError(f"{self.mode} mode: call update(c) before restore")
            c = self._c
            if c.shape[0] != x.shape[0]:
                c = np.broadcast_to(c, (x.shape[0], *c.shape[1:])).copy()
            feeds["c"] = c
        elif self.mode == "swap":
            feeds.update(self._feeds)
        (y,) = self.session.run(None, feeds)
        return torch.from_numpy(y)

    def describe(self) -> str:
        threads = self._options.intra_op_num_threads
        return f"onnxruntime backend, {self.mode} mode, cpu, {self.precision}, {threads} threads, graph {self.graph_path}"
