"""Per-frame latency of the runtime: every available backend and mode at 480p, 720p and 1080p.

Shared by ``benchmarks/bench_latency.py`` (which upserts rows into ``benchmarks/results/latency.csv``)
and ``adsrt bench latency``. One row per (backend, mode, size): a :class:`adsrt.runtime.restorer.Restorer` per
(backend, mode) restores the same frame ``iters`` times (after ``warmup`` frames), the restorers taking
turns frame by frame so that the drifts of a shared machine hit every mode alike; each frame's wall
time, from the uint8 array in to the uint8 array out, is one sample, and p50/p90/p99 are over those
samples (with few samples p99 is close to the maximum). ``max_seconds`` caps the timed seconds per row
(at least ``min_iters`` frames). Modes:

- ``um``: the unified model alone (no classifier, no update): the baseline;
- ``swap``: classify -> fused in-place update of the masked weights -> restore;
- ``branch``: classify -> restore with constant weights and c as an input.

``ads_overhead_frac`` is the median over frames of (classify + update) / frame time: what ADS adds to a
frame (the branch mode's extra convolutions are inside ``restore``; ``over_um_frac``, the p50 of the
mode over the p50 of ``um`` at that size minus 1, covers them). Whole frames, no tiling. Targets
(issue 5): ADS overhead <= 10% of a 480p frame on CPU, <= 5% of a 720p frame on GPU.

No trained bundle exists yet, so the bundle is the backbone with random sparse deltas at ``q`` per
degradation and a classifier of the default preset's size with random weights: latency depends on the
sizes, not the values. The frame is uniform random noise (content does not change the work).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from adsrt.arch import ClassifierConfig
from adsrt.bench.timing import BenchConfig, Machine, check_choices, percentiles, torch_threads
from adsrt.bundle import synthetic_bundle
from adsrt.errors import AdsrtError, check_choice
from adsrt.runtime.backends import BACKENDS, MODES, PRECISIONS, available_backends, resolve_device

log = logging.getLogger(__name__)

SIZES: dict[str, tuple[int, int]] = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}
CSV_KEY = ("device", "torch", "backend", "backbone", "mode", "precision", "granularity", "q", "k", "height", "width")
CSV_COLUMNS = (
    "date",
    *CSV_KEY,
    "threads",
    "iters",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "decode_ms",
    "classify_ms",
    "update_ms",
    "restore_ms",
    "encode_ms",
    "ads_overhead_frac",
    "over_um_frac",
    "over_torch_um_frac",
    "rss_mb",
    "loadavg",
    "triton",
    "onnxruntime",
    "deltas",
)


@dataclass(frozen=True)
class LatencyBenchConfig(BenchConfig):
    """The bundle and threads (:class:`adsrt.bench.timing.BenchConfig`), then what to run and how long."""

    classifier: ClassifierConfig | None = None  # None: the default preset's (input 128, width 16, depth 4)
    device: str = "auto"
    precision: str = "fp32"
    backends: tuple[str, ...] | None = None  # None: every available backend
    modes: tuple[str, ...] = ("um", "swap", "branch")
    sizes: tuple[str, ...] = ("480p", "720p", "1080p")
    iters: int = 10  # timed frames per row (fewer when max_seconds runs out, never fewer than min_iters)
    min_iters: int = 3
    max_seconds: float = 60.0  # per row, timed frames only
    warmup: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices("modes", self.modes, MODES)
        check_choices("sizes", self.sizes, SIZES)
        if self.backends is not None:
            check_choices("backends", self.backends, BACKENDS)
        check_choice("precision", self.precision, PRECISIONS)
        if self.min_iters < 1 or self.max_seconds <= 0:
            raise AdsrtError("min_iters must be >= 1 and max_seconds > 0")


@dataclass(frozen=True)
class LatencyRow:
    backend: str
    mode: str
    height: int
    width: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    stages_ms: dict[str, float]  # median per stage
    ads_overhead_frac: float
    rss_mb: float | None
    loadavg: float | None = None  # 1-minute load average after the row (a shared machine's noise)
    over_um_frac: float | None = None  # p50 / p50 of this backend's um row at this size - 1
    over_torch_um_frac: float | None = None  # p50 / p50 of the torch um row at this size - 1 (same run)


@dataclass
class LatencyBenchResult:
    config: LatencyBenchConfig
    machine: Machine
    rows: list[LatencyRow]
    skipped_backends: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` schema: device and one row per (backend, mode, size)."""
        return {
            "device": self.machine.device,
            "rows": [
                {"backend": r.backend, "mode": r.mode, "height": r.height, "width": r.width, "p50_ms": r.p50_ms,
                 "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "ads_overhead_frac": r.ads_overhead_frac}
                for r in self.rows
            ],
        }

    def csv_rows(self) -> list[dict[str, str]]:
        c = self.config
        out = []
        for r in self.rows:
            out.append({
                **self.machine.row(CSV_COLUMNS), "backend": r.backend, "backbone": c.backbone, "mode": r.mode, "precision": c.precision, "granularity": c.granularity,
                "q": f"{c.q:g}", "k": str(len(c.degradations)), "height": str(r.height), "width": str(r.width),
                "iters": str(r.iters), "p50_ms": f"{r.p50_ms:.2f}",
                "p90_ms": f"{r.p90_ms:.2f}", "p99_ms": f"{r.p99_ms:.2f}",
                **{f"{stage}_ms": f"{value:.3f}" for stage, value in r.stages_ms.items()},
                "ads_overhead_frac": f"{r.ads_overhead_frac:.4f}",
                "over_um_frac": "" if r.over_um_frac is None else f"{r.over_um_frac:.4f}",
                "over_torch_um_frac": "" if r.over_torch_um_frac is None else f"{r.over_torch_um_frac:.4f}",
                "rss_mb": "" if r.rss_mb is None else f"{r.rss_mb:.0f}",
                "loadavg": "" if r.loadavg is None else f"{r.loadavg:.2f}",
                "deltas": "random (no trained bundle)",
                "onnxruntime": self.machine.onnxruntime if r.backend == "onnxruntime" else "",
            })
        return out

    def table(self) -> str:
        lines = [
            f"latency benchmark: {self.config.describe()}, {self.config.precision}",
            self.machine.describe(),
            *self.notes,
            f"{'backend':<12} {'mode':<7} {'size':>10} {'n':>3} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
            f"{'classify':>9} {'update':>8} {'restore':>9} {'ADS/frame':>9} {'vs UM':>7} {'vs torch UM':>11}",
        ]
        for r in self.rows:
            s = r.stages_ms
            vs_um = "" if r.over_um_frac is None else f"{r.over_um_frac:+.1%}"
            vs_torch = "" if r.over_torch_um_frac is None else f"{r.over_torch_um_frac:+.1%}"
            lines.append(
                f"{r.backend:<12} {r.mode:<7} {f'{r.width}x{r.height}':>10} {r.iters:>3} {r.p50_ms:>9.1f} "
                f"{r.p90_ms:>9.1f} {r.p99_ms:>9.1f} {s['classify']:>9.2f} {s['update']:>8.2f} {s['restore']:>9.1f} "
                f"{r.ads_overhead_frac:>9.2%} {vs_um:>7} {vs_torch:>11}"
            )
        for name, reason in self.skipped_backends.items():
            lines.append(f"{name}: not measured ({reason})")
        loads = [r.loadavg for r in self.rows if r.loadavg is not None]
        if loads:
            lines.append(f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
                         f"({os.cpu_count()} CPUs; above the torch threads used, other processes shared the CPU)")
        return "\n".join(lines)


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_latency_benchmark(config: LatencyBenchConfig) -> LatencyBenchResult:
    with torch_threads(config.threads):
        return _run(config)


class _Samples:
    """Per-frame samples of one (backend, mode) at one size."""

    def __init__(self) -> None:
        self.totals: list[float] = []
        self.ads: list[float] = []
        self.stages: dict[str, list[float]] = {s: [] for s in ("decode", "classify", "update", "restore", "encode")}

    def add(self, elapsed_ms: float, timings) -> None:
        self.totals.append(elapsed_ms)
        self.ads.append(timings.ads / max(timings.total, 1e-9))
        for stage, values in self.stages.items():
            values.append(getattr(timings, stage))


def _time_size(restorers: dict, frame: np.ndarray, config: LatencyBenchConfig, bar) -> dict[tuple[str, str], _Samples]:
    """Interleaved: each round restores the frame once with every restorer, so drifts of a shared machine
    hit every mode alike (the ``vs UM`` ratios stay fair)."""
    for restorer in restorers.values():
        for _ in range(config.warmup):
            restorer.restore(frame)
    samples = {key: _Samples() for key in restorers}
    spent, rounds = 0.0, 0
    budget = config.max_seconds * len(restorers)
    while rounds < config.iters and (rounds < config.min_iters or spent < budget):
        for key, restorer in restorers.items():
            start = time.perf_counter()
            restorer.restore(frame)
            elapsed = time.perf_counter() - start
            spent += elapsed
            samples[key].add(elapsed * 1e3, restorer.timings)
            bar.update(1)
        rounds += 1
    return samples


def _run(config: LatencyBenchConfig) -> LatencyBenchResult:
    from tqdm import tqdm

    from adsrt.runtime.restorer import Restorer, RestorerConfig

    device = resolve_device(config.device)
    reasons = available_backends()
    if device.type == "cuda" and reasons.get("onnxruntime") is None:
        reasons["onnxruntime"] = "adsrt runs ONNX Runtime on the CPU (use --device cpu)"
    names = list(config.backends) if config.backends is not None else list(BACKENDS)
    backends = [n for n in names if reasons[n] is None]
    skipped = {n: reasons[n] for n in names if reasons[n] is not None}
    if not backends:
        raise AdsrtError(f"none of the backends {names} is available here: {skipped}")
    k = len(config.degradations)
    # The default preset's classifier: 128 px training crops, so a frame is viewed through 3 x 3 windows.
    classifier = config.classifier or ClassifierConfig(num_classes=k + 1, input_size=128, width=16, depth=4,
                                                       window=128, grid=3)
    bundle = synthetic_bundle(config.backbone, config.degradations, q=config.q, granularity=config.granularity,
                              seed=config.seed, classifier=classifier)
    frames = {s: np.random.default_rng(config.seed).integers(0, 256, (*SIZES[s], 3), dtype=np.uint8)
              for s in config.sizes}
    rows: list[LatencyRow] = []
    total = len(backends) * len(config.modes) * len(config.sizes) * config.iters
    restorers = {
        (backend, mode): Restorer(bundle, RestorerConfig(backend=backend, device=str(device), precision=config.precision,
                                                         mode=mode, memory_limit_mb=0.0, tile=None))
        for backend in backends
        for mode in config.modes
    }
    with tqdm(total=total, desc="bench latency", unit="frame", disable=not config.progress) as bar:
        for size in config.sizes:
            bar.set_postfix_str(size)
            h, w = SIZES[size]
            for (backend, mode), s in _time_size(restorers, frames[size], config, bar).items():
                stages = {stage: float(np.median(v)) for stage, v in s.stages.items()}
                rows.append(LatencyRow(backend, mode, h, w, len(s.totals), *percentiles(s.totals, (50, 90, 99)), stages,
                                       0.0 if mode == "um" else float(np.median(s.ads)), rss_mb(), _loadavg()))
    restorers.clear()
    order = [(b, m) for b in backends for m in config.modes]
    rows.sort(key=lambda r: (order.index((r.backend, r.mode)), r.height))
    um = {(r.backend, r.height): r.p50_ms for r in rows if r.mode == "um"}
    rows = [
        replace(r, over_um_frac=r.p50_ms / um[(r.backend, r.height)] - 1.0) if (r.backend, r.height) in um else r
        for r in rows
    ]
    rows = [
        replace(r, over_torch_um_frac=r.p50_ms / um[("torch", r.height)] - 1.0) if ("torch", r.height) in um else r
        for r in rows
    ]
    notes = [
        f"bundle: {config.backbone} with random sparse deltas at q={config.q:g} per degradation "
        f"(no trained bundle yet), classifier input {classifier.input_size}, width {classifier.width}, "
        f"depth {classifier.depth}, {classifier.grid}x{classifier.grid} windows of {classifier.window} px; "
        "whole frames, no tiling",
        "frame time: uint8 array in -> uint8 array out (decode, classify, update, restore, encode); "
        "ADS/frame = median of (classify + update) / frame; vs UM = p50 / p50 of the same backend's um row - 1; "
        "vs torch UM = p50 / p50 of the torch um row - 1 (the same run, frames interleaved)",
    ]
    return LatencyBenchResult(
        config=config,
        machine=Machine.detect(device),
        rows=rows,
        skipped_backends=skipped,
        notes=notes,
    )
