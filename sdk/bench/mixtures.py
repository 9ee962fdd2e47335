"""adsrt on frames that carry two degradations at once (mixtures).

The code of ``benchmarks/bench_mixtures.py`` (a thin wrapper around :func:`main`):

    nice .venv/bin/python benchmarks/bench_mixtures.py --clean ../shared/data/eval/cbsd68 \
        [--bundle default] [--targets WORK] [--pairs noise:15+rain:2,...] [--max-images N]

Every pair ``a+b`` degrades each clean photo with ``a`` then ``b`` (one generator per pair and photo, keyed
by ``--seed``: ``adsrt.train.evaluate.synthetic_cases``) and is scored by ``evaluate_cases``, the code
behind ``adsrt eval --degradations a+b``, through the runtime's frame path: PSNR and SSIM on RGB in
[0, 1], whole images (the adsrt protocol). Per pair:

- ``input``, ``um``; ``ads`` (the classifier's soft c); ``ads_top1`` (only the classifier's top-1 delta;
  a top-1 "clean" is c = 0, the UM);
- ``ads_oracle``: c = 1/m on each of the m components the bundle knows (1/2 each when it knows both);
- ``im_best`` (with ``--targets``): the better of the two components' individual models on these images,
  and which (``im_best_name``);
- ``dc_top1_in_pair``: the share of images whose top-1 class is one of the two components (a component the
  bundle does not know counts as "clean"); ``c_a``, ``c_b``, ``p_clean``: the mean probabilities of the
  first and second component (their soft c; empty for a component the bundle does not know) and of clean.

Upserts one row per pair into ``results/mixtures.csv`` (keyed by pair and bundle, with the device,
versions and date) and prints a markdown table. ``--results DIR`` writes elsewhere (smoke runs).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from adsrt.bench.timing import Machine, add_eval_options, comma_list, torch_threads
from adsrt.fileio import upsert_csv
from adsrt.runtime.restorer import resolve_bundle
from adsrt.train.degradations import parse_specs
from adsrt.train.evaluate import evaluate_cases, load_targets, synthetic_cases

log = logging.getLogger(__name__)
PAIRS = ("noise:15+rain:2", "noise:15+blur:1.5", "blur:1.5+rain:2", "rain:2+lowlight:2", "noise:15+lowlight:2",
         "blur:1.5+lowlight:2")
SCORED = ("input", "um", "ads", "ads_top1", "ads_oracle", "im_best")
COLUMNS = ("pair", "component_a", "component_b", "n", *[f"{m}_psnr" for m in SCORED], "im_best_name",
           *[f"{m}_ssim" for m in SCORED], "dc_top1_in_pair", "c_a", "c_b", "p_clean", "bundle", "targets", "seed",
           "protocol", "date", "device", "cpu", "threads", "torch")
KEY = ("pair", "bundle")


def components(pair: str) -> tuple[str, str]:
    """The two distinct degradations of ``a+b`` (an error for anything else)."""
    names = tuple(dict.fromkeys(spec.name for spec in parse_specs(pair)))
    if len(names) != 2:
        raise SystemExit(f"--pairs: {pair!r} is not a mix of two distinct degradations")
    return names


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def rows_of(report: dict[str, Any], pairs: tuple[str, ...], common: dict[str, str]) -> list[dict[str, str]]:
    rows = []
    for pair in pairs:
        r = report["results"][pair]
        a, b = components(pair)
        probs = r["dc_mean_probability"] or {}
        row = {**common, "pair": pair, "component_a": a, "component_b": b, "n": str(r["n"]),
               "im_best_name": r["im_best_name"] or "", "dc_top1_in_pair": _num(r["dc_accuracy"], 4),
               "c_a": _num(probs.get(a), 4), "c_b": _num(probs.get(b), 4), "p_clean": _num(probs.get("clean"), 4)}
        for m in SCORED:
            row[f"{m}_psnr"] = _num(r["psnr"].get(m), 3)
            row[f"{m}_ssim"] = _num(r["ssim"].get(m), 4)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, str]], report: dict[str, Any], title: str) -> str:
    def cell(value: str) -> str:
        return value or "-"

    lines = [title, "",
             "| pair | n | input | UM | ADS | ADS top-1 | ADS oracle (1/m each) | best IM | DC top-1 in pair | mean c (a / b / clean) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        im = cell(r["im_best_psnr"]) + (f" ({r['im_best_name']})" if r["im_best_name"] else "")
        lines.append(f"| {r['pair']} | {r['n']} | " + " | ".join(cell(r[f"{m}_psnr"]) for m in SCORED[:5])
                     + f" | {im} | {cell(r['dc_top1_in_pair'])} | "
                     + " / ".join(cell(r[c]) for c in ("c_a", "c_b", "p_clean")) + " |")
    mean = report.get("mixtures_mean")
    if mean:
        lines.append("| **mean** | | " + " | ".join(_num(mean["psnr"].get(m), 3) or "-" for m in SCORED)
                     + f" | {_num(mean['dc_accuracy'], 4) or '-'} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", required=True, metavar="DIR", help="clean evaluation photos (CBSD68)")
    p.add_argument("--bundle", default="default", help="bundle file or bundled model name (default: default)")
    p.add_argument("--targets", metavar="WORK", help="training work folder: the component IMs (im_best)")
    p.add_argument("--pairs", type=comma_list, default=PAIRS, help=f"comma-separated a+b (default {','.join(PAIRS)})")
    add_eval_options(p, default_results, "mixtures.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pairs = tuple(dict.fromkeys(args.pairs))
    for pair in pairs:
        components(pair)
    bundle, label = resolve_bundle(args.bundle)
    unknown = sorted({n for pair in pairs for n in components(pair)} - set(bundle.degradations))
    if unknown:
        log.warning("the bundle has no delta for %s: their oracle share goes to the components it knows", unknown)
    cases = synthetic_cases(args.clean, pairs, seed=args.seed, max_images=args.max_images)
    targets = load_targets(args.targets, bundle) if args.targets else None
    device = torch.device(args.device)
    with torch_threads(args.threads if device.type == "cpu" else None):
        machine = Machine.detect(device)
        report = evaluate_cases(bundle, cases, targets=targets, device=device, progress=not args.quiet,
                                data=f"{Path(args.clean).resolve()} degraded with {','.join(pairs)}, seed {args.seed}")
    common = {"bundle": args.bundle, "targets": args.targets or "", "seed": str(args.seed), "protocol": "adsrt",
              **machine.row(COLUMNS)}
    rows = rows_of(report, pairs, common)
    csv_path = args.results / "mixtures.csv"
    upsert_csv(csv_path, rows, key=KEY, columns=COLUMNS)
    title = (f"Mixtures: {label}, {Path(args.clean).name} ({rows[0]['n']} photos), seed {args.seed}; PSNR dB on RGB "
             f"in [0, 1] (adsrt protocol); {machine.device}, torch {machine.torch}, {machine.date}")
    print(markdown(rows, report, title))
    print(f"\n{len(rows)} rows -> {csv_path}")
    return 0
