"""Benchmark of the ``ads_update`` kernel (the swap mode's weight update): the fused update against its
floor and two baselines, in one run.

Shared by ``benchmarks/bench_ads_update.py`` (which upserts rows into ``benchmarks/results/ads_update.csv``)
and ``adsrt bench ads-update`` (alias ``adsrt bench swap``). Methods, all timed on the same model, device
and dtype:

- ``fused``: :func:`adsrt.kernels.ads_update.ads_update` with ``validate=False`` (the sync-free path a
  frame loop or a CUDA graph uses);
- ``empty_launch``: the floor of the fused update's framework: with the Triton backend an empty Triton
  kernel; with the torch backend (CPU, or CUDA without Triton) one in-place ATen op on a one-element
  tensor (``x.zero_()``), i.e. the dispatcher's fixed cost, which is what "launching" costs there;
- ``naive_per_layer``: ``w.copy_(w_um + sum_d c_d * delta_d * M_d)`` per masked layer with dense
  fp32 delta and bool mask tensors (what one writes without a layout);
- ``load_state_dict``: switching whole models, ``model.load_state_dict`` of an IM-size state dict
  already on the device.

Each sample repeats a call until at least ``min_sample_us`` have passed (synchronising once at the
end on CUDA), so a sample is host throughput per call, launch overhead included: the quantity that
bounds a frame loop. Ratios are from the same run (these machines are noisy; ratios measured together
beat absolute numbers from different runs). No trained bundle exists yet, so the bundle is the backbone
with random sparse deltas at ``q`` per degradation; timing depends only on the sizes, not the values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from adsrt.arch import build_backbone
from adsrt.bench.timing import BenchConfig, Machine, percentiles, torch_threads
from adsrt.bundle import Bundle, synthetic_bundle
from adsrt.errors import AdsrtError, check_choice
from adsrt.kernels.ads_layout import AdsLayout, build_ads_layout

log = logging.getLogger(__name__)

METHODS = ("fused", "empty_launch", "naive_per_layer", "load_state_dict")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CSV_KEY = ("device", "torch", "triton", "backend", "backbone", "granularity", "q", "k", "dtype", "method")
CSV_COLUMNS = (
    "date",
    *CSV_KEY,
    "deltas",
    "p20_us",
    "p50_us",
    "p80_us",
    "bytes",
    "gb_per_s",
    "peak_gb_per_s",
    "naive_over_fused",
    "fused_over_empty",
    "load_state_dict_over_fused",
)


@dataclass(frozen=True)
class AdsUpdateBenchConfig(BenchConfig):
    """The bundle and threads (:class:`adsrt.bench.timing.BenchConfig`), then where and how to time."""

    device: str = "cpu"
    dtype: str = "fp32"
    backend: str = "auto"
    iters: int = 100  # timed samples per method
    warmup: int = 10
    min_sample_us: float = 1000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("device", self.device, ("cpu", "cuda"))


@dataclass(frozen=True)
class MethodTiming:
    method: str
    p20_us: float
    p50_us: float
    p80_us: float
    bytes_moved: int  # the least the method must read and write (0 for the floor)


@dataclass
class AdsUpdateBenchResult:
    config: AdsUpdateBenchConfig
    machine: Machine
    backend: str
    rows: list[MethodTiming]
    peak_gb_per_s: float | None
    layout_summary: str
    notes: list[str] = field(default_factory=list)

    def p50(self, method: str) -> float:
        return next(r.p50_us for r in self.rows if r.method == method)

    @property
    def ratios(self) -> dict[str, float]:
        fused = self.p50("fused")
        return {
            "naive_over_fused": self.p50("naive_per_layer") / fused,
            "fused_over_empty": fused / self.p50("empty_launch"),
            "load_state_dict_over_fused": self.p50("load_state_dict") / fused,
        }

    def to_json(self) -> dict:
        """The stable ``--json`` schema: device, rows (method and quantiles), ratios of the p50s."""
        return {
            "device": self.machine.device,
            "rows": [
                {"method": r.method, "p20_us": r.p20_us, "p50_us": r.p50_us, "p80_us": r.p80_us} for r in self.rows
            ],
            "ratios": self.ratios,
        }

    def csv_rows(self) -> list[dict[str, str]]:
        c, ratios = self.config, self.ratios
        rows = []
        for r in self.rows:
            gbps = r.bytes_moved / (r.p50_us * 1e-6) / 1e9 if r.bytes_moved else None
            rows.append(
                {
                    **self.machine.row(CSV_COLUMNS),
                    "backend": self.backend,
                    "backbone": c.backbone,
                    "granularity": c.granularity,
                    "q": f"{c.q:g}",
                    "k": str(len(c.degradations)),
                    "dtype": c.dtype,
                    "method": r.method,
                    "deltas": "random (no trained bundle)",
                    "p20_us": f"{r.p20_us:.2f}",
                    "p50_us": f"{r.p50_us:.2f}",
                    "p80_us": f"{r.p80_us:.2f}",
                    "bytes": str(r.bytes_moved),
                    "gb_per_s": "" if gbps is None else f"{gbps:.2f}",
                    "peak_gb_per_s": "" if self.peak_gb_per_s is None else f"{self.peak_gb_per_s:.0f}",
                    **{name: f"{value:.2f}" for name, value in ratios.items()},
                }
            )
        return rows

    def table(self) -> str:
        """Human-readable report (the CLI and the script print it)."""
        lines = [
            f"ads_update benchmark: {self.config.describe()}, {self.config.dtype}",
            f"{self.machine.describe()}; backend {self.backend}",
            *self.notes,
            self.layout_summary,
            f"{'method':<16} {'p20 us':>10} {'p50 us':>10} {'p80 us':>10} {'MB moved':>9} {'GB/s':>7}",
        ]
        for r in self.rows:
            gbps = f"{r.bytes_moved / (r.p50_us * 1e-6) / 1e9:7.1f}" if r.bytes_moved else f"{'-':>7}"
            lines.append(
                f"{r.method:<16} {r.p20_us:>10.2f} {r.p50_us:>10.2f} {r.p80_us:>10.2f} {r.bytes_moved / 1e6:>9.2f} {gbps}"
            )
        peak = "unknown" if self.peak_gb_per_s is None else f"{self.peak_gb_per_s:.0f} GB/s"
        lines.append(f"device peak memory bandwidth: {peak}")
        lines.append("ratios (p50): " + ", ".join(f"{k} {v:.1f}x" for k, v in self.ratios.items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- timing


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    iters: int,
    warmup: int,
    min_sample_us: float,
    on_sample: Callable[[], object] | None = None,
) -> np.ndarray:
    """Microseconds per call of ``fn``, ``iters`` samples, each averaging enough calls to last
    ``min_sample_us`` (one synchronisation per sample, so launches overlap as in a frame loop)."""
    sync = _synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter_ns()
    fn()
    sync()
    single_us = max((time.perf_counter_ns() - start) / 1e3, 0.05)
    inner = max(1, math.ceil(min_sample_us / single_us))
    samples = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        sync()
        samples[i] = (time.perf_counter_ns() - start) / 1e3 / inner
        if on_sample is not None:
            on_sample()
    return samples


def peak_bandwidth_gb_per_s(device: torch.device) -> float | None:
    """Theoretical DRAM bandwidth from the CUDA device properties (DDR: 2 transfers per clock); None on
    CPUs and where torch does not report the memory clock and bus width."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


