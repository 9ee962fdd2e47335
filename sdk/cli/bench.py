"""The ``adsrt bench`` commands: one subcommand per benchmark of :mod:`adsrt.bench`.

    adsrt bench ads-update [--device cpu|cuda] [--json OUT]      (alias: adsrt bench swap)
    adsrt bench latency [--device D] [--backends ...] [--modes ...] [--sizes ...] [--iters N]
                        [--precision fp32|fp16|bf16] [--threads N] [--json OUT]
    adsrt bench train --data DIR [--variants ...] [--stages ...] [--steps N] [--rounds N] [--json OUT]

Each prints the benchmark's table and, with ``--json``, writes its stable JSON schema. The recorded
numbers in ``benchmarks/results/`` come from the scripts in ``benchmarks/`` (the same code).
"""

from __future__ import annotations

import argparse
from typing import Any

from adsrt.cli.argtypes import positive_int


def _report(args: argparse.Namespace, result) -> int:
    from adsrt.fileio import write_json

    print(result.table())
    if args.json:
        write_json(args.json, result.to_json())
    return 0


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields every ``bench`` subcommand sets the same way."""
    return {"backbone": args.backbone, "device": args.device, "iters": args.iters, "progress": not args.quiet}


def cmd_bench_ads_update(args: argparse.Namespace) -> int:
    from adsrt.bench.ads_update import AdsUpdateBenchConfig, run_ads_update_benchmark

    config = AdsUpdateBenchConfig(**_config(args), dtype=args.dtype, backend=args.backend)
    return _report(args, run_ads_update_benchmark(config))


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from adsrt.bench.latency import LatencyBenchConfig, run_latency_benchmark
    from adsrt.bench.timing import comma_list

    config = LatencyBenchConfig(
        **_config(args),
        precision=args.precision,
        backends=None if args.backends is None else comma_list(args.backends),
        modes=comma_list(args.modes),
        sizes=comma_list(args.sizes),
        min_iters=min(args.iters, 3),
        threads=args.threads,
    )
    return _report(args, run_latency_benchmark(config))


def cmd_bench_train(args: argparse.Namespace) -> int:
    from adsrt.bench.timing import comma_list
    from adsrt.bench.training import TrainBenchConfig, run_train_benchmark

    kw = {k: comma_list(getattr(args, k)) for k in ("variants", "stages") if getattr(args, k)}
    config = TrainBenchConfig(data=args.data, backbone=args.backbone, steps=args.steps, rounds=args.rounds,
                              device=args.device, progress=not args.quiet, **kw)
    return _report(args, run_train_benchmark(config))


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its benchmarks on the top-level subparsers."""
    p = sub.add_parser("bench", help="latency and training-throughput benchmarks")
    bench = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    p = bench.add_parser("ads-update", aliases=["swap"],
                         help="fused ADS weight update vs an empty launch, a naive per-layer update and "
                              "load_state_dict (default model, random sparse deltas)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--json", metavar="OUT", help="also write the timings and ratios as JSON")
    # For tests and quick looks; the recorded numbers use the defaults.
    p.add_argument("--backbone", default="nafnet-edge", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_ads_update)

    p = bench.add_parser("latency", help="per-frame latency p50/p90/p99 at 480p/720p/1080p for each available "
                                         "backend and mode, with the ADS overhead (random sparse deltas)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    p.add_argument("--backends", help="comma-separated backends (default: every available one)")
    p.add_argument("--modes", default="um,swap,branch", help="comma-separated modes (default um,swap,branch)")
    p.add_argument("--sizes", default="480p,720p,1080p", help="comma-separated sizes (default 480p,720p,1080p)")
    p.add_argument("--iters", type=positive_int, default=10, help="timed frames per row (default 10)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--threads", type=positive_int, help="CPU: torch threads (default: torch's setting)")
    p.add_argument("--backbone", default="nafnet-edge", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_latency)

    from adsrt.bench.training import DEFAULT_VARIANTS, STAGES, VARIANTS

    p = bench.add_parser("train", help="training samples/s per stage, split into data, forward, backward and "
                                       "optimizer; v1's code and settings against today's, side by side")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of clean training photos")
    p.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--stages", help=f"comma-separated, of {', '.join(STAGES)} (default all)")
    p.add_argument("--steps", type=positive_int, default=24, help="timed steps per round (default 24)")
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds of every variant in turn (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    p.add_argument("--backbone", default="nafnet-small", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_train)
