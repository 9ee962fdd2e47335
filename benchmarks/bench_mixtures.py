"""adsrt on frames that carry two degradations at once: UM, ADS with soft c, ADS with the top-1 delta, the
1/2 + 1/2 oracle and the best single IM, per pair of degradations.

    nice .venv/bin/python benchmarks/bench_mixtures.py --clean ../shared/data/eval/cbsd68 --bundle B --targets WORK

Writes mixtures.csv into --results (default benchmarks/results/, next to this script). The logic lives in
adsrt.bench.mixtures.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.mixtures import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
