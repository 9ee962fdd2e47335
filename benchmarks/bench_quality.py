"""The ADMS paper's quality tables at adsrt's scale: UM vs ADS vs IM, selector ablation, granularity.

    .venv/bin/python benchmarks/bench_quality.py --train ../shared/data/train \\
        --eval ../shared/data/eval/cbsd68 --work runs/quality --preset small

Writes quality_{main,selectors,granularity}.csv, quality.md and quality_psnr_vs_params.png into --results
(default benchmarks/results/, next to this script). The logic lives in adsrt.bench.quality.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.quality import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
