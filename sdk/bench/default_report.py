"""The quality report of the bundled default model: CBSD68 scores, classifier confusion, real photos, cost, peers.

The code of ``benchmarks/bench_default.py`` (a thin wrapper around :func:`main`):

    .venv/bin/python benchmarks/bench_default.py --bundle default --eval ../shared/data/eval/cbsd68 \\
        --real ../shared/data/real --targets WORK [--max-images N] [--out benchmarks/results]

1. CBSD68 (clean photos, degraded on the fly): every degradation of the bundle at its typical level
   (``LEVELS[name].default``, spec ``name:level``), one generator per image and degradation keyed by
   --seed (0), restored whole; PSNR/SSIM on RGB in [0, 1] (adsrt protocol) of input, UM, ADS (the
   classifier's c), ADS oracle (true one-hot c) and IM (the individual models of --targets WORK,
   ``WORK/targets/<degradation>/model.safetensors``), plus the classifier's accuracy. The scoring is
   :func:`adsrt.train.evaluate.evaluate_cases`, the code behind ``adsrt eval``.
2. The classifier's confusion matrix on the same degraded images (rows: true degradation, columns:
   predicted class, the degradations then "clean"): the argmax of the runtime's probabilities,
   :meth:`adsrt.runtime.restorer.Restorer.classify` on the torch backend (the bundle's input contract
   and temperature), the same call ``adsrt eval`` scores its accuracy with.
3. Do no harm: the clean CBSD68 photos as input (spec ``clean`` of :mod:`adsrt.train.evaluate`): PSNR/SSIM
   of UM and ADS against the photo itself (a restorer should change a clean photo little) and the share
   the classifier calls clean.
4. Real photos without ground truth: every subfolder of --real named after a degradation of the bundle
   (``rain``, ``lowlight``, ...; others are skipped with a log line) is classified image by image (the same
   :meth:`~adsrt.runtime.restorer.Restorer.classify`); per folder, as a distribution: n, the top-1 share
   of that degradation, the mean and quartiles of its probability, the top guesses, and a histogram of the
   probability (``default_real.png``, with the top guesses beside it).
5. Parameters (UM, ADS deltas, classifier, IM = k x UM) and GMACs at 1280x720 (UM, classifier).
6. Peers as their papers report them (constants below; other data, other protocols: not comparable).

Everything computed is cached in OUT/default_eval.json, keyed by the bundle digest, the data, the levels,
the seed and the targets, so a re-run only rewrites the tables and the plot; --force recomputes.
Writes into --out (default benchmarks/results/, which the script passes to :func:`main`):
default_quality.csv, default_confusion.csv, default_real.csv (rows keyed by bundle digest and row name,
upserted with :func:`adsrt.fileio.upsert_csv`: rows of another bundle are kept, marked by their digest),
default_report.md, default_psnr_vs_params.png, default_real.png. Prints the quality table and whether ADS
beats UM on every degradation (--check: exit status 1 when it does not).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adsrt.arch import model_cost
from adsrt.bench.timing import device_name
from adsrt.bundle import Bundle, summarize
from adsrt.errors import AdsrtError
from adsrt.fileio import atomic_write_bytes, upsert_csv, write_json
from adsrt.imageio import list_images, read_image
from adsrt.metrics import rgb_to_y
from adsrt.runtime.backends import resolve_device
from adsrt.runtime.restorer import CLEAN, Restorer, RestorerConfig, resolve_bundle
from adsrt.train.degradations import LEVELS, generator_digest
from adsrt.train.evaluate import (
    CLEAN_SPEC,
    METHODS,
    EvalCase,
    evaluate_cases,
    format_report,
    load_targets,
    synthetic_cases,
)
from adsrt.version import __version__

log = logging.getLogger(__name__)

RESULTS = Path("benchmarks", "results")  # of the working folder; benchmarks/bench_default.py passes its own
COST_SIZE = (720, 1280)  # height, width
NAMES = {"input": "input", "um": "UM", "ads": "ADS", "ads_oracle": "ADS oracle", "im": "IM"}

# ------------------------------------------------------------------------------------------------ peers

NOT_COMPARABLE = "as reported by the paper, on its own data, not comparable with ours directly"
# Checked against /work/shared/papers/*.txt where the paper is there (PromptIR is not).
def _adms_row(variant: str, setting: str, psnrs: tuple[float, float, float, float], params: str) -> dict[str, Any]:
    """A row of the ADMS paper's Rain-Blur-Noise table (NAFNet backbone): rain, blur, noise, average PSNR."""
    rain, blur, noise, average = psnrs
    return {"method": f"ADMS (CVPR 2023), NAFNet, {variant}", "setting": setting,
            "results": [("Rain", rain, None), ("Blur", blur, None), ("Noise", noise, None)],
            "average": (average, None), "params": params, "source": "ADMS slides, Rain-Blur-Noise table"}


