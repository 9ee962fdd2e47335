"""What every benchmark shares: its config's common fields, the torch threads of a run, the machine and
versions row each results file starts with, percentile summaries, and the glue of the thin scripts in
``benchmarks/`` (their common options, printing the table, upserting rows with
:func:`adsrt.fileio.upsert_csv`).

A benchmark ``adsrt.bench.<op>`` (``ads_update``, ``latency``) has a config deriving from
:class:`BenchConfig`, a ``run_<op>_benchmark(config)`` that runs inside :func:`torch_threads` and stamps
its result with :meth:`Machine.detect`, and ``CSV_KEY`` / ``CSV_COLUMNS`` for
``benchmarks/results/<op>.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from adsrt import fileio
from adsrt.arch import BACKBONES
from adsrt.errors import AdsrtError

# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BenchConfig:
    """The fields every benchmark config has: the synthetic bundle it times (the backbone with random
    sparse deltas at ``q`` per degradation: no trained bundle exists yet, and timing depends only on the
    sizes) and how the run is held. A benchmark redefines ``iters`` and ``warmup`` with its own defaults."""

    backbone: str = "nafnet-edge"
    degradations: tuple[str, ...] = ("noise", "blur", "rain")
    q: float = 0.03  # fraction of eligible units masked per degradation (paper default 3%)
    granularity: str = "kernel"
    seed: int = 0
    threads: int | None = None  # CPU: torch intra-op threads for the run (None: leave torch's setting)
    progress: bool = True
    iters: int = 10  # timed samples
    warmup: int = 1  # untimed calls first

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise AdsrtError(f"unknown backbone {self.backbone!r}; known: {', '.join(sorted(BACKBONES))}")
        if not 0.0 < self.q <= 0.5:
            raise AdsrtError(f"q must be in (0, 0.5], got {self.q}")
        if self.threads is not None and self.threads < 1:
            raise AdsrtError(f"threads must be >= 1, got {self.threads}")
        if self.iters < 1 or self.warmup < 0:
            raise AdsrtError("iters must be >= 1 and warmup >= 0")

    def describe(self) -> str:
        """The bundle in words, the first line of a benchmark's table."""
        return (f"{self.backbone}, {len(self.degradations)} degradations ({', '.join(self.degradations)}), "
                f"q={self.q:g}, granularity {self.granularity}")


def check_choices(name: str, values: Sequence[str], choices: Collection[str]) -> None:
    """AdsrtError unless ``values`` is a non-empty selection from ``choices``."""
    bad = [v for v in values if v not in choices]
    if bad or not values:
        raise AdsrtError(f"{name} must be among {list(choices)}, got {list(values)}")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads (None: torch's setting), restoring the
    previous count afterwards; yields the count in effect."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------- machine


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        return name


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the torch threads in effect."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ""


@dataclass(frozen=True)
class Machine:
    """Where, with what and when a benchmark ran: the columns every results row starts with."""

    device: str  # :func:`device_name`: the GPU, or the CPU with its torch threads
    cpu: str
    threads: int  # torch intra-op threads
    torch: str
    triton: str  # "none" without triton
    onnxruntime: str  # "" without onnxruntime
    date: str  # UTC, ISO 8601 to the second

    @classmethod
    def detect(cls, device: torch.device) -> Machine:
        """The machine now (call it inside :func:`torch_threads`, so the threads are the run's)."""
        from adsrt.kernels.ads_update import TRITON_VERSION

        return cls(
            device=device_name(device),
            cpu=cpu_name(),
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            triton=TRITON_VERSION,
            onnxruntime=_version("onnxruntime", "onnxruntime-gpu"),
            date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    def row(self, columns: Sequence[str] | None = None) -> dict[str, str]:
        """The machine's CSV columns: date, device, cpu, threads, torch, triton, onnxruntime; only those
        among ``columns`` when given (a results file's columns)."""
        row = {"date": self.date, "device": self.device, "cpu": self.cpu, "threads": str(self.threads),
               "torch": self.torch, "triton": self.triton, "onnxruntime": self.onnxruntime}
        return row if columns is None else {k: v for k, v in row.items() if k in columns}

    def describe(self) -> str:
        return f"device {self.device}; torch {self.torch}, triton {self.triton}"


# -------------------------------------------------------------------------------------------- samples


def percentiles(samples: Sequence[float] | np.ndarray, q: Sequence[float] = (20, 50, 80)) -> tuple[float, ...]:
    """The ``q`` percentiles of ``samples`` as floats (default p20, p50, p80)."""
    return tuple(float(v) for v in np.percentile(np.asarray(samples, dtype=np.float64), q))


def add_eval_options(p: argparse.ArgumentParser, results: Path, csv_name: str) -> None:
    """The options of the benchmarks that score a bundle on evaluation photos: --max-images, --seed,
    --device, --threads, --results (the folder of ``csv_name``, default ``results``) and -q."""
    p.add_argument("--max-images", type=int, help="evaluation images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    p.add_argument("--results", type=Path, default=results, help=f"folder of {csv_name} (default benchmarks/results)")
    p.add_argument("-q", "--quiet", action="store_true")


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")`` (list options of the CLI and the scripts)."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


# ------------------------------------------------------------------------------------------- scripts


class Result(Protocol):
    def table(self) -> str: ...

    def csv_rows(self) -> list[dict[str, str]]: ...


def script_parser(description: str, results: Path) -> argparse.ArgumentParser:
    """The options every ``benchmarks/bench_<op>.py`` has: the bundle, the threads and the results file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="nafnet-edge")
    parser.add_argument("--granularity", choices=("kernel", "filter"), default="kernel")
    parser.add_argument("--threads", type=int, help="CPU: torch threads (default: torch's setting)")
    parser.add_argument("--csv", type=Path, default=results, help=f"results file (default {results})")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    return parser


def script_config(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`BenchConfig` fields (and the device) that :func:`script_parser`'s options set."""
    return {"backbone": args.backbone, "granularity": args.granularity, "device": args.device,
            "threads": args.threads}


def run_script(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Result], *,
               key: Sequence[str], columns: Sequence[str]) -> None:
    """Parse the options, run the benchmark, print its table and upsert its rows unless ``--no-csv``."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args)
    print(result.table())
    if not args.no_csv:
        fileio.upsert_csv(args.csv, result.csv_rows(), key=key, columns=columns)
        print(f"rows upserted into {args.csv}")
