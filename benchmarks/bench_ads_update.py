"""Swap-mode latency: fused ADS update vs empty launch, naive per-layer update and load_state_dict.

    .venv/bin/python benchmarks/bench_swap.py --device cpu            # default model, fp32
    .venv/bin/python benchmarks/bench_swap.py --device cuda --dtype fp16

Prints the table and upserts one row per method into results/swap.csv (key: device, versions, backend,
backbone, granularity, q, k, dtype, method). The timing logic lives in adsrt.bench.ads_update,
shared with `adsrt bench swap`. Targets (issue 4), read from the ratios of one run:
GPU: fused <= 1.5x empty launch, >= 20x faster than naive per-layer, >= 100x faster than load_state_dict;
CPU: >= 10x faster than naive per-layer.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from adsrt.arch import BACKBONES
from adsrt.bench.ads_update import DTYPES, SwapBenchConfig, run_swap_benchmark, upsert_csv

RESULTS = Path(__file__).resolve().parent / "results" / "swap.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="nafnet-edge")
    parser.add_argument("--granularity", choices=("kernel", "filter"), default="kernel")
    parser.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    parser.add_argument("--iters", type=int, default=200, help="timed samples per method")
    parser.add_argument("--threads", type=int, help="CPU: torch threads (default: torch's setting)")
    parser.add_argument("--csv", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    result = run_swap_benchmark(
        SwapBenchConfig(
            backbone=args.backbone,
            granularity=args.granularity,
            device=args.device,
            dtype=args.dtype,
            backend=args.backend,
            iters=args.iters,
            threads=args.threads,
        )
    )
    print(result.table())
    if not args.no_csv:
        upsert_csv(args.csv, result.csv_rows())
        print(f"rows upserted into {args.csv}")


if __name__ == "__main__":
    main()
