"""The one-call GPU check (``make gpu-check``): what a lent NVIDIA GPU must show before adsrt's CUDA paths are
trusted. One command, a few minutes, a log and CSV rows.

Checks, in order (each a row of ``OUT/gpu_check.csv`` with status ok / fail / skip, seconds and detail):

- ``environment``: GPU, compute capability, torch, triton, TF32 defaults;
- ``gpu_tests``: ``pytest -m gpu`` (TF32 off: tests/conftest.py), then again with TF32 on
  (``ADSRT_TEST_TF32=1``; informational: fp32 comparisons are expected to be TF32-sensitive);
- ``update_stress``: hundreds of fused updates with random c, eager and as CUDA-graph replays, on a layout
  of tens of thousands of Triton programs, each arena checked against a float64 recurrence of the table;
  both update paths (triton, torch);
- ``graph_frames``: a classify -> c -> update -> restore frame, eager against CUDA-graph replay, for
  fp32/fp16/bf16 with the update forced to Triton and to the torch path;
- ``sync_free``: the same frame body under ``torch.cuda.set_sync_debug_mode("error")`` (no host sync
  between classify, update and restore);
- ``large_arena``: an arena over 2^31 bytes, its last unit updated right (index arithmetic past int32 bytes);
- ``amp_training``: a few bf16 and fp16 AMP training steps, then a resume from the checkpoint;
- ``train_speed``: training samples/s of nafnet-small (adsrt.bench.training): bf16 AMP, fp32, NCHW,
  ``torch.compile``, batch 64 and 128 px crops, into ``OUT/train.csv``;
- ``bench``: the GPU rows of the ads_update and latency benchmarks, upserted into ``OUT``'s CSVs, and the ADS
  overhead per frame (Restorer, fp16, 720p and 1080p, CUDA graphs off and on: ``OUT/gpu_frames.csv``).

Without a GPU it says so and exits 2. ``--dry-run`` runs the same logic on the CPU at toy sizes (the Triton
kernel in its interpreter, eager frames only, no pytest), so CI keeps the check from rotting.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adsrt.bench.timing import Machine
from adsrt.fileio import upsert_csv

log = logging.getLogger(__name__)

__all__ = ["CHECKS", "CheckRow", "main", "run_checks"]

CSV_KEY = ("device", "torch", "triton", "check")
CSV_COLUMNS = ("device", "torch", "triton", "date", "check", "status", "seconds", "detail")


@dataclass
class CheckRow:
    check: str
    status: str  # ok | fail | skip
    seconds: float
    detail: str


@dataclass(frozen=True)
class Context:
    device: torch.device
    dry_run: bool
    out: Path
    repo: Path


# ------------------------------------------------------------------------------------------------ checks


def check_environment(ctx: Context) -> str:
    import adsrt.kernels.ads_update as ku

    parts = [f"torch {torch.__version__}", f"triton {ku.TRITON_VERSION}"]
    if ctx.device.type == "cuda":
        cap = torch.cuda.get_device_capability(ctx.device)
        parts += [torch.cuda.get_device_name(ctx.device), f"sm_{cap[0]}{cap[1]}",
                  f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}",
                  f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"]
    else:
        parts.append(f"cpu, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    return ", ".join(parts)


def check_gpu_tests(ctx: Context) -> str:
    if ctx.dry_run:
        raise _Skip("the dry run does not start pytest (it runs inside the test suite)")
    results = []
    for label, env in (("tf32 off", {}), ("tf32 on", {"ADSRT_TEST_TF32": "1"})):
        logfile = ctx.out / f"gpu_tests_{label.replace(' ', '_')}.log"
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                   str(ctx.repo / "tests")], cwd=ctx.repo, env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired as exc:
            logfile.write_text(f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {exc.timeout} s")
            raise AssertionError(f"{label}: pytest -m gpu timed out after {exc.timeout} s (log {logfile})") from exc
        logfile.write_text(proc.stdout + proc.stderr)
        summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        results.append(f"{label}: {summary}")
        if label == "tf32 off" and proc.returncode != 0:
            raise AssertionError("; ".join(results))
    return "; ".join(results)  # the TF32-on pass is informational (fp32 tolerances expect TF32 off)


def _synthetic_layout(ctx: Context, backbone, q: float = 0.05, dtype: torch.dtype = torch.float32):
    from adsrt.bundle import synthetic_bundle
    from adsrt.kernels.ads_layout import build_ads_layout

    bundle = synthetic_bundle(backbone, ("noise", "blur", "rain"), q=q, seed=0, delta_scale=0.1)
    model = bundle.build_um()
    return bundle, model, build_ads_layout(model, bundle, device=ctx.device, dtype=dtype)


class _Float64Reference:
    """The update's definition in float64, on the layout's device: masked value u = base[u] + sum over its
    entries of c[column] * delta (the CSR table expanded once)."""

    def __init__(self, layout) -> None:
        rows = layout.row_ptr.to(torch.int64)
        counts = rows[1:] - rows[:-1]
        self.entry_rows = torch.repeat_interleave(torch.arange(len(counts), device=rows.device), counts)
        self.column = layout.column.to(torch.int64)
        self.delta = layout.delta.double()
        self.base = layout.base.double()
        self.offsets = layout.offsets.to(torch.int64)

    def max_error(self, layout, c: torch.Tensor) -> float:
        c = c.to(self.delta.device, torch.float64)
        want = self.base.index_add(0, self.entry_rows, c[self.column] * self.delta)
        return float((layout.arena.detach()[self.offsets].double() - want).abs().max())


def check_update_stress(ctx: Context) -> str:
    from adsrt.arch import NAFNetConfig

    # On the GPU a wide NAFNet (~18 M weights) with 40% of its kernel slices masked per degradation: millions of
    # masked values, thousands of Triton programs per launch.
    wide = NAFNetConfig(width=64, enc_blocks=(1, 1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1, 1))
    _, _, layout = _synthetic_layout(ctx, "nafnet-tiny" if ctx.dry_run else wide, q=0.05 if ctx.dry_run else 0.4)
    launches = 6 if ctx.dry_run else 60
    g = torch.Generator().manual_seed(0)
    paths = ["torch"] + (["triton"] if _triton_runs(ctx) else [])
    reference = _Float64Reference(layout)
    worst = 0.0
    with _on_device(ctx):
        for path in paths:
            worst = max(worst, _stress_path(ctx, layout, reference, path, launches, g))
    n_union = int(layout.base.numel())
    programs = -(-n_union // 1024)
    return (f"{launches} launches per path ({', '.join(paths)}; odd ones as graph replays on CUDA), "
            f"{n_union} masked values ({programs} programs), max |err| vs float64 {worst:.2e}")


def _stress_path(ctx: Context, layout, reference: _Float64Reference, path: str, launches: int,
                 g: torch.Generator) -> float:
    from adsrt.kernels.ads_update import ads_update

    worst = 0.0
    # eager launches and graph replays, each against the float64 reference
    c_dev = torch.zeros(layout.k, device=ctx.device)
    graph = None
    if ctx.device.type == "cuda":
        ads_update(layout, c_dev, backend=path, validate=False)  # compile before capture
        torch.cuda.synchronize(ctx.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ads_update(layout, c_dev, backend=path, validate=False)
    for i in range(launches):
        c = torch.rand(layout.k, generator=g) * 2 - 0.5
        c_dev.copy_(c)
        if graph is not None and i % 2:
            graph.replay()
        else:
            ads_update(layout, c_dev, backend=path, validate=False)
        err = reference.max_error(layout, c)
        worst = max(worst, err)
        if err > 1e-4:
            raise AssertionError(f"{path}: launch {i} differs from the float64 reference by {err:.3g}")
    if bool(layout.refused()):
        raise AssertionError(f"{path}: the refused flag is set after finite coefficients")
    return worst


def _bundle_with_classifier(ctx: Context):
    """A tiny bundle with random deltas and a small random classifier (frames need classify -> c)."""
    from adsrt.arch import ClassifierConfig
    from adsrt.bundle import synthetic_bundle

    return synthetic_bundle("nafnet-tiny", ("noise", "blur", "rain"), q=0.05, seed=0, delta_scale=0.1,
                            perturb_um=0.05, classifier=ClassifierConfig(num_classes=4, input_size=32, width=4,
                                                                         depth=2))


def _frame_backend(ctx: Context, bundle, precision: str, update_path: str):
    from adsrt.runtime.backends import TorchBackend

    backend = TorchBackend(bundle, device=ctx.device, precision=precision, mode="swap")
    backend.update_backend = update_path
    return backend


def _eager_frame(backend, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    from adsrt.runtime.backends import smooth_coefficients

    with torch.no_grad():
        probs = torch.softmax(backend.classify(x) / temperature, dim=1)
        backend.update(smooth_coefficients(probs, None, 0.0))
        return backend.restore(x).float()


def check_graph_frames(ctx: Context) -> str:
    from adsrt.runtime.backends import CudaGraphFrame

    bundle = _bundle_with_classifier(ctx)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)).to(ctx.device)
    precisions = ("fp32",) if ctx.device.type == "cpu" else ("fp32", "fp16", "bf16")
    paths = ["torch"] + (["triton"] if _triton_runs(ctx) else [])
    out = []
    for precision in precisions:
        outputs = {}
        for path in paths:
            backend = _frame_backend(ctx, bundle, precision, path)
            xx = x.to(backend.dtype)
            eager = _eager_frame(backend, xx)
            if ctx.device.type == "cuda":
                frame = CudaGraphFrame(backend, tuple(xx.shape))
                replay = frame.run(xx)[0].float()
                diff = float((replay - eager).abs().max())
                # a few ulps of the dtype (the torch path's scatter-add is atomic on CUDA: any sum order)
                if diff > 8 * torch.finfo(backend.dtype).eps * max(1.0, float(eager.abs().max())):
                    raise AssertionError(f"{precision}/{path}: replay differs from eager by {diff:.3g}")
            outputs[path] = eager
        if len(outputs) == 2:
            diff = float((outputs["torch"] - outputs["triton"]).abs().max())
            tol = 1e-4 if precision == "fp32" else 5e-2
            if diff > tol:
                raise AssertionError(f"{precision}: the triton and torch update paths differ by {diff:.3g}")
        out.append(f"{precision}: {', '.join(paths)} ok")
    return ("eager vs replay, " if ctx.device.type == "cuda" else "eager only (CPU), ") + "; ".join(out)


def check_sync_free(ctx: Context) -> str:
    if ctx.device.type != "cuda":
        raise _Skip("host synchronisation is a CUDA notion")
    bundle = _bundle_with_classifier(ctx)
    paths = ["torch"] + (["triton"] if _triton_runs(ctx) else [])
    with _on_device(ctx):
        for path in paths:
            backend = _frame_backend(ctx, bundle, "fp32", path)
            x = torch.rand(1, 3, 64, 96, device=ctx.device)
            _eager_frame(backend, x)  # warm up (compiles, allocates)
            torch.cuda.synchronize(ctx.device)
            torch.cuda.set_sync_debug_mode("error")
            try:
                _eager_frame(backend, x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    return f"classify -> c -> update ({', '.join(paths)}) -> restore without a host sync"


def _triton_runs(ctx: Context) -> bool:
    from adsrt.kernels.ads_update import resolve_backend

    try:
        return resolve_backend(ctx.device, "triton") == "triton"
    except Exception:  # noqa: BLE001 - "no" is the answer
        return False


def check_large_arena(ctx: Context) -> str:
    """An arena over 2^31 bytes (index arithmetic past int32 bytes), the last unit of the last layer masked."""
    from types import SimpleNamespace

    from torch import nn

    from adsrt.ads import LayerDelta
    from adsrt.kernels.ads_layout import build_ads_layout
    from adsrt.kernels.ads_update import ads_update

    channels, layers = (64, 2) if ctx.dry_run else (2048, 15)  # 15 x 2048 x 2048 x 3 x 3 fp32: 2.26 GB
    model = nn.Sequential(*(nn.Conv2d(channels, channels, 3, bias=False, device=ctx.device)
                            for _ in range(layers)))
    names = [f"{i}.weight" for i in range(layers)]
    n_units = channels * channels
    g = torch.Generator().manual_seed(0)
    units = torch.tensor([0, n_units // 2, n_units - 1])
    deltas = {name: LayerDelta(units, torch.randn(3, 9, generator=g)) for name in (names[0], names[-1])}
    source = SimpleNamespace(degradations=("a", "b"), granularity="kernel", deltas={"a": deltas, "b": {}},
                             um_state={n: p for n, p in model.state_dict().items()})
    before = {n: model.get_parameter(n).detach()[-1, -1].clone() for n in (names[0], names[-1])}
    layout = build_ads_layout(model, source)
    nbytes = layout.arena.numel() * layout.arena.element_size()
    path = "triton" if _triton_runs(ctx) else "torch"
    ads_update(layout, torch.tensor([1.0, 0.0], device=ctx.device), backend=path)
    for name in (names[0], names[-1]):
        got = model.get_parameter(name).detach()[-1, -1].cpu()  # the last unit: W[o = C-1, i = C-1]
        want = before[name].cpu() + deltas[name].values[-1].view(3, 3)
        err = float((got - want).abs().max())
        if err > 1e-5:
            raise AssertionError(f"{name}: the last unit is off by {err:.3g} in an arena of {nbytes:,} bytes")
    if not ctx.dry_run and nbytes <= 2**31:
        raise AssertionError(f"the arena is only {nbytes:,} bytes")
    return f"arena {nbytes / 2**30:.2f} GiB ({path}): the last unit of the first and of the last layer updated"


def _photo_folder(folder: Path) -> Path:
    import cv2
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.resize(getattr(data, name)(), (96, 72))[:, :, ::-1])
    return folder


def check_amp_training(ctx: Context) -> str:
    from adsrt.train.um import UMConfig, train_um

    photos = _photo_folder(ctx.out / "photos")
    dtypes = [("bf16", True), ("fp16", False)] if ctx.device.type == "cuda" else [("fp32", None)]
    done = []
    for label, bf16 in dtypes:
        out = ctx.out / f"train_{label}"
        shutil.rmtree(out, ignore_errors=True)  # a rerun must train again, not resume a finished run
        base = dict(data=str(photos), out=str(out), backbone="nafnet-tiny", batch_size=4, crop_size=32,
                    val_every=4, val_samples=4, ckpt_every=2, samples_per_epoch=16, workers=0, progress=False,
                    device=str(ctx.device), resume=True)
        real = torch.cuda.is_bf16_supported
        if bf16 is False:  # the fp16 + GradScaler path that GPUs without bf16 take
            torch.cuda.is_bf16_supported = lambda *a, **k: False
        try:
            train_um(UMConfig(steps=2, **base))
            metrics = train_um(UMConfig(steps=4, **base))  # resumes from its checkpoint at step 2
        finally:
            torch.cuda.is_bf16_supported = real
        psnr = metrics["psnr"] if metrics else float("nan")
        if not np.isfinite(psnr) or metrics.get("step") != 4:
            raise AssertionError(f"{label}: after the resume, step {metrics and metrics.get('step')}, val PSNR {psnr}")
        done.append(f"{label}: 2 + 2 steps resumed, val PSNR {psnr:.2f} dB")
    return "; ".join(done)


def check_train_speed(ctx: Context) -> str:
    """Training throughput on the device: bf16 AMP (v2) against fp32, NCHW, compile and a large batch."""
    from adsrt.bench.training import COLUMNS, KEY, TrainBenchConfig, run_train_benchmark

    photos = _photo_folder(ctx.out / "photos")
    with _on_device(ctx):
        result = run_train_benchmark(TrainBenchConfig(
            data=str(photos), backbone="nafnet-tiny" if ctx.dry_run else "nafnet-small", steps=2 if ctx.dry_run else 30,
            warmup=1 if ctx.dry_run else 5, rounds=1 if ctx.dry_run else 2, stages=("um",),
            variants=("v2",) if ctx.dry_run else ("v2", "v2-fp32", "v2-nchw", "v2-compile", "v2-batch64", "v2-crop128"),
            device="cuda" if ctx.device.type == "cuda" else "cpu", progress=False))
    upsert_csv(ctx.out / "train.csv", result.csv_rows(), key=KEY, columns=COLUMNS)
    return "; ".join(f"{r['variant']} {r['samples_per_s']:.0f} samples/s" for r in result.rows)


def check_bench(ctx: Context) -> str:
    with _on_device(ctx):  # the benchmarks take "cuda": the current device
        return _bench(ctx)


def _bench(ctx: Context) -> str:
    from adsrt.bench import ads_update, latency

    device = "cuda" if ctx.device.type == "cuda" else "cpu"
    backbone = "nafnet-tiny" if ctx.dry_run else "nafnet-edge"
    upd = ads_update.run_ads_update_benchmark(ads_update.AdsUpdateBenchConfig(
        backbone=backbone, device=device, iters=3 if ctx.dry_run else 100, warmup=1 if ctx.dry_run else 10,
        min_sample_us=0.0 if ctx.dry_run else 1000.0, progress=False))
    upsert_csv(ctx.out / "ads_update.csv", upd.csv_rows(), key=ads_update.CSV_KEY, columns=ads_update.CSV_COLUMNS)
    lat = latency.run_latency_benchmark(latency.LatencyBenchConfig(
        backbone=backbone, device=device, backends=("torch",), modes=("um", "swap"),
        sizes=("480p",) if ctx.dry_run else ("720p", "1080p"), precision="fp32" if ctx.dry_run else "fp16",
        iters=1 if ctx.dry_run else 20, min_iters=1, warmup=0 if ctx.dry_run else 2, progress=False))
    upsert_csv(ctx.out / "latency.csv", lat.csv_rows(), key=latency.CSV_KEY, columns=latency.CSV_COLUMNS)
    frames = _frame_overhead(ctx)
    r = upd.ratios
    return (f"fused update: {r['fused_over_empty']:.2f}x an empty launch, {r['naive_over_fused']:.1f}x faster than "
            f"the naive update, {r['load_state_dict_over_fused']:.1f}x faster than load_state_dict; ADS overhead "
            f"{frames}; rows in {ctx.out}")


FRAME_KEY = ("device", "torch", "size", "precision", "cuda_graph")
FRAME_COLUMNS = (*FRAME_KEY, "date", "um_ms", "ads_ms", "overhead")


def _frame_overhead(ctx: Context) -> str:
    """ADS over UM per frame through the Restorer (torch backend), CUDA graphs off and on: 720p and 1080p in
    fp16 on the GPU (a toy size in fp32, graphs off, in the dry run). Rows in ``OUT/gpu_frames.csv``."""
    from adsrt.arch import ClassifierConfig
    from adsrt.bundle import synthetic_bundle
    from adsrt.runtime.restorer import Restorer, RestorerConfig

    cuda = ctx.device.type == "cuda"
    bundle = synthetic_bundle("nafnet-tiny" if ctx.dry_run else "nafnet-edge", ("noise", "blur", "rain"), q=0.03,
                              classifier=ClassifierConfig(num_classes=4))
    sizes = {"720p": (720, 1280), "1080p": (1080, 1920)} if not ctx.dry_run else {"toy": (64, 96)}
    precision = "fp16" if cuda else "fp32"
    machine = Machine.detect(ctx.device).row(FRAME_COLUMNS)
    rows, parts = [], []
    for size, (h, w) in sizes.items():
        frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        for graphs in (False, True) if cuda else (False,):
            ms = {}
            for mode in ("um", "swap"):
                restorer = Restorer(bundle, RestorerConfig(backend="torch", device=str(ctx.device), mode=mode,
                                                           precision=precision, cuda_graph=graphs,
                                                           memory_limit_mb=0, sync_timings=False))
                for _ in range(3):  # warm-up (and the capture, with graphs)
                    restorer.restore(frame)
                times = []
                for _ in range(3 if ctx.dry_run else 20):
                    t0 = time.perf_counter()
                    restorer.restore(frame)
                    times.append((time.perf_counter() - t0) * 1e3)
                ms[mode] = float(np.median(times))
            overhead = ms["swap"] / ms["um"] - 1.0
            rows.append({**machine, "size": size, "precision": precision, "cuda_graph": str(graphs),
                         "um_ms": f"{ms['um']:.3f}", "ads_ms": f"{ms['swap']:.3f}", "overhead": f"{overhead:.4f}"})
            parts.append(f"{size}{' graphs' if graphs else ''} {overhead:+.1%}")
    upsert_csv(ctx.out / "gpu_frames.csv", rows, key=FRAME_KEY, columns=FRAME_COLUMNS)
    return ", ".join(parts)


def _on_device(ctx: Context):
    """:func:`adsrt.kernels.ads_update.device_guard` of ``ctx.device`` (imported late: the dry run sets
    TRITON_INTERPRET before the kernels module first imports triton)."""
    from adsrt.kernels.ads_update import device_guard

    return device_guard(ctx.device)


class _Skip(Exception):
    """A check that does not apply here (the reason is its detail)."""


CHECKS: dict[str, Callable[[Context], str]] = {
    "environment": check_environment,
    "gpu_tests": check_gpu_tests,
    "update_stress": check_update_stress,
    "graph_frames": check_graph_frames,
    "sync_free": check_sync_free,
    "large_arena": check_large_arena,
    "amp_training": check_amp_training,
    "train_speed": check_train_speed,
    "bench": check_bench,
}


def run_checks(ctx: Context, names: Sequence[str] = tuple(CHECKS)) -> list[CheckRow]:
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            detail, status = CHECKS[name](ctx), "ok"
        except _Skip as exc:
            detail, status = str(exc), "skip"
        except Exception as exc:  # noqa: BLE001 - a failed check is a row, the next check still runs
            log.exception("check %s failed", name)
            detail, status = f"{type(exc).__name__}: {exc}", "fail"
        row = CheckRow(name, status, time.perf_counter() - t0, detail.replace("\n", " "))
        log.info("%-14s %-4s %6.1f s  %s", row.check, row.status, row.seconds, row.detail)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None, *, default_out: Path | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=default_out, help="folder for gpu_check.csv, the log and the "
                   "benchmark CSVs (default: benchmarks/results/gpu_check)")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--dry-run", action="store_true", help="run the logic on the CPU at toy sizes (CI)")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma list of {', '.join(CHECKS)}")
    args = p.parse_args(argv)
    names = [n for n in args.checks.split(",") if n]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        p.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels module imports triton
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("gpu_check needs an NVIDIA GPU (torch sees none); --dry-run runs its logic on the CPU",
                  file=sys.stderr)
            return 2
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("TRITON_INTERPRET=1 is set: the kernels would be interpreted, not run on the GPU; unset it",
                  file=sys.stderr)
            return 2
        device = torch.device(args.device)
    out = args.out or Path(tempfile.mkdtemp(prefix="adsrt-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "gpu_check.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        ctx = Context(device=device, dry_run=args.dry_run, out=out, repo=Path.cwd())
        rows = run_checks(ctx, names)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    machine = Machine.detect(device).row(CSV_COLUMNS)
    upsert_csv(out / "gpu_check.csv", [{**machine, "check": r.check, "status": r.status,
                                        "seconds": f"{r.seconds:.1f}", "detail": r.detail} for r in rows],
               key=CSV_KEY, columns=CSV_COLUMNS)
    for r in rows:
        print(f"{r.check:<14} {r.status:<4} {r.seconds:6.1f} s  {r.detail}")
    failed = [r.check for r in rows if r.status == "fail"]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed or skipped; results in {out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
