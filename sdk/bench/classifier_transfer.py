"""The degradation classifier side by side: real photos and synthetic CBSD68, for one bundle's classifier
and others of the same classes swapped into it (the window classifier against the one with a context trunk,
say: the ``WORK/classifier`` and ``WORK/context`` files of a ``train all`` run).

The code of ``benchmarks/bench_classifier.py`` (a thin wrapper around :func:`main`):

    nice .venv/bin/python benchmarks/bench_classifier.py --bundle B --eval ../shared/data/eval/cbsd68 \
        --real ../shared/data/real [--classifier LABEL=FILE ...]

Per classifier, through the runtime's classify path (:func:`adsrt.bench.default_report.classify_real` and
``classify_cases``, the code of the quality report): for each real folder named after a degradation, the
top-1 share of it and the mean probability of it; on CBSD68 at the typical levels, the top-1 share per
degradation, their mean, and the share of clean photos called clean. Top-1 does not depend on the softmax
temperature (the bundle's is kept). Upserts one row per classifier into ``results/classifier.csv`` (keyed by
bundle and label, with the device, versions and date) and prints a markdown table.

With ``--exposure-reference DIR`` (clean photos: the training folder, never the evaluation or real sets),
the real low-light photos are also scored in two parts: the ones darker than 90% of the reference photos
(median luma below the reference's 10th percentile) and the rest. DICM is an exposure-enhancement set and
about half of it is exposed like any daylight photo; a classifier that calls those "lowlight" would call
clean photos lowlight too, so the dark part is where recognising low light can be asked of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adsrt.bench.default_report import classify_cases, classify_real, eval_specs, median_luma
from adsrt.bench.timing import Machine, add_eval_options, torch_threads
from adsrt.bundle import Bundle
from adsrt.errors import AdsrtError
from adsrt.fileio import upsert_csv
from adsrt.imageio import list_images, read_image
from adsrt.runtime.restorer import resolve_bundle
from adsrt.train.classifier import load_classifier
from adsrt.train.evaluate import CLEAN_SPEC, synthetic_cases

log = logging.getLogger(__name__)
REAL = ("rain", "lowlight")
SYNTHETIC = ("noise", "blur", "rain", "haze", "snow", "lowlight")
COLUMNS = ("label", "classifier", "params", "context_width",
           *[f"real_{d}_{m}" for d in REAL for m in ("top1", "mean_p", "n")],
           *[f"real_lowlight_{part}_{m}" for part in ("dark", "bright") for m in ("top1", "n")], "dark_luma",
           *[f"cbsd68_{d}" for d in SYNTHETIC], "cbsd68_mean", "clean_called_clean", "n_eval",
           "bundle", "seed", "date", "device", "cpu", "threads", "torch")
KEY = ("bundle", "label")
DARK_PERCENTILE = 10  # a real low-light photo is "dark" if darker than 90% of the clean reference photos


def dark_luma(reference: str | Path) -> float:
    """The median luma below which a photo is darker than 90% of the clean photos in ``reference``."""
    paths = list_images(reference)
    if not paths:
        raise AdsrtError(f"{reference}: no images for the exposure reference")
    return float(np.percentile([median_luma(read_image(p)) for p in paths], DARK_PERCENTILE))


def swap_classifier(bundle: Bundle, path: str | Path) -> Bundle:
    """``bundle`` with the classifier of ``path`` (a ``train classifier``/``train context`` output of the
    same classes), at the bundle's temperature."""
    config, state, header = load_classifier(path)
    if header.get("classes") != [*bundle.degradations, "clean"]:
        raise AdsrtError(f"{path}: classes {header.get('classes')} are not the bundle's {bundle.degradations} + clean")
    temperature = bundle.classifier.temperature if bundle.classifier is not None else 1.0
    return dataclasses.replace(bundle, classifier=dataclasses.replace(config, temperature=temperature),
                               classifier_state=state)