# ------------------------------------------------------------------------------------------- baselines


def _naive_per_layer(
    layout: AdsLayout, bundle: Bundle, device: torch.device
) -> tuple[Callable[[torch.Tensor], None], int]:
    """The update written per layer with dense tensors; returns (update(c), bytes it must move)."""
    params = {name: module.weight for name, module in layout.modules.items()}
    layers = []
    n_bytes = 0
    for name, slot in layout.slots.items():
        terms = []
        for d_index, d in enumerate(bundle.degradations):
            delta = bundle.deltas[d].get(name)
            if delta is None:
                continue
            unit = slot.unit_layout
            where = unit.element_offsets(delta.units).reshape(-1)
            dense = torch.zeros(unit.numel)
            dense[where] = delta.values.reshape(-1)
            mask_dense = torch.zeros(unit.numel, dtype=torch.bool)  # M_d expanded to values
            mask_dense[where] = True
            terms.append((d_index, dense.view(unit.shape).to(device), mask_dense.view(unit.shape).to(device)))
        if terms:
            w_um = bundle.um_state[name].float().to(device)
            layers.append((params[name], w_um, terms))
            n_bytes += slot.numel * (4 + 5 * len(terms) + layout.arena.element_size())

    def update(c: torch.Tensor) -> None:
        cs = c.unbind(0)
        with torch.no_grad():
            for weight, w_um, terms in layers:
                acc = w_um
                for d_index, delta, mask in terms:
                    acc = acc + cs[d_index] * delta * mask
                weight.copy_(acc)

    return update, n_bytes


