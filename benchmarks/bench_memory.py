"""Peak memory of `adsrt restore` on large photos against --memory-limit (subprocesses, peak RSS).

    nice .venv/bin/python benchmarks/bench_memory.py --work runs/memory

Writes memory.csv into --results (default benchmarks/results/, next to this script). The logic lives in
adsrt.bench.memory.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.memory import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
