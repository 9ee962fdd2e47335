"""``adsrt eval``: how much a bundle restores, per degradation, against its own baselines.

For every degraded image it scores (PSNR/SSIM against the clean reference):

- ``input``: the degraded image itself;
- ``um``: the unified model alone (c = 0);
- ``ads``: the UM with the deltas blended by the classifier's probabilities (c = p[:k], the clean
  class dropped);
- ``ads_oracle``: the same with the true one-hot c (the ceiling of a perfect classifier);
- ``im``: the individual model fine-tuned on that degradation (``--targets WORKDIR``), the upper bound.

Every method runs through the runtime's :class:`adsrt.runtime.restorer.Restorer` on the torch backend:
the same decode (the bundle's input contract), classifier, temperature, fused update, tiling and encode
as ``adsrt restore``, so what is measured here is what a user gets. ``ads_oracle`` is the same restorer
with ``force=`` the true degradation; ``um`` and ``im`` are restorers in ``um`` mode (an individual model
is the bundle with its UM weights replaced by the target's).

plus the classifier's accuracy (argmax == true class) and its mean probabilities. A score that cannot
exist (no classifier, a degradation the bundle has no delta for, no target) is ``None``, never a guess.

The spec ``clean`` leaves the photos as they are: the "do no harm" row, where the restorer should change
little (PSNR of its output against the photo itself, capped at 100 dB; the input column stays empty) and
the classifier should say "clean" (its accuracy is the share of photos it calls clean). The row is left
out of the mean over degradations.

Two sources of data: clean photos degraded on the fly (one generator per degradation and file, keyed
by the seed, so a run is reproducible and independent of folder order), or ready-made degraded/clean
pairs matched by file name. Images are restored whole, one at a time (the eval sets are small photos).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adsrt.arch import NAFNet, build_backbone
from adsrt.bundle import Bundle
from adsrt.errors import AdsrtError, DataError
from adsrt.imageio import list_images, read_image, try_read_image
from adsrt.metrics import PROTOCOLS, score_pair
from adsrt.runtime.restorer import Restorer, RestorerConfig
from adsrt.train.checkpoint import check_same_architecture, load_backbone_weights
from adsrt.train.data import find_pairs
from adsrt.train.degradations import degrade, keyed_rng, parse_specs

log = logging.getLogger(__name__)

METHODS = ("input", "um", "ads", "ads_oracle", "im")
CLEAN_SPEC = "clean"  # the photos as they are (see the module doc)


@dataclass(kw_only=True)
class EvalConfig:
    """What ``adsrt eval`` measures. Give either ``clean`` (+ ``degradations``) or ``pairs`` (+ ``label``)."""

    bundle: str
    clean: str | None = None  # folder of clean photos, degraded on the fly
    degradations: tuple[str, ...] = ("noise:25", "blur", "rain")  # name[:level]; no level = drawn per image
    seed: int = 0
    pairs: tuple[str, str] | None = None  # (degraded folder, clean folder)
    label: str | None = None  # the degradation of the pairs, when known
    protocol: str = "adsrt"
    targets: str | None = None  # training work folder holding targets/<degradation>/model.safetensors
    max_images: int | None = None  # first N images by name (quick looks)
    device: str | None = None
    progress: bool = True


@dataclass
class EvalCase:
    """One degraded image with its clean reference."""

    key: str  # the row it is reported under, e.g. "noise:25"
    name: str
    degraded: np.ndarray
    clean: np.ndarray
    label: str | None  # true degradation name, None when unknown


@dataclass
class _Scores:
    psnr: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    ssim: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    dc_hits: list[bool] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data


def _limit(paths: list[Path], max_images: int | None) -> list[Path]:
    if max_images is not None:
        if max_images < 1:
            raise AdsrtError(f"max_images must be >= 1, got {max_images}")
        paths = paths[:max_images]
    return paths


def synthetic_cases(clean_dir: str | Path, degradations: Sequence[str], seed: int = 0,
                    max_images: int | None = None) -> list[EvalCase]:
    """Degrade every photo of ``clean_dir`` with each spec (``noise:25``, ``blur``, ``noise:15+blur:2``)."""
    folder = Path(clean_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    paths = _limit(list_images(folder), max_images)
    if not paths:
        raise DataError(f"{folder}: no images in this folder")
    if not degradations:
        raise AdsrtError("no degradations given")
    plans = {text: ([] if text == CLEAN_SPEC else parse_specs(text)) for text in degradations}  # validates first
    if len(plans) != len(degradations):
        raise AdsrtError(f"degradations repeat: {list(degradations)}")
    cases = []
    for path in paths:
        clean = try_read_image(path)  # an unreadable photo is skipped (warned) and counted by evaluate()
        if clean is None:
            continue
        for text, plan in plans.items():
            # A composition has no single class, so it has no oracle or classifier truth.
            label = CLEAN_SPEC if not plan else plan[0].name if len(plan) == 1 else None
            degraded = clean.copy() if not plan else degrade(clean, plan, keyed_rng(seed, text, path.name))
            cases.append(EvalCase(text, path.name, degraded, clean, label))
    if not cases:
        raise DataError(f"{folder}: none of its {len(paths)} images could be read")
    return cases


def paired_cases(degraded_dir: str | Path, clean_dir: str | Path, label: str | None = None,
                 max_images: int | None = None) -> list[EvalCase]:
    """Ready-made pairs matched by file stem; ``label`` names their degradation when known."""
    if label is not None:
        parse_specs(label)  # an unknown degradation name is an error, not an empty row
    cases = []
    for degraded_path, clean_path in _limit(find_pairs(degraded_dir, clean_dir), max_images):
        degraded, clean = read_image(degraded_path), read_image(clean_path)
        if degraded.shape != clean.shape:
            raise DataError(f"{degraded_path.name}: size {degraded.shape[:2]} differs from its reference {clean.shape[:2]}")
        key = label or "pairs"
        cases.append(EvalCase(key, degraded_path.name, degraded, clean, label.split(":")[0] if label else None))
    return cases


def load_targets(work: str | Path, bundle: Bundle) -> dict[str, NAFNet]:
    """The individual models of a training work folder, one per bundle degradation that has one."""
    folder = Path(work) / "targets"
    if not folder.is_dir():
        raise AdsrtError(f"{work}: no targets/ folder (is this a training work folder?)")
    models = {}
    for name in bundle.degradations:
        path = folder / name / "model.safetensors"
        if not path.is_file():
            log.warning("no individual model for %s (%s missing)", name, path)
            continue
        config, state, _ = load_backbone_weights(path)
        check_same_architecture((bundle.backbone, bundle.um_state), (config, state), f"target {name}")
        model = build_backbone(config)
        model.load_state_dict(state, strict=True)
        models[name] = model.eval()
    return models


# ---------------------------------------------------------------------------------------- evaluation


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate_cases(
    bundle: Bundle,
    cases: Sequence[EvalCase],
    *,
    protocol: str = "adsrt",
    targets: dict[str, NAFNet] | None = None,
    methods: Sequence[str] = METHODS,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: str = "",
) -> dict[str, Any]:
    """Score ``methods`` on ``cases``; return the report (see :func:`format_report` and the module doc)."""
    if protocol not in PROTOCOLS:
        raise AdsrtError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise AdsrtError(f"unknown methods {sorted(unknown)}; known: {METHODS}")
    if not cases:
        raise DataError("nothing to evaluate")
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    targets = targets or {}
    k = len(bundle.degradations)

    def restorer(b: Bundle, mode: str, force: str | None = None) -> Restorer:
        # Images are restored whole (no tiling: eval photos are small, and tiles would blur the comparison).
        return Restorer(b, RestorerConfig(backend="torch", device=device, mode=mode, force=force, memory_limit_mb=0),
                        source="eval")

    um = restorer(bundle, "um") if "um" in methods else None
    has_dc = bundle.classifier is not None
    # One swap-mode restorer: c from the classifier, or forced per image for the oracle.
    ads = restorer(bundle, "swap", None if has_dc else "clean") if has_dc or "ads_oracle" in methods else None
    ims = {name: restorer(dataclasses.replace(bundle, um_state=model.state_dict(), classifier=None,
                                              classifier_state=None), "um")
           for name, model in targets.items()} if "im" in methods else {}

    from tqdm import tqdm

    scores: dict[str, _Scores] = {}
    with torch.inference_mode():
        for case in tqdm(cases, desc="eval", unit="img", disable=not progress):
            s = scores.setdefault(case.key, _Scores())
            label_index = bundle.degradations.index(case.label) if case.label in bundle.degradations else None
            outputs: dict[str, np.ndarray | None] = dict.fromkeys(METHODS)
            if "input" in methods and case.label != CLEAN_SPEC:  # a clean input scores infinite PSNR
                outputs["input"] = case.degraded
            if um is not None:
                outputs["um"] = um.restore(case.degraded)
            if has_dc:
                if "ads" in methods:
                    outputs["ads"] = ads.restore(case.degraded)
                    p = ads.last.probabilities
                else:
                    p = ads.classify(case.degraded)
                probs = np.array([p[name] for name in [*bundle.degradations, "clean"]], dtype=np.float64)
                s.probabilities.append(probs)
                if case.label is not None:
                    # Truth for a degradation the bundle does not know is the clean/unknown class.
                    s.dc_hits.append(int(probs.argmax()) == (k if label_index is None else label_index))
            if "ads_oracle" in methods and label_index is not None:
                outputs["ads_oracle"] = ads.restore(case.degraded, force=case.label)
            if case.label in ims:
                outputs["im"] = ims[case.label].restore(case.degraded)
            for method, image in outputs.items():
                if image is not None:
                    psnr, ssim = score_pair(image, case.clean, protocol=protocol)
                    psnr = min(psnr, 100.0)  # an output identical to its reference (the clean row) is inf
                    s.psnr[method].append(psnr)
                    s.ssim[method].append(ssim)

    classes = [*bundle.degradations, "clean"]
    results = {}
    for key, s in scores.items():
        n = len(s.psnr["input"]) or max(len(v) for v in s.psnr.values())
        results[key] = {
            "n": n,
            "psnr": {m: _mean(s.psnr[m]) for m in METHODS if m in methods},
            "ssim": {m: _mean(s.ssim[m]) for m in METHODS if m in methods},
            "dc_accuracy": _mean([float(h) for h in s.dc_hits]),
            "dc_mean_probability": (dict(zip(classes, np.mean(s.probabilities, 0).round(4).tolist(), strict=True))
                                    if s.probabilities else None),
        }

    # The clean row scores a restorer against its own input: it is not averaged with restoration rows.
    degraded_rows = [r for key, r in results.items() if key != CLEAN_SPEC] or list(results.values())

    def mean_over_rows(metric: str, method: str) -> float | None:
        # Averaging over a subset of rows would compare unlike things, so a gap anywhere gives None.
        values = [r[metric][method] for r in degraded_rows]
        return None if any(v is None for v in values) else float(np.mean(values))

    dc = [r["dc_accuracy"] for r in degraded_rows]
    mean = {
        "psnr": {m: mean_over_rows("psnr", m) for m in METHODS if m in methods},
        "ssim": {m: mean_over_rows("ssim", m) for m in METHODS if m in methods},
        "dc_accuracy": None if any(v is None for v in dc) else float(np.mean(dc)),
    }
    return {"protocol": protocol, "data": data, "results": results, "mean": mean}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Load the bundle and the data that ``cfg`` names and evaluate; see :func:`evaluate_cases`."""
    if (cfg.clean is None) == (cfg.pairs is None):
        raise AdsrtError("give either clean photos (--clean DIR) or degraded/clean pairs (--pairs DEGRADED CLEAN)")
    if cfg.protocol not in PROTOCOLS:
        raise AdsrtError(f"protocol must be one of {PROTOCOLS}, got {cfg.protocol!r}")
    from adsrt.runtime.restorer import resolve_bundle  # a file or a bundled model name ("default")

    bundle, _ = resolve_bundle(cfg.bundle)
    if cfg.clean is not None:
        cases = synthetic_cases(cfg.clean, cfg.degradations, cfg.seed, cfg.max_images)
        data = f"{Path(cfg.clean).resolve()} degraded with {','.join(cfg.degradations)}, seed {cfg.seed}"
        skipped = len(_limit(list_images(cfg.clean), cfg.max_images)) - len({c.name for c in cases})
        if skipped:
            data += f" ({skipped} unreadable photos skipped)"
    else:
        degraded_dir, clean_dir = cfg.pairs
        cases = paired_cases(degraded_dir, clean_dir, cfg.label, cfg.max_images)
        data = f"pairs {Path(degraded_dir).resolve()} | {Path(clean_dir).resolve()}, label {cfg.label}"
    targets = load_targets(cfg.targets, bundle) if cfg.targets else None
    report = evaluate_cases(bundle, cases, protocol=cfg.protocol, targets=targets, device=cfg.device,
                            progress=cfg.progress, data=data)
    report["bundle"] = str(cfg.bundle)
    return report


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """Two aligned tables (PSNR, SSIM) with one row per degradation and the mean."""
    rows = {**report["results"], "mean": {**report["mean"], "n": sum(r["n"] for r in report["results"].values())}}
    methods = [m for m in METHODS if m in next(iter(rows.values()))["psnr"]]
    width = max(11, *(len(k) for k in rows)) + 1
    lines = [f"protocol {report['protocol']}; data: {report['data']}"]
    for metric, digits in (("psnr", 2), ("ssim", 4)):
        head = f"{metric.upper():<{width}}{'n':>5}" + "".join(f"{m:>11}" for m in methods)
        lines.append(head + (f"{'DC acc':>9}" if metric == "psnr" else ""))
        for key, r in rows.items():
            line = f"{key:<{width}}{r['n']:>5}" + "".join(f"{_cell(r[metric][m], digits):>11}" for m in methods)
            lines.append(line + (f"{_cell(r['dc_accuracy'], 3):>9}" if metric == "psnr" else ""))
    return "\n".join(lines)

