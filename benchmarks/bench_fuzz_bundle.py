"""Fuzz the bundle loader: mutated bundle files must load or raise BundleError, quickly, in bounded memory.

    nice .venv/bin/python benchmarks/bench_fuzz_bundle.py --mutants 10000 --seed 0

Writes fuzz_bundle.csv into --results (default benchmarks/results/, next to this script): per mutation
kind, the mutants loaded, refused and failing otherwise (must be 0), the slowest mutant and peak RSS.
The logic lives in adsrt.bench.fuzz_bundle.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.fuzz_bundle import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
