"""Training throughput: samples/s per stage and variant, split into data, forward, backward and optimizer.

    .venv/bin/python benchmarks/bench_train.py --data ../shared/data/train

Upserts rows into results/train.csv (next to this script): v1's settings and the current ones side by side
in one run, with the device, threads, versions and date. The logic lives in adsrt.bench.training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from adsrt.bench.timing import comma_list
from adsrt.bench.training import COLUMNS, DEFAULT_VARIANTS, KEY, STAGES, TrainBenchConfig, run_train_benchmark
from adsrt.fileio import upsert_csv

RESULTS = Path(__file__).resolve().parent / "results" / "train.csv"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of clean training photos")
    parser.add_argument("--variants", type=comma_list, default=DEFAULT_VARIANTS)
    parser.add_argument("--stages", type=comma_list, default=STAGES)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", type=Path, default=RESULTS)
    parser.add_argument("--no-csv", action="store_true")
    parser.add_argument("--profile", metavar="VARIANT",
                        help="instead: torch.profiler's op table of VARIANT's steps -> results/train_profile_VARIANT.txt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.profile:
        import tempfile

        from adsrt.bench.training import profile_variant

        with tempfile.TemporaryDirectory() as tmp:
            text = profile_variant(TrainBenchConfig(data=args.data, steps=args.steps, device=args.device), args.profile,
                                   Path(tmp))
        out = args.csv.parent / f"train_profile_{args.profile}.txt"
        out.write_text(text + "\n")
        print(text)
        print(f"-> {out}")
        raise SystemExit(0)
    result = run_train_benchmark(TrainBenchConfig(data=args.data, variants=args.variants, stages=args.stages,
                                                  steps=args.steps, rounds=args.rounds, device=args.device))
    print(result.table())
    if not args.no_csv:
        upsert_csv(args.csv, result.csv_rows(), key=KEY, columns=COLUMNS)
        print(f"rows upserted into {args.csv}")
