"""The degradation classifier side by side on real photos and synthetic CBSD68: a bundle's classifier and
others of the same classes swapped in (e.g. the window classifier and the one with a context trunk).

    nice .venv/bin/python benchmarks/bench_classifier.py --bundle B --eval ../shared/data/eval/cbsd68 \
        --real ../shared/data/real --classifier windows=WORK/classifier/model.safetensors

Writes classifier.csv into --results (default benchmarks/results/, next to this script). The logic lives in
adsrt.bench.classifier_transfer.
"""

from __future__ import annotations

from pathlib import Path

from adsrt.bench.classifier_transfer import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_results=RESULTS))
