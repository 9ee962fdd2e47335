"""ads_update latency: fused ADS update vs empty launch, naive per-layer update and load_state_dict.

    .venv/bin/python benchmarks/bench_ads_update.py --device cpu            # default model, fp32
    .venv/bin/python benchmarks/bench_ads_update.py --device cuda --dtype fp16

Prints the table and upserts one row per method into results/ads_update.csv (key: device, versions,
backend, backbone, granularity, q, k, dtype, method). The timing logic lives in adsrt.bench.ads_update,
shared with `adsrt bench ads-update` (alias `adsrt bench swap`). Targets (issue 4), read from the ratios
of one run: GPU: fused <= 1.5x empty launch, >= 20x faster than naive per-layer, >= 100x faster than
load_state_dict; CPU: >= 10x faster than naive per-layer.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.ads_update import (
    CSV_COLUMNS,
    CSV_KEY,
    DTYPES,
    AdsUpdateBenchConfig,
    run_ads_update_benchmark,
)
from adsrt.bench.timing import run_script, script_config, script_parser

RESULTS = Path(__file__).resolve().parent / "results" / "ads_update.csv"


def main() -> None:
    parser = script_parser(__doc__.splitlines()[0], RESULTS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    parser.add_argument("--iters", type=int, default=200, help="timed samples per method")
    run_script(
        parser,
        lambda args: run_ads_update_benchmark(
            AdsUpdateBenchConfig(**script_config(args), dtype=args.dtype, backend=args.backend, iters=args.iters)
        ),
        key=CSV_KEY,
        columns=CSV_COLUMNS,
    )


if __name__ == "__main__":
    main()