def _floor(backend: str, device: torch.device) -> Callable[[], object]:
    x = torch.zeros(1, device=device)
    if backend == "triton":
        from adsrt.kernels.ads_update import empty_launch

        return lambda: empty_launch(x)
    return x.zero_


# ---------------------------------------------------------------------------------------------- driver


def run_ads_update_benchmark(config: AdsUpdateBenchConfig) -> AdsUpdateBenchResult:
    """Build the model and layout, check that the fused and naive updates agree, then time all methods."""
    with torch_threads(config.threads):
        return _run(config)


def _run(config: AdsUpdateBenchConfig) -> AdsUpdateBenchResult:
    from tqdm import tqdm

    from adsrt.kernels.ads_update import HAS_TRITON, ads_update, resolve_backend

    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdsrtError("--device cuda: torch sees no CUDA device on this machine")
    dtype = DTYPES[config.dtype]
    bundle = synthetic_bundle(
        config.backbone, config.degradations, q=config.q, granularity=config.granularity, seed=config.seed
    )
    model = bundle.build_um()
    layout = build_ads_layout(model, bundle, device=device, dtype=dtype)
    backend = resolve_backend(device, config.backend)
    c = torch.softmax(torch.randn(len(config.degradations), generator=torch.Generator().manual_seed(config.seed)), 0)
    c = c.to(device)

    naive, naive_bytes = _naive_per_layer(layout, bundle, device)
    ads_update(layout, c, backend=backend)
    fused_weights = layout.arena.clone()
    naive(c)
    atol = 1e-6 if dtype == torch.float32 else 1e-2
    if not torch.allclose(fused_weights.float(), layout.arena.float(), atol=atol, rtol=atol):
        raise AdsrtError("fused and naive per-layer updates disagree; refusing to time a wrong result")

    other = build_backbone(bundle.backbone).to(device=device, dtype=dtype).eval()
    im_state = {k: (v + 0.01 * torch.randn_like(v)).to(device=device, dtype=dtype) for k, v in bundle.um_state.items()}
    state_bytes = sum(v.numel() * v.element_size() for v in im_state.values())

    methods: dict[str, tuple[Callable[[], object], int]] = {
        "fused": (lambda: ads_update(layout, c, backend=backend, validate=False), layout.update_bytes),
        "empty_launch": (_floor(backend, device), 0),
        "naive_per_layer": (lambda: naive(c), naive_bytes),
        "load_state_dict": (lambda: other.load_state_dict(im_state), 2 * state_bytes),
    }
    rows = []
    with tqdm(total=len(methods) * config.iters, desc="bench ads-update", unit="sample", disable=not config.progress) as bar:
        for method, (fn, n_bytes) in methods.items():
            bar.set_postfix_str(method)
            samples = time_call(fn, device, config.iters, config.warmup, config.min_sample_us, bar.update)
            rows.append(MethodTiming(method, *percentiles(samples), n_bytes))
    if layout.refused():
        raise AdsrtError("an update was refused during the benchmark (non-finite coefficients?)")

    notes = [
        f"bundle: {config.backbone} with random sparse deltas (no trained bundle yet), "
        f"q={config.q:g} per degradation, seed {config.seed}",
        "empty_launch: "
        + ("an empty Triton kernel" if backend == "triton" else "one in-place ATen op on a 1-element tensor (x.zero_())"),
        "fused: ads_update(validate=False), the sync-free path"
        + ("" if HAS_TRITON else "; triton not installed")
        + (f"; {torch.get_num_threads()} torch threads" if device.type == "cpu" else ""),
    ]
    return AdsUpdateBenchResult(
        config=config,
        machine=Machine.detect(device),
        backend=backend,
        rows=rows,
        peak_gb_per_s=peak_bandwidth_gb_per_s(device),
        layout_summary=layout.describe(),
        notes=notes,
    )
