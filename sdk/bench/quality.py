"""The ADMS paper's quality tables at adsrt's scale: UM vs ADS vs IM, selector ablation, granularity.

The code of ``benchmarks/bench_quality.py`` (a thin wrapper around :func:`main`):

    .venv/bin/python benchmarks/bench_quality.py --train ../shared/data/train \\
        --eval ../shared/data/eval/cbsd68 --work runs/quality --preset small

Trains (or reuses, from --work) one UM, one IM per degradation and one classifier, then masks and
deltas for every variant: selectors faig/random/encoder/absdiff at q = 1, 3, 5% of the kernel units,
FAIG at filter granularity, and FAIG with the parameter budget (at most q of the weights). Every stage
skips what its work folder already holds and the restorer stages resume from checkpoints, so an
interrupted run continues where it stopped; evaluations are cached per variant in WORK/eval/.

Evaluation: every image of --eval degraded with noise:25, blur:2 and rain:3 (one generator per image,
degradation and --seed), restored whole, PSNR/SSIM on RGB in [0, 1] (adsrt protocol). The main
variant is scored as input, UM, ADS (classifier's c), ADS oracle (true one-hot c) and IM; the ablation
variants as ADS oracle only, which isolates the selection from the classifier (--full-ablation adds ADS).

Writes into --results (default benchmarks/results/, which the script passes to :func:`main`):
  quality_main.csv         degradation x {input, um, ads, ads_oracle, im}: PSNR, SSIM, parameters
  quality_selectors.csv    selector x q x degradation: ADS and oracle PSNR/SSIM, delta parameters
  quality_granularity.csv  kernel vs filter (and the parameter budget) at FAIG q = 3%
  quality.md               the three tables in markdown with the budget, device, versions and date
  quality_psnr_vs_params.png
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adsrt.bench.timing import device_name
from adsrt.bundle import load_bundle, summarize
from adsrt.fileio import atomic_write_bytes, write_json
from adsrt.runtime.backends import resolve_device
from adsrt.train.degradations import generator_digest
from adsrt.train.evaluate import evaluate_cases, load_targets, synthetic_cases
from adsrt.train.pipeline import PRESETS, PipelineConfig, train_all
from adsrt.version import __version__

log = logging.getLogger(__name__)

RESULTS = Path("benchmarks", "results")  # of the working folder; benchmarks/bench_quality.py passes its own
EVAL_DEGRADATIONS = ("noise:25", "blur:2", "rain:3")


@dataclass(frozen=True)
class Variant:
    selector: str
    q: float
    granularity: str = "kernel"
    budget: str = "units"

    @property
    def tag(self) -> str:  # the pipeline's folder name for masks and deltas
        suffix = "" if self.budget == "units" else f"_{self.budget}"
        return f"{self.selector}_{self.granularity}_q{self.q:g}{suffix}"


def variants(selectors: list[str], qs: list[float], budget: str, granularity: bool) -> list[Variant]:
    """The main variant (FAIG, kernel units, q = 3%) first, then the selector grid, then granularity/budget."""
    out = [Variant("faig", 0.03, budget=budget)] + [Variant(s, q, budget=budget) for s in selectors for q in qs]
    if granularity:
        other = "units" if budget == "params" else "params"
        out += [Variant("faig", 0.03, "filter", budget), Variant("faig", 0.03, budget=other)]
    return list(dict.fromkeys(out))


def _stage_seconds(work: Path) -> dict[str, float]:
    """Training time per restorer stage from its log.csv (the last row's wall seconds)."""
    out = {}
    for log_csv in sorted(work.glob("**/log.csv")):
        rows = list(csv.DictReader(log_csv.open()))
        if rows and rows[-1].get("seconds"):
            out[str(log_csv.parent.relative_to(work))] = float(rows[-1]["seconds"])
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The whole table (this run's rows only: a re-run replaces it), written atomically."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run(args: argparse.Namespace) -> None:
    work, results = Path(args.work), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    todo = variants(args.selectors, args.qs, args.budget, not args.no_granularity)
    main_variant = todo[0]
    started = time.time()

    bundles: dict[Variant, Path] = {}
    for v in todo:
        path = work / "bundles" / f"{v.tag}.safetensors"
        if not path.is_file():
            log.info("training variant %s", v.tag)
            train_all(PipelineConfig(data=args.train, out=str(path), work=str(work), degradations=tuple(args.degradations),
                                     preset=args.preset, selector=v.selector, q=v.q, granularity=v.granularity,
                                     budget=v.budget, seed=args.seed, device=args.device, progress=not args.quiet))
        bundles[v] = path

    cases = synthetic_cases(args.eval, EVAL_DEGRADATIONS, seed=args.seed, max_images=args.max_images)
    eval_key = {"eval": str(Path(args.eval).resolve()), "degradations": EVAL_DEGRADATIONS, "seed": args.seed,
                "generators": generator_digest(),
                "max_images": args.max_images}
    reports: dict[Variant, dict[str, Any]] = {}
    for v, path in bundles.items():
        cache = work / "eval" / f"{v.tag}.json"
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("key") == json.loads(json.dumps(eval_key)) and cached.get("bundle_mtime") == path.stat().st_mtime_ns:
                reports[v] = cached["report"]
                continue
        bundle = load_bundle(path)
        main = v == main_variant
        log.info("evaluating %s on %d images", v.tag, len(cases))
        report = evaluate_cases(bundle, cases, targets=load_targets(work, bundle) if main else None,
                                methods=("input", "um", "ads", "ads_oracle", "im") if main or args.full_ablation else ("ads_oracle",),
                                device=args.device, progress=not args.quiet, data=eval_key["eval"])
        summary = summarize(bundle)
        report["params"] = {"um": summary.um_params, "classifier": summary.classifier_params,
                            "delta": dict(summary.delta_params), "overhead": {d: summary.overhead(d) for d in bundle.degradations}}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"key": eval_key, "bundle_mtime": path.stat().st_mtime_ns, "report": report})
        reports[v] = report

    stamp = {"date": datetime.date.today().isoformat(), "device": device_name(resolve_device(args.device)),
             "torch": torch.__version__, "adsrt": __version__, "preset": args.preset, "eval_data": Path(args.eval).name, "seed": args.seed}
    main_report = reports[main_variant]
    p = main_report["params"]
    ads_params = p["um"] + sum(p["delta"].values()) + p["classifier"]
    params = {"input": 0, "um": p["um"], "ads": ads_params, "ads_oracle": ads_params - p["classifier"],
              "im": p["um"] * len(args.degradations)}
    keys = [*main_report["results"], "mean"]

    def row_of(report: dict[str, Any], key: str) -> dict[str, Any]:
        return report["mean"] if key == "mean" else report["results"][key]

    main_rows = [
        {**stamp, "degradation": key, "method": m, "psnr": row_of(main_report, key)["psnr"][m],
         "ssim": row_of(main_report, key)["ssim"][m], "params": params[m]}
        for key in keys for m in ("input", "um", "ads", "ads_oracle", "im")
    ]

    def ablation_rows(vs: list[Variant]) -> list[dict[str, Any]]:
        rows = []
        for v in vs:
            r = reports[v]
            for key in keys:
                name = key.split(":")[0]
                delta = r["params"]["delta"].get(name, sum(r["params"]["delta"].values()))
                rows.append({**stamp, "selector": v.selector, "granularity": v.granularity, "budget": v.budget, "q": v.q,
                             "degradation": key, "psnr_ads": row_of(r, key)["psnr"].get("ads"),
                             "psnr_oracle": row_of(r, key)["psnr"]["ads_oracle"], "ssim_ads": row_of(r, key)["ssim"].get("ads"),
                             "ssim_oracle": row_of(r, key)["ssim"]["ads_oracle"], "delta_params": delta,
                             "delta_frac": delta / r["params"]["um"]})
        return rows

    selector_rows = ablation_rows([v for v in todo if v.granularity == "kernel" and v.budget == args.budget])
    granularity_rows = ablation_rows([v for v in todo if v.q == 0.03 and v.selector == "faig"])
    _write_csv(results / "quality_main.csv", main_rows)
    _write_csv(results / "quality_selectors.csv", selector_rows)
    _write_csv(results / "quality_granularity.csv", granularity_rows)
    markdown = _markdown(args, stamp, main_report, params, selector_rows, granularity_rows, work)
    atomic_write_bytes(results / "quality.md", markdown.encode())
    _plot(results / "quality_psnr_vs_params.png", main_report, params, reports, todo)
    print(markdown)
    log.info("done in %.0f s", time.time() - started)


