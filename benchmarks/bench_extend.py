"""A bundle extended by one degradation (`adsrt train add`) against one trained on all of them from scratch:
per-degradation PSNR of both, the old tensors checked byte for byte, parameters and stage seconds.

    .venv/bin/python benchmarks/bench_extend.py --source B3 --extended B3+D --scratch B4 --evals e3.json e3d.json e4.json

Writes extend.csv and extend_cost.csv into --results (default benchmarks/results/). The logic lives in
adsrt.bench.extend.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.extend import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
