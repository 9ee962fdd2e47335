"""adsrt against the classic method a practitioner would use instead, per degradation, side by side (issue 16).

    nice .venv/bin/python benchmarks/bench_baselines.py --train ../shared/data/train \
        --eval ../shared/data/eval/cbsd68 [--bundle default] [--only noise,haze] [--max-images N]

For each degradation at its typical level (``adsrt.train.degradations.LEVELS``), every baseline of
``classic.py`` gets its strength from a sweep on ``--tune-images`` training photos (never the evaluation
set), then all methods run on the same evaluation images in this one run: the degraded input, each
baseline, adsrt's UM and ADS with the torch backend, and ADS with ONNX Runtime. PSNR and SSIM follow the
adsrt protocol (RGB in [0, 1], whole images; ``adsrt.metrics.score_pair``); seconds per image are wall time
on this machine with ``--threads`` threads for OpenCV and torch. Baselines given oracle information (the
true noise sigma or blur kernel) are marked ``oracle``.

Upserts rows into ``results/baselines.csv`` (keyed by degradation, method and bundle) and draws
``results/baselines.png``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from classic import BASELINES, Baseline, Context
from tqdm import tqdm

import adsrt
from adsrt.bench.timing import Machine, comma_list
from adsrt.fileio import upsert_csv
from adsrt.metrics import score_pair
from adsrt.train.degradations import LEVELS, keyed_rng, sample_blur_kernel
from adsrt.train.evaluate import EvalCase, synthetic_cases

log = logging.getLogger("bench_baselines")
RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("degradation", "spec", "method", "kind", "param_name", "param", "psnr", "ssim", "seconds_per_image",
           "n_images", "tune_images", "bundle", "seed", "date", "device", "cpu", "threads", "torch", "onnxruntime")
KEY = ("degradation", "method", "bundle")
ORDER = ("noise", "blur", "rain", "haze", "snow", "lowlight")


def context_of(case: EvalCase, seed: int) -> Context:
    """The oracle information of a case: the true sigma, or the exact kernel its blur drew (the generator
    is keyed like ``synthetic_cases``'s, and ``sample_blur_kernel`` makes the same draws as the blur)."""
    name, _, level = case.key.partition(":")
    if name == "noise":
        return Context(sigma=float(level))
    if name == "blur":
        kernel, _ = sample_blur_kernel(float(level), keyed_rng(seed, case.key, case.name))
        return Context(kernel=kernel)
    return Context()


def score(method, cases: list[EvalCase], seed: int, param: float = 0.0) -> tuple[float, float, float]:
    """Mean PSNR, SSIM and seconds per image of ``method(image, param, context)`` over ``cases``."""
    psnrs, ssims, seconds = [], [], []
    for case in cases:
        context = context_of(case, seed)
        start = time.perf_counter()
        out = method(case.degraded, param, context)
        seconds.append(time.perf_counter() - start)
        p, s = score_pair(out, case.clean)
        psnrs.append(p)
        ssims.append(s)
    return float(np.mean(psnrs)), float(np.mean(ssims)), float(np.mean(seconds))


def tune(baseline: Baseline, cases: list[EvalCase], seed: int) -> float:
    """The grid value with the best mean PSNR on the training cases."""
    if len(baseline.grid) == 1:
        return baseline.grid[0]
    scores = {p: score(baseline.run, cases, seed, p)[0] for p in baseline.grid}
    best = max(scores, key=scores.get)
    log.info("%s: %s", baseline.name, ", ".join(f"{p:g} -> {v:.2f}" for p, v in scores.items()))
    if best in (baseline.grid[0], baseline.grid[-1]):
        log.warning("%s: the best %s (%g) is at the edge of the grid", baseline.name, baseline.param, best)
    return best


def restorers(bundle: str) -> dict[str, tuple[str, adsrt.Restorer]]:
    return {
        "adsrt UM (torch)": ("adsrt", adsrt.load(bundle, backend="torch", device="cpu", mode="um", memory_limit_mb=0)),
        "adsrt ADS (torch)": ("adsrt", adsrt.load(bundle, backend="torch", device="cpu", memory_limit_mb=0)),
        "adsrt ADS (onnxruntime)": ("adsrt", adsrt.load(bundle, backend="onnxruntime", device="cpu",
                                                         memory_limit_mb=0)),
    }


def run(args: argparse.Namespace) -> list[dict]:
    machine = Machine.detect(torch.device("cpu"))
    models = restorers(args.bundle)
    rows = []
    for name in [d for d in ORDER if d in args.only]:
        spec = f"{name}:{LEVELS[name].default:g}"
        tune_cases = synthetic_cases(args.train, [spec], seed=args.seed, max_images=args.tune_images)
        cases = synthetic_cases(args.eval, [spec], seed=args.seed, max_images=args.max_images)
        common = {"degradation": name, "spec": spec, "n_images": len(cases), "tune_images": len(tune_cases),
                  "bundle": args.bundle, "seed": args.seed, **machine.row(COLUMNS)}

        def row(method: str, kind: str, result: tuple[float, float, float], param_name: str = "",
                param: str = "", common: dict = common) -> dict:
            psnr, ssim, seconds = result
            log.info("%-9s %-24s %7.2f dB  SSIM %.4f  %.3f s", common["spec"], method, psnr, ssim, seconds)
            return {**common, "method": method, "kind": kind, "param_name": param_name, "param": param,
                    "psnr": f"{psnr:.3f}", "ssim": f"{ssim:.4f}", "seconds_per_image": f"{seconds:.4f}"}

        rows.append(row("input", "input", score(lambda image, p, c: image, cases, args.seed)))
        for baseline in tqdm(BASELINES[name], desc=f"{spec} baselines", disable=args.quiet):
            param = tune(baseline, tune_cases, args.seed)
            rows.append(row(baseline.name, "oracle" if baseline.oracle else "classic",
                            score(baseline.run, cases, args.seed, param), baseline.param, f"{param:g}"))
        for method, (kind, restorer) in models.items():
            restorer.restore(cases[0].degraded)  # warm-up: graph export or load, first-call allocations
            rows.append(row(method, kind, score(lambda image, p, c, r=restorer: r.restore(image), cases, args.seed)))
    return rows


def plot(path: Path, csv_path: Path, bundle: str) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["bundle"] == bundle]
    names = [d for d in ORDER if any(r["degradation"] == d for r in rows)]
    colours = {"input": "#bbbbbb", "classic": "#4c78a8", "oracle": "#9ecae9", "adsrt": "#e45756"}
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = [r for r in rows if r["degradation"] == name]
        ax.barh(range(len(sub)), [float(r["psnr"]) for r in sub], color=[colours[r["kind"]] for r in sub])
        ax.set_yticks(range(len(sub)), [r["method"] + (" *" if r["kind"] == "oracle" else "") for r in sub],
                    fontsize=8)
        ax.invert_yaxis()
        lo = min(float(r["psnr"]) for r in sub)
        ax.set_xlim(lo - 1.0, max(float(r["psnr"]) for r in sub) + 0.8)
        for i, r in enumerate(sub):
            ax.text(float(r["psnr"]) + 0.05, i, f"{float(r['psnr']):.2f}", va="center", fontsize=7)
        ax.set_title(sub[0]["spec"], fontsize=10)
        ax.set_xlabel("PSNR (dB)", fontsize=8)
    fig.suptitle(f"CBSD68 at typical levels: classic methods (* given the true sigma or kernel) and adsrt ({bundle})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="training photos: the baselines' strengths are swept on these")
    p.add_argument("--eval", required=True, help="clean evaluation photos (CBSD68)")
    p.add_argument("--bundle", default="default")
    p.add_argument("--only", type=comma_list, default=ORDER, help="degradations to run (default all six)")
    p.add_argument("--tune-images", type=int, default=8)
    p.add_argument("--max-images", type=int, help="evaluation images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="OpenCV and torch threads (default 2)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    unknown = set(args.only) - set(ORDER)
    if unknown:
        p.error(f"--only: unknown degradations {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rows = run(args)
    csv_path = args.results / "baselines.csv"
    upsert_csv(csv_path, rows, key=KEY, columns=COLUMNS)
    plot(args.results / "baselines.png", csv_path, args.bundle)
    print(f"{len(rows)} rows -> {csv_path}, plot -> {args.results / 'baselines.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