PEERS: list[dict[str, Any]] = [
    {
        "method": "AirNet (CVPR 2022)",
        "setting": "all-in-one, 3 tasks",
        "results": [("BSD68 sigma15", 33.92, 0.9329), ("BSD68 sigma25", 31.26, 0.8884),
                    ("BSD68 sigma50", 28.00, 0.7974), ("Rain100L", 34.90, 0.9675), ("SOTS", 27.94, 0.9615)],
        "average": (31.20, 0.9095),
        "params": "7.6 M (ADMS CVPR 2023 slides)",
        "source": "AirNet paper, Table 4 (All-In-One)",
    },
    {
        "method": "PromptIR (NeurIPS 2023)",
        "setting": "all-in-one, 3 tasks",
        "results": [("SOTS", 30.58, 0.974), ("Rain100L", 36.37, 0.972), ("BSD68 sigma15", 33.98, 0.933),
                    ("BSD68 sigma25", 31.31, 0.888), ("BSD68 sigma50", 28.06, 0.799)],
        "average": (32.06, 0.913),
        "params": "-",
        "source": "PromptIR paper, Table 1",
    },
    {
        "method": "IDR (CVPR 2023)",
        "setting": "all-in-one, 5 tasks",
        "results": [("Rain100L", 35.63, None), ("SOTS", 25.24, None), ("BSD68", 31.60, None), ("GoPro", 27.87, None),
                    ("LOL", 21.34, None)],
        "average": None,
        "params": "-",
        "source": "IDR supplement, Table 1 (w/o. clean); PSNR only, BSD68 noise level not stated there",
    },
    *(_adms_row(variant, setting, psnrs, params) for variant, setting, psnrs, params in (
        ("Ours", "Rain-Blur-Noise (the method adsrt implements)", (33.15, 29.99, 31.53, 31.56), "18.9 M"),
        ("UM", "Rain-Blur-Noise", (32.99, 29.46, 31.39, 31.28), "17.1 M"),
        ("IM", "Rain-Blur-Noise (one model per degradation)", (33.03, 30.30, 31.59, 31.64), "51.3 M"),
    )),
]


# ---------------------------------------------------------------------------------------------- helpers


def eval_specs(degradations: Sequence[str]) -> list[tuple[str, float, str]]:
    """``(name, level, spec)`` per degradation at its typical level; names without a level model are skipped."""
    out = []
    for name in degradations:
        if name not in LEVELS:
            log.warning("%s: no synthetic degradation of that name; it is not evaluated on CBSD68", name)
            continue
        level = LEVELS[name].default
        out.append((name, level, f"{name}:{level:g}"))
    return out


def classifier_restorer(bundle: Bundle, device: torch.device) -> Restorer:
    """The runtime on the torch backend, whole images (no tiling), whose :meth:`Restorer.classify` gives
    the class probabilities (the bundle's input contract and temperature)."""
    return Restorer(bundle, RestorerConfig(backend="torch", device=str(device), memory_limit_mb=0),
                    source="default report")


def classify(restorer: Restorer, image: np.ndarray) -> np.ndarray:
    """Class probabilities of one RGB uint8 image in class order (the degradations, then clean)."""
    p = restorer.classify(image)  # RestoreError (an AdsrtError) when they are not finite
    return np.array([p[c] for c in [*restorer.degradations, CLEAN]], dtype=np.float64)


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Rows: true class (in ``classes`` order, those present), columns: predicted class; counts and row shares."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predictions differ in length")
    rows: dict[str, Any] = {}
    for true in [c for c in classes if c in set(truth)] + sorted(set(truth) - set(classes)):
        hits = [p for t, p in zip(truth, predicted, strict=True) if t == true]
        counts = {c: sum(p == c for p in hits) for c in classes}
        rows[true] = {"n": len(hits), "counts": counts, "shares": {c: counts[c] / len(hits) for c in classes}}
    return {"classes": list(classes), "rows": rows}


def classify_cases(bundle: Bundle, cases: Sequence[EvalCase], device: torch.device,
                   progress: bool = True) -> dict[str, Any]:
    """The confusion matrix of the bundle's classifier on labelled cases (unlabelled ones are left out)."""
    from tqdm import tqdm

    classes = [*bundle.degradations, CLEAN]
    restorer = classifier_restorer(bundle, device)
    truth, predicted = [], []
    for case in tqdm(cases, desc="confusion", unit="img", disable=not progress):
        if case.label is None:
            continue
        # A degradation the bundle does not know counts as clean/unknown, as in evaluate_cases.
        truth.append(case.label if case.label in bundle.degradations else CLEAN)
        predicted.append(classes[int(classify(restorer, case.degraded).argmax())])
    return confusion_matrix(truth, predicted, classes)