def score(bundle: Bundle, cases: list, real: str | None, device: torch.device, progress: bool,
          dark: float | None = None) -> dict[str, Any]:
    """The row's numbers for one classifier (see the module doc); ``dark``: the luma of the exposure split."""
    row: dict[str, Any] = {"params": bundle.classifier.num_params(), "context_width": bundle.classifier.context_width}
    if real:
        folders = classify_real(bundle, real, device, progress=progress)["folders"]
        for d in REAL:
            if d in folders:
                f = folders[d]
                row.update({f"real_{d}_top1": f"{f['hit_share']:.4f}", f"real_{d}_mean_p": f"{f['mean_probability']:.4f}",
                            f"real_{d}_n": f["n"]})
        if dark is not None and "lowlight" in folders:
            f = folders["lowlight"]
            row["dark_luma"] = f"{dark:.4f}"
            for part, keep in (("dark", lambda v: v < dark), ("bright", lambda v: v >= dark)):
                hits = [t == "lowlight" for t, v in zip(f["top"], f["median_luma"], strict=True) if keep(v)]
                row[f"real_lowlight_{part}_n"] = len(hits)
                if hits:
                    row[f"real_lowlight_{part}_top1"] = f"{np.mean(hits):.4f}"
    rows = classify_cases(bundle, cases, device, progress=progress)["rows"]
    shares = {t: r["shares"].get(t, 0.0) for t, r in rows.items()}
    degraded = [d for d in SYNTHETIC if d in shares and d in bundle.degradations]
    for d in degraded:
        row[f"cbsd68_{d}"] = f"{shares[d]:.4f}"
    if degraded:
        row["cbsd68_mean"] = f"{sum(shares[d] for d in degraded) / len(degraded):.4f}"
    if "clean" in shares:
        row["clean_called_clean"] = f"{shares['clean']:.4f}"
    row["n_eval"] = sum(r["n"] for r in rows.values())
    return row


def _classifier_arg(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE, got {text!r}")
    return label, path


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [title, "", "| classifier | params | real rain top-1 (mean p) | real low light top-1 (mean p) | "
             "dark / bright low light top-1 | "
             + " | ".join(f"CBSD68 {d}" for d in SYNTHETIC) + " | CBSD68 mean | clean called clean |",
             "|---|---|---|---|---|" + "---|" * (len(SYNTHETIC) + 2)]

    def pct(v: Any) -> str:
        return f"{float(v):.1%}" if v not in (None, "") else "-"

    for r in rows:
        real = [f"{pct(r.get(f'real_{d}_top1'))} ({float(r[f'real_{d}_mean_p']):.2f})" if r.get(f"real_{d}_top1")
                else "-" for d in REAL]
        parts = " / ".join(f"{pct(r.get(f'real_lowlight_{part}_top1'))} of {r.get(f'real_lowlight_{part}_n') or 0}"
                           for part in ("dark", "bright")) if r.get("dark_luma") else "-"
        lines.append(f"| {r['label']} | {int(r['params']):,} | {real[0]} | {real[1]} | {parts} | "
                     + " | ".join(pct(r.get(f"cbsd68_{d}")) for d in SYNTHETIC)
                     + f" | {pct(r.get('cbsd68_mean'))} | {pct(r.get('clean_called_clean'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="default", help="bundle file or bundled model name (default: default)")
    p.add_argument("--classifier", type=_classifier_arg, action="append", default=[], metavar="LABEL=FILE",
                   help="another classifier of the bundle's classes, swapped in (repeatable)")
    p.add_argument("--eval", required=True, metavar="DIR", help="clean evaluation photos (CBSD68)")
    p.add_argument("--real", metavar="DIR", help="real photos in subfolders named after degradations")
    p.add_argument("--exposure-reference", metavar="DIR",
                   help="clean training photos: split the real low-light photos into dark ones and the rest")
    add_eval_options(p, default_results, "classifier.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bundle, label = resolve_bundle(args.bundle)
    if bundle.classifier is None:
        raise SystemExit(f"{label}: no classifier")
    variants = [("bundle", "", bundle)] + [(name, path, swap_classifier(bundle, path)) for name, path in args.classifier]
    specs = [spec for _, _, spec in eval_specs(bundle.degradations)] + [CLEAN_SPEC]
    cases = synthetic_cases(args.eval, specs, seed=args.seed, max_images=args.max_images)
    device = torch.device(args.device)
    dark = dark_luma(args.exposure_reference) if args.exposure_reference and args.real else None
    rows = []
    with torch_threads(args.threads if device.type == "cpu" else None):
        machine = Machine.detect(device)
        for name, path, variant in variants:
            rows.append({"label": name, "classifier": path, "bundle": args.bundle, "seed": str(args.seed),
                         **score(variant, cases, args.real, device, not args.quiet, dark), **machine.row(COLUMNS)})
    csv_path = args.results / "classifier.csv"
    upsert_csv(csv_path, rows, key=KEY, columns=COLUMNS)
    title = (f"Classifiers of {label}: real photos ({args.real}) and {Path(args.eval).name} at the typical levels, "
             f"seed {args.seed}; top-1 shares; {machine.device}, torch {machine.torch}, {machine.date}")
    print(markdown(rows, title))
    print(f"\n{len(rows)} rows -> {csv_path}")
    return 0
