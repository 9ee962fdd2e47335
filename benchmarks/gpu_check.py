"""The one-call GPU check (``make gpu-check``; the logic is :mod:`adsrt.bench.gpu_check`):

    .venv/bin/python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check] [--device cuda:0]
    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check    # its logic on the CPU
"""

from pathlib import Path

from adsrt.bench.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main(default_out=Path(__file__).resolve().parent / "results" / "gpu_check"))
