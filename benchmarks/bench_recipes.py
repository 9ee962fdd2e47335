"""UM recipes (backbone, crop, loss, learning rate) at an equal CPU budget, scored on evaluation photos.

    nice .venv/bin/python benchmarks/bench_recipes.py --train ../shared/data/train \
        --eval ../shared/data/eval/cbsd68 --work runs/recipes --budget-minutes 12 --threads 1

Writes recipes.csv and recipes.png into --results (default benchmarks/results/, next to this script);
resumes from --work. The logic lives in adsrt.bench.recipes.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.recipes import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
