"""Spatially varying degradation: global c vs the classifier's window map (local mode) vs the oracle map
on composites of clean photos, and local mode's frame time against swap and branch mode.

    nice .venv/bin/python benchmarks/bench_local.py --bundle B.safetensors --clean ../shared/data/eval/cbsd68

Writes local.csv and local_latency.csv into --results (default benchmarks/results/, next to this script).
The logic lives in adsrt.bench.local_restore.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.local_restore import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
