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

**Mixtures.** A spec of two or more distinct degradations (``noise:15+rain:2``; its *components* are the
distinct names, in order) is a mixture row. It has no single true class, so its columns mean:

- ``ads``: the classifier's soft c, as on every row;
- ``ads_top1`` (mixture rows only): only the classifier's top-1 delta (c one-hot of the argmax over the
  k + 1 classes, from the same probabilities as ``ads``; a top-1 "clean" gives c = 0, the UM);
- ``ads_oracle``: the blended true mixture, c = 1/m on each of the m components that the bundle knows
  (``Restorer.restore(c=...)``); ``None`` when it knows none of them;
- ``im``: ``None`` (no single individual model);
- ``im_best`` (mixture rows only, with targets): the individual model of one component, the one with the
  highest mean PSNR on this row's images (chosen on the images it is scored on: the best a user picking
  one IM could do). The row records which (``im_best_name``) and every component IM's mean PSNR
  (``im_component_psnr``). Single rows leave ``im_best`` ``None``: it would repeat ``im``;
- ``dc_accuracy``: the share of images whose top-1 class is one of the components (a component the
  bundle does not know counts as the clean/unknown class, as on single rows); the mean probabilities as on
  every row.

The ``mean`` covers the single-degradation rows only, exactly as without mixtures; the report's
``mixtures_mean`` (``None`` without mixture rows) averages the mixture rows the same way. A spec that
repeats one name (``noise:10+noise:5``) is a single-degradation row of that name.

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

METHODS = ("input", "um", "ads", "ads_oracle", "im")  # the methods of every row
MIXTURE_METHODS = ("ads_top1", "im_best")  # scored on mixture rows only (see the module doc)
ALL_METHODS = ("input", "um", "ads", "ads_top1", "ads_oracle", "im", "im_best")  # the tables' column order
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
    label: str | None  # true degradation name, None when unknown or a mixture
    components: tuple[str, ...] = ()  # a mixture's distinct degradation names (two or more); () otherwise


@dataclass
class _Scores:
    n: int = 0
    psnr: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in ALL_METHODS})
    ssim: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in ALL_METHODS})
    dc_hits: list[bool] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    components: tuple[str, ...] = ()
    im_parts: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # mixtures: PSNRs, SSIMs per IM


# ---------------------------------------------------------------------------------------------- data


def _limit(paths: list[Path], max_images: int | None) -> list[Path]:
    if max_images is not None:
        if max_images < 1:
            raise AdsrtError(f"max_images must be >= 1, got {max_images}")
        paths = paths[:max_images]
    return paths


def _classes(plan: Sequence[Any]) -> tuple[str | None, tuple[str, ...]]:
    """(label, components) of a parsed spec: one distinct name is a label, two or more a mixture."""
    names = tuple(dict.fromkeys(spec.name for spec in plan))
    return (names[0], ()) if len(names) == 1 else (None, names)


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
            # A mixture has no single class: its components stand in for it (see the module doc).
            label, components = (CLEAN_SPEC, ()) if not plan else _classes(plan)
            degraded = clean.copy() if not plan else degrade(clean, plan, keyed_rng(seed, text, path.name))
            cases.append(EvalCase(text, path.name, degraded, clean, label, components))
    if not cases:
        raise DataError(f"{folder}: none of its {len(paths)} images could be read")
    return cases


