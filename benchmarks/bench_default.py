"""The quality report of the bundled default model: CBSD68 scores, classifier confusion, real photos, cost, peers.

    .venv/bin/python benchmarks/bench_default.py --bundle default --eval ../shared/data/eval/cbsd68 \\
        --real ../shared/data/real --targets WORK [--max-images N] [--out benchmarks/results]

Writes default_{quality,confusion,real}.csv, default_report.md and default_psnr_vs_params.png into --out
(default benchmarks/results/, next to this script). The logic lives in adsrt.bench.default_report.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.default_report import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_out=RESULTS))