def _markdown(args, stamp, main_report, params, selector_rows, granularity_rows, work: Path) -> str:
    preset = PRESETS[args.preset]
    seconds = _stage_seconds(work)
    lines = [
        "# Quality at adsrt's scale (benchmarks/bench_quality.py)",
        "",
        f"{stamp['date']}, {stamp['device']}, torch {stamp['torch']}, adsrt {stamp['adsrt']}.",
        "",
        f"**Budget.** Preset `{args.preset}`: backbone {preset.backbone}, {preset.um_steps} UM steps and "
        f"{preset.target_steps} steps per IM at batch {preset.batch_size} x {preset.crop_size}px crops, FAIG over "
        f"N = {preset.path_steps} path steps on {preset.faig_images} crops, {preset.refine_steps} delta refinement "
        f"steps per degradation, classifier {preset.dc_steps} steps. Trained on `{Path(args.train).name}` "
        f"(degradations {', '.join(args.degradations)} at random levels of their training ranges).",
        "Training wall time per restorer stage (s): "
        + (", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) or "n/a") + ".",
        "",
        f"**Evaluation.** `{stamp['eval_data']}` ({main_report['results'][next(iter(main_report['results']))]['n']} "
        f"images), degraded with {', '.join(EVAL_DEGRADATIONS)}, seed {args.seed}; PSNR (dB) / SSIM on RGB in [0, 1], "
        "whole images (adsrt protocol). ADS uses the classifier's probabilities; oracle the true one-hot c.",
        "",
        "## (a) UM vs ADS vs IM",
        "",
        "| degradation | input | UM | ADS | ADS oracle | IM | DC accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in [*main_report["results"].items(), ("mean", main_report["mean"])]:
        cells = [f"{_fmt(r['psnr'][m])} / {_fmt(r['ssim'][m], 4)}" for m in ("input", "um", "ads", "ads_oracle", "im")]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {_fmt(r['dc_accuracy'], 3)} |")
    lines.append("| params | " + " | ".join(f"{params[m]:,}" for m in ("input", "um", "ads", "ads_oracle", "im")) + " | |")
    lines += ["", "ADS params = UM + the deltas of every degradation + the classifier; IM = one UM-sized model per "
              "degradation.", "", f"## (b) Selector ablation (kernel units, budget {args.budget}; PSNR of ADS oracle / ADS)", ""]
    qs = sorted({r["q"] for r in selector_rows})
    degs = list(dict.fromkeys(r["degradation"] for r in selector_rows))
    lines.append("| selector | q | " + " | ".join(degs) + " | delta params per degradation |")
    lines.append("|---|---|" + "---|" * len(degs) + "---|")
    for selector in dict.fromkeys(r["selector"] for r in selector_rows):
        for q in qs:
            rows = {r["degradation"]: r for r in selector_rows if r["selector"] == selector and r["q"] == q}
            if not rows:
                continue
            cells = [f"{_fmt(rows[d]['psnr_oracle'])} / {_fmt(rows[d]['psnr_ads'])}" for d in degs]
            frac = np.mean([rows[d]["delta_frac"] for d in degs if d != "mean"])
            lines.append(f"| {selector} | {q:g} | " + " | ".join(cells) + f" | {frac:.2%} of the UM |")
    lines += ["", "## (c) Granularity and budget (FAIG, q = 3%; PSNR of ADS oracle / ADS)", "",
              "| granularity | budget | " + " | ".join(degs) + " | delta params per degradation |",
              "|---|---|" + "---|" * len(degs) + "---|"]
    for (gran, budget) in dict.fromkeys((r["granularity"], r["budget"]) for r in granularity_rows):
        rows = {r["degradation"]: r for r in granularity_rows if r["granularity"] == gran and r["budget"] == budget}
        cells = [f"{_fmt(rows[d]['psnr_oracle'])} / {_fmt(rows[d]['psnr_ads'])}" for d in degs]
        frac = np.mean([rows[d]["delta_frac"] for d in degs if d != "mean"])
        lines.append(f"| {gran} | {budget} | " + " | ".join(cells) + f" | {frac:.2%} of the UM |")
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/bench_quality.py --train ../shared/data/train --eval "
              f"../shared/data/eval/cbsd68 --work WORK --preset {args.preset}`", ""]
    return "\n".join(lines)


def _plot(path: Path, main_report, params, reports, todo: list[Variant]) -> None:
    """Left: mean PSNR vs total parameters (UM, ADS, IM). Right: the selector ablation vs delta size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    mean = main_report["mean"]["psnr"]
    um_params = main_report["params"]["um"]
    left.scatter([params["um"]], [mean["um"]], marker="s", s=60, label="UM", zorder=3)
    if mean.get("ads") is not None:
        left.scatter([params["ads"]], [mean["ads"]], marker="*", s=140, label="ADS (classifier's c)", zorder=4)
    if mean.get("im") is not None:
        left.scatter([params["im"]], [mean["im"]], marker="D", s=60, label="IM (one model per degradation)", zorder=3)
    faig = sorted((v for v in todo if v.selector == "faig" and v.granularity == "kernel" and v.budget == todo[0].budget),
                  key=lambda v: v.q)
    left.plot([reports[v]["params"]["um"] + sum(reports[v]["params"]["delta"].values()) for v in faig],
              [reports[v]["mean"]["psnr"]["ads_oracle"] for v in faig], marker="o",
              label=f"ADS oracle, FAIG, q = {', '.join(f'{v.q:g}' for v in faig)}")
    left.set_xlabel("parameters (ADS: UM + all deltas)")
    left.set_ylabel("mean PSNR (dB), RGB")
    left.set_title(f"PSNR vs parameters (input: {mean['input']:.2f} dB)" if mean.get("input") else "PSNR vs parameters")
    left.ticklabel_format(axis="x", style="sci", scilimits=(3, 3))

    for selector in dict.fromkeys(v.selector for v in todo):
        vs = sorted((v for v in todo if v.selector == selector and v.granularity == "kernel" and v.budget == todo[0].budget),
                    key=lambda v: v.q)
        xs = [100 * np.mean(list(reports[v]["params"]["delta"].values())) / um_params for v in vs]
        right.plot(xs, [reports[v]["mean"]["psnr"]["ads_oracle"] for v in vs], marker="o", label=selector)
    right.axhline(mean["um"], color="gray", linestyle="--", linewidth=1, label="UM")
    if mean.get("im") is not None:
        right.axhline(mean["im"], color="black", linestyle=":", linewidth=1, label="IM")
    right.set_xlabel("delta parameters per degradation (% of the UM)")
    right.set_ylabel("mean PSNR of ADS oracle (dB)")
    right.set_title("Which units to adapt: selector ablation")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: Sequence[str] | None = None, *, default_results: str | Path = RESULTS) -> int:
    """The command line of ``benchmarks/bench_quality.py`` (``argv``: its options; ``default_results``: the
    --results default, the script's ``benchmarks/results``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="folder of clean training photos")
    parser.add_argument("--eval", required=True, help="folder of clean evaluation photos (e.g. CBSD68)")
    parser.add_argument("--work", required=True, help="work folder (reused and resumed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--degradations", type=lambda s: s.split(","), default=["noise", "blur", "rain"])
    parser.add_argument("--selectors", type=lambda s: s.split(","), default=["faig", "random", "encoder", "absdiff"])
    parser.add_argument("--qs", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 0.03, 0.05])
    parser.add_argument("--budget", choices=("params", "units"), default="params",
                        help="selection budget of the main variant and the selector grid (see adsrt.train.select); "
                             "the other one is measured in the granularity table")
    parser.add_argument("--no-granularity", action="store_true", help="skip the filter / parameter-budget variants")
    parser.add_argument("--full-ablation", action="store_true",
                        help="also score ADS with the classifier's c (not only the oracle) for every ablation variant")
    parser.add_argument("--max-images", type=int, help="evaluate on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--results", default=str(default_results), help=f"output folder (default {default_results})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)
    return 0