def paired_cases(degraded_dir: str | Path, clean_dir: str | Path, label: str | None = None,
                 max_images: int | None = None) -> list[EvalCase]:
    """Ready-made pairs matched by file stem; ``label`` names their degradation when known."""
    # An unknown degradation name is an error, not an empty row.
    name, components = _classes(parse_specs(label)) if label is not None else (None, ())
    cases = []
    for degraded_path, clean_path in _limit(find_pairs(degraded_dir, clean_dir), max_images):
        degraded, clean = read_image(degraded_path), read_image(clean_path)
        if degraded.shape != clean.shape:
            raise DataError(f"{degraded_path.name}: size {degraded.shape[:2]} differs from its reference {clean.shape[:2]}")
        key = label or "pairs"
        cases.append(EvalCase(key, degraded_path.name, degraded, clean, name, components))
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
    methods: Sequence[str] = ALL_METHODS,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: str = "",
) -> dict[str, Any]:
    """Score ``methods`` on ``cases``; return the report (see :func:`format_report` and the module doc)."""
    if protocol not in PROTOCOLS:
        raise AdsrtError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise AdsrtError(f"unknown methods {sorted(unknown)}; known: {ALL_METHODS}")
    if not cases:
        raise DataError("nothing to evaluate")
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    targets = targets or {}
    k = len(bundle.degradations)
    classes = [*bundle.degradations, "clean"]

    def restorer(b: Bundle, mode: str, force: str | None = None) -> Restorer:
        # Images are restored whole (no tiling: eval photos are small, and tiles would blur the comparison).
        return Restorer(b, RestorerConfig(backend="torch", device=device, mode=mode, force=force, memory_limit_mb=0),
                        source="eval")

    um = restorer(bundle, "um") if "um" in methods else None
    has_dc = bundle.classifier is not None
    # One swap-mode restorer: c from the classifier, or forced per image for the oracle and top-1.
    ads = restorer(bundle, "swap", None if has_dc else "clean") if has_dc or "ads_oracle" in methods else None
    ims = {name: restorer(dataclasses.replace(bundle, um_state=model.state_dict(), classifier=None,
                                              classifier_state=None), "um")
           for name, model in targets.items()} if "im" in methods or "im_best" in methods else {}

    def score(image: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
        psnr, ssim = score_pair(image, clean, protocol=protocol)
        return min(psnr, 100.0), ssim  # an output identical to its reference (the clean row) is inf

    from tqdm import tqdm

    scores: dict[str, _Scores] = {}
    with torch.inference_mode():
        for case in tqdm(cases, desc="eval", unit="img", disable=not progress):
            s = scores.setdefault(case.key, _Scores(components=case.components))
            s.n += 1
            mixture = bool(case.components)
            known = [name for name in case.components if name in bundle.degradations]
            label_index = bundle.degradations.index(case.label) if case.label in bundle.degradations else None
            outputs: dict[str, np.ndarray | None] = dict.fromkeys(ALL_METHODS)
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
                probs = np.array([p[name] for name in classes], dtype=np.float64)
                s.probabilities.append(probs)
                top = int(probs.argmax())
                if case.label is not None:
                    # Truth for a degradation the bundle does not know is the clean/unknown class.
                    s.dc_hits.append(top == (k if label_index is None else label_index))
                elif mixture:  # right when the top-1 class is one of the components (unknown ones: clean)
                    truth = {bundle.degradations.index(name) for name in known}
                    s.dc_hits.append(top in truth or (top == k and len(known) < len(case.components)))
                if mixture and "ads_top1" in methods:
                    outputs["ads_top1"] = ads.restore(case.degraded, force=classes[top])  # "clean": c = 0
            if "ads_oracle" in methods:
                if label_index is not None:
                    outputs["ads_oracle"] = ads.restore(case.degraded, force=case.label)
                elif mixture and known:
                    outputs["ads_oracle"] = ads.restore(case.degraded, c=dict.fromkeys(known, 1.0 / len(known)))
            if case.label in ims and "im" in methods:
                outputs["im"] = ims[case.label].restore(case.degraded)
            if mixture and "im_best" in methods:  # which component's IM is best is known after the row
                for name in case.components:
                    if name in ims:
                        psnrs, ssims = s.im_parts.setdefault(name, ([], []))
                        psnr, ssim = score(ims[name].restore(case.degraded), case.clean)
                        psnrs.append(psnr)
                        ssims.append(ssim)
            for method, image in outputs.items():
                if image is not None:
                    psnr, ssim = score(image, case.clean)
                    s.psnr[method].append(psnr)
                    s.ssim[method].append(ssim)

    results = {}
    for key, s in scores.items():
        im_psnr = {name: float(np.mean(v[0])) for name, v in s.im_parts.items()}
        best = max(im_psnr, key=im_psnr.get) if im_psnr else None  # a tie goes to the first component
        if best is not None:
            s.psnr["im_best"], s.ssim["im_best"] = s.im_parts[best]
        results[key] = {
            "n": s.n,
            "psnr": {m: _mean(s.psnr[m]) for m in ALL_METHODS if m in methods},
            "ssim": {m: _mean(s.ssim[m]) for m in ALL_METHODS if m in methods},
            "dc_accuracy": _mean([float(h) for h in s.dc_hits]),
            "dc_mean_probability": (dict(zip(classes, np.mean(s.probabilities, 0).round(4).tolist(), strict=True))
                                    if s.probabilities else None),
            "components": list(s.components) or None,  # a mixture's degradations; None on single rows
            "im_best_name": best,
            "im_component_psnr": im_psnr or None,
        }

    # The clean row scores a restorer against its own input: it is not averaged with restoration rows, nor
    # are mixtures (their own mean, below), so the mean stays comparable with and without them.
    singles = [r for key, r in results.items() if key != CLEAN_SPEC and not r["components"]]
    mixtures = [r for r in results.values() if r["components"]]
    mean_rows = singles or ([] if mixtures else list(results.values()))

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        def mean_over_rows(metric: str, method: str) -> float | None:
            # Averaging over a subset of rows would compare unlike things, so a gap anywhere gives None.
            values = [r[metric][method] for r in rows]
            return None if not values or any(v is None for v in values) else float(np.mean(values))

        dc = [r["dc_accuracy"] for r in rows]
        return {
            "psnr": {m: mean_over_rows("psnr", m) for m in ALL_METHODS if m in methods},
            "ssim": {m: mean_over_rows("ssim", m) for m in ALL_METHODS if m in methods},
            "dc_accuracy": None if not dc or any(v is None for v in dc) else float(np.mean(dc)),
        }

    return {"protocol": protocol, "data": data, "results": results, "mean": summary(mean_rows),
            "mixtures_mean": summary(mixtures) if mixtures else None}


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
    """Two aligned tables (PSNR, SSIM) with one row per degradation and the mean; with mixture rows, their
    columns (``ads_top1``, ``im_best``, the best IM's name) and a ``mixtures mean`` row (see the module doc)."""
    results = report["results"]
    mixtures = {key: r for key, r in results.items() if r.get("components")}
    singles = [key for key in results if key != CLEAN_SPEC and key not in mixtures]
    rows = dict(results)
    if singles or not mixtures:  # the mean of single-degradation rows (or of the clean row alone)
        rows["mean"] = {**report["mean"], "n": sum(r["n"] for key, r in results.items() if key not in mixtures)}
    if mixtures and report.get("mixtures_mean"):
        rows["mixtures mean"] = {**report["mixtures_mean"], "n": sum(r["n"] for r in mixtures.values())}
    evaluated = next(iter(results.values()))["psnr"]
    methods = [m for m in ALL_METHODS if m in evaluated and (mixtures or m not in MIXTURE_METHODS)]
    best_names = any(r.get("im_best_name") for r in mixtures.values())
    width = max(11, *(len(k) for k in rows)) + 1
    lines = [f"protocol {report['protocol']}; data: {report['data']}"]
    for metric, digits in (("psnr", 2), ("ssim", 4)):
        head = f"{metric.upper():<{width}}{'n':>5}" + "".join(f"{m:>11}" for m in methods)
        if metric == "psnr":
            head += f"{'DC acc':>9}" + (f"  {'best IM'}" if best_names else "")
        lines.append(head)
        for key, r in rows.items():
            line = f"{key:<{width}}{r['n']:>5}" + "".join(f"{_cell(r[metric].get(m), digits):>11}" for m in methods)
            if metric == "psnr":
                line += f"{_cell(r['dc_accuracy'], 3):>9}" + (f"  {r['im_best_name']}" if r.get("im_best_name") else "")
            lines.append(line.rstrip())
    if mixtures:
        lines += ["mixture rows (a+b): ads_top1 = the classifier's top-1 delta alone; ads_oracle = c = 1/m on each",
                  "of the m components the bundle knows; im_best = the component IM best on these images; DC acc =",
                  "share whose top-1 class is a component; 'mean' covers single degradations only."]
    return "\n".join(lines)