def real_folders(real_dir: str | Path, degradations: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """Subfolders of ``real_dir`` named after a bundle degradation, and the names of the others (skipped)."""
    folder = Path(real_dir)
    if not folder.is_dir():
        raise AdsrtError(f"{folder}: not a folder")
    keep, skipped = {}, []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name in degradations:
            keep[sub.name] = sub
        else:
            log.info("real photos: skipping %s/ (not a degradation of this bundle: %s)", sub.name,
                     ", ".join(degradations))
            skipped.append(sub.name)
    return keep, skipped


def median_luma(image: np.ndarray) -> float:
    """The median BT.601 luma of an RGB uint8 image, in [0, 1] (studio range, :func:`adsrt.metrics.rgb_to_y`):
    how dark a photo is, for splitting real low-light photos into dark ones and ones exposed like any photo."""
    return float(np.median(rgb_to_y(image, 255.0))) / 255.0


def classify_real(bundle: Bundle, real_dir: str | Path, device: torch.device, max_images: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Per known subfolder: n, share classified as its degradation, mean probability of it, top guesses."""
    from tqdm import tqdm

    classes = [*bundle.degradations, CLEAN]
    restorer = classifier_restorer(bundle, device)
    folders, skipped = real_folders(real_dir, bundle.degradations)
    out: dict[str, Any] = {}
    for name, sub in folders.items():
        paths = list_images(sub)[:max_images] if max_images else list_images(sub)
        if not paths:
            log.warning("real photos: %s/ holds no images", name)
            continue
        probs, lumas = [], []
        for path in tqdm(paths, desc=f"real {name}", unit="img", disable=not progress):
            image = read_image(path)
            probs.append(classify(restorer, image))
            lumas.append(median_luma(image))
        probs = np.stack(probs)
        top = [classes[i] for i in probs.argmax(1)]
        index = classes.index(name)
        out[name] = {
            "n": len(paths),
            "hit_share": float(np.mean([t == name for t in top])),
            "mean_probability": float(probs[:, index].mean()),
            "probability_quartiles": np.percentile(probs[:, index], [25, 50, 75]).round(4).tolist(),
            "probabilities": probs[:, index].round(4).tolist(),  # per photo, by name: the histogram
            "top": top,  # per photo, by name
            "median_luma": np.round(lumas, 4).tolist(),  # per photo: how dark it is (the exposure split)
            "top_guesses": {c: int(sum(t == c for t in top)) for c in classes},
            "mean_probabilities": dict(zip(classes, probs.mean(0).round(4).tolist(), strict=True)),
        }
    return {"folders": out, "skipped": skipped}


def costs(bundle: Bundle, device: torch.device) -> dict[str, Any]:
    """Parameter counts (see :func:`adsrt.bundle.summarize`) and GMACs at 1280x720."""
    s = summarize(bundle)
    height, width = COST_SIZE
    um = model_cost(bundle.build_um().to(device), height, width)
    dc = model_cost(bundle.build_classifier().to(device), height, width) if bundle.classifier is not None else None
    return {
        "height": height,
        "width": width,
        "k": len(bundle.degradations),
        "um_params": s.um_params,
        "classifier_params": s.classifier_params,
        "delta_params": dict(s.delta_params),
        "masked_units": dict(s.masked_units),
        "eligible_units": s.eligible_units,
        "um_gmacs": um.gmacs,
        "classifier_gmacs": None if dc is None else dc.gmacs,
        "classifier_context_width": 0 if bundle.classifier is None else bundle.classifier.context_width,
    }


def method_params(cost: dict[str, Any]) -> dict[str, int]:
    """Parameters each method holds: ADS = UM + every delta + classifier; oracle without the classifier."""
    deltas = sum(cost["delta_params"].values())
    return {"input": 0, "um": cost["um_params"], "ads": cost["um_params"] + deltas + cost["classifier_params"],
            "ads_oracle": cost["um_params"] + deltas, "im": cost["k"] * cost["um_params"]}


def ads_vs_um(report: dict[str, Any], confusion: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per degradation: ADS - UM and oracle - UM (PSNR, SSIM), whether ADS beats UM, and why not."""
    out = []
    for key, r in report["results"].items():
        psnr, ssim = r["psnr"], r["ssim"]
        gain = None if psnr.get("ads") is None or psnr.get("um") is None else psnr["ads"] - psnr["um"]
        ssim_gain = None if ssim.get("ads") is None or ssim.get("um") is None else ssim["ads"] - ssim["um"]
        oracle = None if psnr.get("ads_oracle") is None or psnr.get("um") is None else psnr["ads_oracle"] - psnr["um"]
        acc = r.get("dc_accuracy")
        if gain is None:
            why = "no ADS score (no classifier, or no delta for this degradation)"
        elif gain > 0:
            why = ""
        elif oracle is not None and oracle > 0:
            name = key.split(":")[0]
            row = (confusion or {}).get("rows", {}).get(name)
            wrong = {c: v for c, v in (row["counts"] if row else {}).items() if c != name and v}
            worst = max(wrong, key=wrong.get) if wrong else None
            probs = r.get("dc_mean_probability") or {}
            mean_p = probs.get(name)
            others = sorted(((v, c) for c, v in probs.items() if c != name), reverse=True)[:2]
            spread = ", ".join(f"{c} {v:.2f}" for v, c in others)
            why = (f"the deltas help with the true c (oracle {oracle:+.2f} dB) and the classifier's top guess is "
                   f"right on {_pct(acc)} of these images" + (f" (otherwise mostly {worst})" if worst else "")
                   + (f", but c is soft: mean p({name}) = {mean_p:.2f}, the rest on {spread}; the other "
                      "degradations' deltas, blended in at those weights, cost more than the right one gains"
                      if mean_p is not None else ""))
        else:
            why = (f"the deltas themselves do not beat the UM here (oracle {_signed(oracle)} dB): the selected "
                   "units and their refinement did not help at this level")
        out.append({"degradation": key, "ads_minus_um_psnr": gain, "ads_minus_um_ssim": ssim_gain,
                    "oracle_minus_um_psnr": oracle, "dc_accuracy": acc, "beats": bool(gain is not None and gain > 0),
                    "why_not": why})
    return out


# ---------------------------------------------------------------------------------------------- caching


def _file_stamp(path: Path) -> list[int] | None:
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None


def eval_key(args: argparse.Namespace, bundle: Bundle, digest: str, specs: list[str]) -> dict[str, Any]:
    images = list_images(args.eval)
    images = images[: args.max_images] if args.max_images else images
    targets = None
    if args.targets:
        targets = {name: _file_stamp(Path(args.targets) / "targets" / name / "model.safetensors")
                   for name in bundle.degradations}
    return {"bundle": digest, "eval": str(Path(args.eval).resolve()), "images": [p.name for p in images],
            "specs": specs, "generators": generator_digest(), "seed": args.seed, "protocol": "adsrt", "targets": targets,
            "targets_dir": str(Path(args.targets).resolve()) if args.targets else None, "adsrt": __version__}


def real_key(args: argparse.Namespace, digest: str) -> dict[str, Any]:
    folders = sorted(p for p in Path(args.real).iterdir() if p.is_dir())
    # "format" 2: per-photo probabilities and quartiles (the histogram); a cache without them is recomputed.
    return {"format": 2, "bundle": digest, "real": str(Path(args.real).resolve()), "max_images": args.max_images,
            "files": {p.name: [q.name for q in list_images(p)] for p in folders}}


def _same(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


# ------------------------------------------------------------------------------------------------ output


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _signed(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:+.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _csv_value(v: Any) -> Any:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else v


def quality_rows(report: dict[str, Any], levels: dict[str, float], digest: str, date: str) -> list[dict[str, Any]]:
    rows = []
    items = [*report["results"].items(),
             ("mean", {**report["mean"], "n": sum(r["n"] for r in report["results"].values())})]
    for key, r in items:
        row: dict[str, Any] = {"bundle": digest, "degradation": key.split(":")[0] if key != "mean" else "mean",
                               "level": f"{levels[key]:g}" if key in levels else "", "n": r["n"]}
        for m in METHODS:
            row[f"{m}_psnr"] = r["psnr"].get(m)
            row[f"{m}_ssim"] = r["ssim"].get(m)
        row["dc_accuracy"] = r["dc_accuracy"]
        row["date"] = date
        rows.append({k: _csv_value(v) for k, v in row.items()})
    return rows


QUALITY_COLUMNS = ["bundle", "degradation", "level", "n", *[f"{m}_{x}" for m in METHODS for x in ("psnr", "ssim")],
                   "dc_accuracy", "date"]


def write_csvs(out: Path, data: dict[str, Any], digest: str) -> None:
    ev = data["eval"]
    levels = {spec: level for _, level, spec in ev["specs"]}
    upsert_csv(out / "default_quality.csv", quality_rows(ev["report"], levels, digest, ev["date"]),
               key=("bundle", "degradation"), columns=QUALITY_COLUMNS)
    confusion = ev.get("confusion")
    if confusion:
        classes = confusion["classes"]
        rows = [{"bundle": digest, "true": true, "n": r["n"],
                 **{f"count_{c}": r["counts"][c] for c in classes},
                 **{f"share_{c}": f"{r['shares'][c]:.4f}" for c in classes}}
                for true, r in confusion["rows"].items()]
        columns = ["bundle", "true", "n", *[f"count_{c}" for c in classes], *[f"share_{c}" for c in classes]]
        upsert_csv(out / "default_confusion.csv", rows, key=("bundle", "true"), columns=columns)
    real = data.get("real")
    if real and real["result"]["folders"]:
        classes = next(iter(real["result"]["folders"].values()))["top_guesses"].keys()
        rows = [{"bundle": digest, "folder": name, "n": r["n"], "hit_share": f"{r['hit_share']:.4f}",
                 "mean_probability": f"{r['mean_probability']:.4f}",
                 **{f"top_{c}": r["top_guesses"][c] for c in classes}}
                for name, r in real["result"]["folders"].items()]
        columns = ["bundle", "folder", "n", "hit_share", "mean_probability", *[f"top_{c}" for c in classes]]
        upsert_csv(out / "default_real.csv", rows, key=("bundle", "folder"), columns=columns)


def markdown(data: dict[str, Any], meta: dict[str, Any]) -> str:
    ev, cost = data["eval"], data["cost"]
    report, confusion = ev["report"], ev.get("confusion")
    params = method_params(cost)
    n_images = len(ev["key"]["images"])
    levels = ", ".join(spec for _, _, spec in ev["specs"])
    lines = [
        "# The default model: quality report (benchmarks/bench_default.py)",
        "",
        f"- **Bundle**: {meta['bundle_label']}, digest `{meta['digest'][:12]}`; degradations "
        f"{', '.join(meta['degradations'])}; {meta['backbone']}; ADS at {meta['granularity']} granularity, "
        f"q = {meta['q']:g}.",
        f"- **Data**: CBSD68 (`{meta['eval_arg']}`, {n_images} clean photos"
        + (f", the first {meta['max_images']} by name" if meta["max_images"] else "")
        + f"), degraded on the fly at the typical levels {levels}; seed {ev['key']['seed']} "
        "(one generator per photo and degradation).",
        "- **Protocol**: PSNR (dB) / SSIM on RGB in [0, 1], whole images (adsrt protocol, `adsrt eval`). "
        "ADS: the classifier's probabilities as c; ADS oracle: the true one-hot c; IM: one model per degradation "
        f"(`{meta['targets_arg'] or 'no --targets: none'}`).",
        f"- **Run**: computed {ev['date']} on {ev['device']}, torch {meta['torch']}, adsrt {meta['adsrt']}; "
        f"report written {meta['date']}.",
        f"- **Command**: `{meta['command']}`",
        "",
        "## Quality on CBSD68 (PSNR dB / SSIM)",
        "",
        "| degradation | level | n | input | UM | ADS | ADS oracle | IM | DC accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    spec_level = {spec: level for _, level, spec in ev["specs"]}
    for key, r in [*report["results"].items(), ("**mean**", report["mean"])]:
        n = r.get("n", sum(x["n"] for x in report["results"].values()))
        cells = [f"{_fmt(r['psnr'].get(m))} / {_fmt(r['ssim'].get(m), 4)}" for m in METHODS]
        level = f"{spec_level[key]:g}" if key in spec_level else ""
        lines.append(f"| {key.split(':')[0]} | {level} | {n} | " + " | ".join(cells)
                     + f" | {_fmt(r['dc_accuracy'], 3)} |")
    sizes = [_params(params[m]) if m != "input" else "" for m in METHODS]
    lines.append("| parameters | | | " + " | ".join(sizes) + " | |")

    verdicts = ads_vs_um(report, confusion)
    lines += ["", "## ADS vs UM", "",
              "| degradation | ADS - UM (dB) | ADS - UM (SSIM) | oracle - UM (dB) | DC accuracy | ADS > UM |",
              "|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['degradation'].split(':')[0]} | {_signed(v['ads_minus_um_psnr'])} | "
                     f"{_signed(v['ads_minus_um_ssim'], 4)} | {_signed(v['oracle_minus_um_psnr'])} | "
                     f"{_fmt(v['dc_accuracy'], 3)} | {'yes' if v['beats'] else '**no**'} |")
    lines.append("")
    lines += _verdict_lines(verdicts)

    if confusion:
        classes = confusion["classes"]
        lines += ["", "## Classifier confusion on CBSD68 (row shares; rows: true degradation, columns: predicted)",
                  "",
                  "| true \\ predicted | " + " | ".join(classes) + " | n |", "|---|" + "---|" * (len(classes) + 1)]
        for true, r in confusion["rows"].items():
            lines.append(f"| {true} | " + " | ".join(f"{r['shares'][c]:.2f}" for c in classes) + f" | {r['n']} |")

    harm = data.get("harm")
    if harm:
        r = harm["report"]["results"][CLEAN_SPEC]
        lines += ["", "## Do no harm: clean photos in", "",
                  f"The {r['n']} clean CBSD68 photos as input; PSNR / SSIM of the output against the photo itself "
                  "(higher: the restorer changed less), and the share the classifier calls clean.", "",
                  "| input | UM | ADS | classified clean |", "|---|---|---|---|",
                  f"| clean | {_fmt(r['psnr']['um'])} / {_fmt(r['ssim']['um'], 4)} | "
                  f"{_fmt(r['psnr'].get('ads'))} / {_fmt(r['ssim'].get('ads'), 4)} | {_pct(r['dc_accuracy'])} |"]
        prior = meta.get("clean_prior")
        if prior:
            lines += ["", f"The classifier's clean prior (`adsrt train calibrate`): logit bias {prior['bias']:+g} for "
                          f"clean, chosen so {_pct(prior['clean_recall_target'])} of clean frames are called clean on "
                          f"{prior['frames']} whole frames of held-out training photos (there: clean "
                          f"{_pct(prior['before']['clean'])} -> {_pct(prior['after']['clean'])}, degraded frames right "
                          f"{_pct(prior['before']['degraded'])} -> {_pct(prior['after']['degraded'])})."]

    real = data.get("real")
    if real:
        lines += ["", "## Real photos, no ground truth: what the classifier says", "",
                  f"`{meta['real_arg']}`"
                  + (f" (first {meta['max_images']} per folder)" if meta["max_images"] else "")
                  + "; each subfolder holds photos of the degradation it is named after.", "",
                  "| folder | n | top-1 it | mean p(it) | p(it) quartiles | top guesses |", "|---|---|---|---|---|---|"]
        for name, r in real["result"]["folders"].items():
            guesses = ", ".join(f"{c} {v}" for c, v in sorted(r["top_guesses"].items(), key=lambda kv: -kv[1]) if v)
            quart = " / ".join(f"{q:.2f}" for q in r.get("probability_quartiles", []))
            lines.append(f"| {name} | {r['n']} | {_pct(r['hit_share'])} | {r['mean_probability']:.2f} | {quart} | "
                         f"{guesses} |")
        lines += ["", "![real photos](default_real.png)", "",
                  "Left: histogram of the probability the classifier gives the folder's degradation, per photo; "
                  "right: its top-1 guesses."]
        if real["result"]["skipped"]:
            skipped = ", ".join(f"`{s}/`" for s in real["result"]["skipped"])
            lines += ["", f"Skipped (not a degradation of this bundle): {skipped}."]

    k, h, w = cost["k"], cost["height"], cost["width"]
    deltas = sum(cost["delta_params"].values())
    per = ", ".join(f"{d} {_params(n)} ({n / cost['um_params']:.1%})" for d, n in cost["delta_params"].items())
    dc_g = cost["classifier_gmacs"]
    lines += ["", f"## Parameters and compute at {w}x{h}", "",
              "| part | parameters | GMACs per frame | note |", "|---|---|---|---|",
              f"| UM | {cost['um_params']:,} | {cost['um_gmacs']:.2f} | the unified model |",
              f"| ADS deltas (all {k}) | {deltas:,} | - | {per}; values only, plus one index per masked unit |",
              f"| classifier | {cost['classifier_params']:,} | {_fmt(dc_g, 3)} | windows at its training scale"
              f"{' and a context trunk on their mosaic' if cost.get('classifier_context_width') else ''} |",
              f"| ADS in all (UM + deltas + classifier) | {params['ads']:,} | "
              f"{_fmt(None if dc_g is None else cost['um_gmacs'] + dc_g)} | "
              f"+{(params['ads'] - cost['um_params']) / cost['um_params']:.1%} parameters over the UM; "
              "the delta update is a copy, no MACs |",
              f"| IM ({k} x UM) | {params['im']:,} | {cost['um_gmacs']:.2f} | "
              "one model per degradation, one runs per frame |",
              "", "GMACs: Conv2d/ConvTranspose2d/Linear multiply-accumulates of one forward pass "
              "(`adsrt.arch.model_cost`; FLOPs = 2 x MACs)."]

    lines += ["", f"## Peers ({NOT_COMPARABLE})", "",
              "| method | setting | PSNR / SSIM per task | average | parameters | source |",
              "|---|---|---|---|---|---|"]
    for p in PEERS:
        tasks = "; ".join(f"{t} {s:.2f}" + (f"/{m:.4g}" if m is not None else "") for t, s, m in p["results"])
        avg = "-"
        if p["average"] is not None:
            avg = f"{p['average'][0]:.2f}" + (f"/{p['average'][1]:.4g}" if p["average"][1] else "")
        lines.append(f"| {p['method']} | {p['setting']} | {tasks} | {avg} | {p['params']} | {p['source']} |")
    lines += ["", "Every peer number is " + NOT_COMPARABLE + ": other training data, other test sets (BSD68 noise "
              "levels, Rain100L, SOTS, GoPro, LOL), other networks and budgets; ours are synthetic degradations "
              "of CBSD68 at one level each.", ""]
    return "\n".join(lines)


def _verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    missing = [v for v in verdicts if not v["beats"]]
    if not missing:
        return ["ADS beats UM on every degradation (PSNR)."]
    return [f"ADS does not beat UM on {v['degradation'].split(':')[0]} ({_signed(v['ads_minus_um_psnr'])} dB): "
            f"{v['why_not']}." for v in missing]


def plot(path: Path, data: dict[str, Any]) -> None:
    """Left: mean PSNR vs parameters (log x). Right: per-degradation PSNR gains over the input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report, cost = data["eval"]["report"], data["cost"]
    params = method_params(cost)
    mean = report["mean"]["psnr"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
    styles = {"um": ("s", "UM"), "ads": ("*", "ADS (classifier's c)"), "ads_oracle": ("o", "ADS oracle (true c)"),
              "im": ("D", f"IM ({cost['k']} models)")}
    # (dx, dy) in points and alignment: ADS and its oracle sit at nearly the same x, so they go to either side.
    offsets = {"um": ((0, -22), "center"), "ads": ((14, -24), "left"), "ads_oracle": ((-14, 16), "right"),
               "im": ((0, -22), "center")}
    ys = []
    for m, (marker, label) in styles.items():
        if mean.get(m) is None:
            continue
        ys.append(mean[m])
        left.scatter([params[m]], [mean[m]], marker=marker, s=140 if marker == "*" else 60, label=label, zorder=3)
        (dx, dy), ha = offsets[m]
        left.annotate(f"{NAMES[m]}\n{mean[m]:.2f} dB, {_params(params[m])}", (params[m], mean[m]),
                      textcoords="offset points", xytext=(dx, dy), ha=ha, va="center", fontsize=7,
                      arrowprops={"arrowstyle": "-", "lw": 0.5})
    left.set_xscale("log")
    xs = [params[m] for m in styles if mean.get(m) is not None]
    if xs:
        left.set_xlim(min(xs) / 1.8, max(xs) * 1.8)
        span = max(max(ys) - min(ys), 0.2)
        left.set_ylim(min(ys) - 0.6 * span, max(ys) + 0.4 * span)
    left.set_xlabel("parameters (log)")
    left.set_ylabel("mean PSNR on CBSD68 (dB), RGB")
    left.set_title("Mean PSNR vs parameters" + (f" (input {mean['input']:.2f} dB)" if mean.get("input") else ""))

    keys = list(report["results"])
    rows = [report["results"][k]["psnr"] for k in keys]
    methods = [m for m in ("um", "ads", "ads_oracle", "im") if any(r.get(m) is not None for r in rows)]
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        gains = [(np.nan if r.get(m) is None else r[m]) - r["input"] for r in rows]
        right.bar(np.arange(len(keys)) + (i - (len(methods) - 1) / 2) * width, gains, width, label=NAMES[m])
    right.set_xticks(np.arange(len(keys)), keys)
    right.set_ylabel("PSNR gain over the input (dB)")
    right.set_title("Per degradation, CBSD68")
    for ax, where in ((left, "lower right"), (right, "upper left")):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc=where)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_real(path: Path, real: dict[str, Any], label: str) -> None:
    """Per real-photo folder: the histogram of p(its degradation) per photo, and the top-1 guesses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = {n: r for n, r in real["folders"].items() if r.get("probabilities")}
    if not folders:
        return
    fig, axes = plt.subplots(len(folders), 2, figsize=(11, 2.8 * len(folders)), dpi=110, squeeze=False)
    for (name, r), (hist, bars) in zip(folders.items(), axes, strict=True):
        hist.hist(r["probabilities"], bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
        hist.axvline(r["mean_probability"], color="k", lw=1, ls="--", label=f"mean {r['mean_probability']:.2f}")
        hist.set_xlim(0, 1)
        hist.set_xlabel(f"p({name}) per photo")
        hist.set_ylabel("photos")
        hist.set_title(f"real {name}: {r['n']} photos, top-1 {name} {r['hit_share']:.0%}")
        hist.legend(fontsize=8)
        classes = list(r["top_guesses"])
        counts = [r["top_guesses"][c] for c in classes]
        bars.barh(classes, counts, color=["tab:green" if c == name else "tab:gray" for c in classes])
        bars.invert_yaxis()
        bars.set_xlabel("photos (top-1 guess)")
        bars.set_title("what the classifier says")
    fig.suptitle(f"Real photos without ground truth, classifier of {label}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# -------------------------------------------------------------------------------------------------- run


def _command() -> str:
    exe = sys.executable
    if exe.startswith(os.getcwd() + os.sep):
        exe = os.path.relpath(exe)
    return shlex.join([exe, *sys.argv])


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle, label = resolve_bundle(args.bundle)
    digest = bundle.digest()
    device = resolve_device(args.device)
    specs = eval_specs(bundle.degradations)
    if not specs:
        raise AdsrtError(f"none of the bundle's degradations ({bundle.degradations}) can be synthesised")
    has_dc = bundle.classifier is not None
    if not has_dc:
        log.warning("this bundle has no classifier: no ADS column, confusion matrix or real-photo table")

    cache_path = out / "default_eval.json"
    data: dict[str, Any] = {}
    if cache_path.is_file() and not args.force:
        data = json.loads(cache_path.read_text())
    today = datetime.date.today().isoformat()

    key = eval_key(args, bundle, digest, [s for _, _, s in specs])
    if not _same(data.get("eval", {}).get("key"), key):
        cases = synthetic_cases(args.eval, [s for _, _, s in specs], seed=args.seed, max_images=args.max_images)
        targets = load_targets(args.targets, bundle) if args.targets else None
        log.info("evaluating %s on %d degraded images (%s)", label, len(cases), ", ".join(s for _, _, s in specs))
        report = evaluate_cases(bundle, cases, targets=targets, device=device, progress=not args.quiet,
                                data=f"{Path(args.eval).resolve()} degraded with {','.join(s for _, _, s in specs)}, "
                                     f"seed {args.seed}")
        confusion = classify_cases(bundle, cases, device, progress=not args.quiet) if has_dc else None
        if confusion:  # the diagonal must repeat evaluate_cases' accuracy: same classifier, same images
            for spec_key, r in report["results"].items():
                row = confusion["rows"].get(spec_key.split(":")[0])
                diagonal = row["shares"][spec_key.split(":")[0]] if row else None
                if diagonal is not None and r["dc_accuracy"] is not None and abs(diagonal - r["dc_accuracy"]) > 1e-9:
                    log.warning("%s: confusion diagonal %.4f differs from evaluate's accuracy %.4f", spec_key,
                                diagonal, r["dc_accuracy"])
        data["eval"] = {"key": key, "specs": specs, "report": report, "confusion": confusion, "date": today,
                        "device": device_name(device)}
        write_json(cache_path, data)
    else:
        log.info("CBSD68 scores from the cache %s (--force recomputes)", cache_path)

    key = {**eval_key(args, bundle, digest, [CLEAN_SPEC]), "methods": ["um", "ads"]}
    for unused in ("targets", "targets_dir", "generators"):  # the clean row has no IM and no generator
        key.pop(unused)
    if not _same(data.get("harm", {}).get("key"), key):
        cases = synthetic_cases(args.eval, [CLEAN_SPEC], seed=args.seed, max_images=args.max_images)
        log.info("do no harm: %s on %d clean photos", label, len(cases))
        report = evaluate_cases(bundle, cases, methods=["um", "ads"] if has_dc else ["um"], device=device,
                                progress=not args.quiet, data=f"{Path(args.eval).resolve()} as they are")
        data["harm"] = {"key": key, "report": report}
        write_json(cache_path, data)

    if args.real and has_dc:
        key = real_key(args, digest)
        if not _same(data.get("real", {}).get("key"), key):
            data["real"] = {"key": key, "result": classify_real(bundle, args.real, device, args.max_images,
                                                                progress=not args.quiet)}
            write_json(cache_path, data)
        else:
            log.info("real-photo classes from the cache")
    else:
        data.pop("real", None)

    key = {"bundle": digest, "size": list(COST_SIZE)}
    if not _same(data.get("cost", {}).get("key"), key):
        data["cost"] = {"key": key, **costs(bundle, device)}
        write_json(cache_path, data)

    meta = {
        "bundle_label": label, "digest": digest, "degradations": bundle.degradations,
        "backbone": f"NAFNet width {bundle.backbone.width}, blocks enc {list(bundle.backbone.enc_blocks)} / middle "
                    f"{bundle.backbone.middle_blocks} / dec {list(bundle.backbone.dec_blocks)}",
        "granularity": bundle.granularity, "q": bundle.q, "eval_arg": args.eval, "real_arg": args.real,
        "targets_arg": args.targets, "max_images": args.max_images, "torch": torch.__version__,
        "clean_prior": bundle.metrics.get("clean_prior"),
        "adsrt": __version__, "date": today, "command": _command(),
    }
    write_csvs(out, data, digest[:12])
    text = markdown(data, meta)
    atomic_write_bytes(out / "default_report.md", text.encode())
    plot(out / "default_psnr_vs_params.png", data)
    if data.get("real"):
        plot_real(out / "default_real.png", data["real"]["result"], label)
    log.info("wrote %s/default_{quality,confusion,real}.csv, default_report.md, default_*.png", out)

    verdicts = ads_vs_um(data["eval"]["report"], data["eval"].get("confusion"))
    print(format_report(data["eval"]["report"]))
    beats = all(v["beats"] for v in verdicts)
    print(f"ADS > UM (PSNR) on every degradation: {'yes' if beats else 'no'}")
    for v in verdicts:
        verdict = "ok" if v["beats"] else "NOT: " + v["why_not"]
        print(f"  {v['degradation']:<12} ADS - UM {_signed(v['ads_minus_um_psnr'])} dB  "
              f"oracle - UM {_signed(v['oracle_minus_um_psnr'])} dB  {verdict}")
    return 0 if beats or not args.check else 1


def main(argv: Sequence[str] | None = None, *, default_out: str | Path = RESULTS) -> int:
    """The command line of ``benchmarks/bench_default.py`` (``argv``: its options; ``default_out``: the
    --out default, the script's ``benchmarks/results``). Exit status: 0, 1 (--check failed), 2 (an error)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="default", help="a bundle file or a bundled model name (default)")
    parser.add_argument("--eval", required=True, help="folder of clean evaluation photos (CBSD68)")
    parser.add_argument("--real", help="folder of real photos, in subfolders named after degradations (rain, ...)")
    parser.add_argument("--targets", help="training work folder holding targets/<degradation>/model.safetensors (IM)")
    parser.add_argument("--max-images", type=int, help="the first N photos by name (CBSD68, and per real folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=str(default_out), help=f"output folder (default {default_out})")
    parser.add_argument("--force", action="store_true", help="recompute everything, ignoring OUT/default_eval.json")
    parser.add_argument("--check", action="store_true", help="exit status 1 unless ADS beats UM on every degradation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error("--max-images must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except AdsrtError as exc:  # a bad bundle, folder or image: one line, not a traceback
        log.error("%s", exc)
        return 2
