"""Runtime latency: per-frame p50/p90/p99 at 480p/720p/1080p per backend and mode (um, swap, branch).

    .venv/bin/python benchmarks/bench_latency.py --device cpu --threads 2
    .venv/bin/python benchmarks/bench_latency.py --device cuda --precision fp16

Prints the table and upserts one row per (backend, mode, size) into results/latency.csv (key: device,
torch, backend, backbone, mode, precision, granularity, q, k, height, width). The timing logic lives in
adsrt.bench.latency, shared with `adsrt bench latency`. Targets (issue 5), read from one run:
ADS overhead (classify + update) <= 10% of a 480p frame on CPU and <= 5% of a 720p frame on GPU.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.latency import CSV_COLUMNS, CSV_KEY, SIZES, LatencyBenchConfig, run_latency_benchmark
from adsrt.bench.timing import comma_list, run_script, script_config, script_parser

RESULTS = Path(__file__).resolve().parent / "results" / "latency.csv"


def main() -> None:
    parser = script_parser(__doc__.splitlines()[0], RESULTS)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--backends", help="comma-separated (default: every available backend)")
    parser.add_argument("--modes", default="um,swap,branch")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--iters", type=int, default=10, help="timed frames per row (default 10)")
    parser.add_argument("--min-iters", type=int, default=3, help="at least this many, whatever --max-seconds says")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per row: stop timing after this long")
    run_script(
        parser,
        lambda args: run_latency_benchmark(
            LatencyBenchConfig(
                **script_config(args),
                precision=args.precision,
                backends=None if args.backends is None else comma_list(args.backends),
                modes=comma_list(args.modes),
                sizes=comma_list(args.sizes),
                iters=args.iters,
                min_iters=args.min_iters,
                max_seconds=args.max_seconds,
            )
        ),
        key=CSV_KEY,
        columns=CSV_COLUMNS,
    )


if __name__ == "__main__":
    main()
