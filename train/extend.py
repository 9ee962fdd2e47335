"""``adsrt train add``: extend a trained bundle by one degradation without retraining the UM.

The UM stays as it is (its tensors are copied byte for byte), so the old degradations' deltas, made against
it, stay valid and are copied unchanged too. For the new degradation d the method's stages 2-4 run as in
``adsrt train all`` (the same stage functions): a target fine-tuned from the bundle's UM on d alone, FAIG-SD
(or the bundle's selector) at the bundle's granularity and q, and the sparse delta. Then the classifier and
its temperature are made anew, and the new bundle is the old one plus d.

The classifier: the whole small classifier is retrained on all k + 1 degradations and clean, warm-started
from the bundle's. It is tiny (1-2% of the UM's parameters, seconds to minutes of training), and retraining
only its head would leave it with the features the old classes needed: a new degradation usually needs its
own (rain streaks are not noise grain), which only the convolution stages can learn. The warm start copies
every stage weight and the head rows of the old classes and of clean into their new positions (clean stays
last; d's row goes before it, initialised as a fresh head's, with ``seed``), so the old classes start where
they were and fewer steps would suffice; the preset's classifier budget (``dc_steps``) is used all the same.
Its shape (width, depth, convs, window, input size, grid, context width) is the bundle's; classes train on
the spec strings of the original run (``provenance["degradations"]``) where the bundle records them, else on
the names. A classifier with a context trunk (:mod:`adsrt.train.context`) has its windows retrained so
(warm-started without the context weights), then a context trunk of the same width trained afresh on them.

Refused with one line, before anything is written: a d already in the bundle, an unknown degradation, a
bundle without a classifier (or whose degradations adsrt cannot synthesise, so it cannot retrain one), a
bundle :func:`adsrt.bundle.load_bundle` refuses (format version, backbone), an output that is the input
bundle, and a work folder that holds the stages of another run (keyed on the source bundle's
:meth:`adsrt.bundle.Bundle.digest`, the degradation, the preset and the seed).

Work folder layout (stages are skipped when their file exists and resume from their checkpoints, like
``adsrt train all``; ``adsrt train status WORK`` reads it):

    WORK/run.json                                   the run's config and its key (source digest, d, preset, seed)
    WORK/um/model.safetensors                       the bundle's UM as a backbone weights file (no training)
    WORK/targets/<d>/model.safetensors              stage 2: d's target, fine-tuned from that UM
    WORK/select/<selector>_<gran>_q<q>[_params]/<d>.safetensors   stage 3
    WORK/deltas/<selector>_<gran>_q<q>[_params]/<d>.safetensors   stage 4
    WORK/classifier/init.safetensors                the warm start (the bundle's classifier, one class wider)
    WORK/classifier/model.safetensors, report.json  stage 5: the classifier of all k + 2 classes (windows)
    WORK/context/model.safetensors, report.json     stage 5b: its context trunk, if the bundle's has one
    WORK/timings.json                               seconds of each stage (kept across resumed runs)
    WORK/bundle.safetensors                         the new bundle before calibration; the output is its
                                                    calibrated copy (run_calibrate), written last
    WORK/bundle_metrics.json                        the new bundle's metrics and overhead per degradation

The new bundle's provenance is the source's with ``degradations`` (spec strings) extended, plus
``extended_from`` (source digest, path and degradations) and ``added`` (d's spec, preset, steps, seconds per
stage, parameters added); an earlier extension's pair moves to ``earlier_extensions``. Provenance and
metrics are free-form JSON in the header, so no bundle format change is needed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adsrt.arch import CONTEXT_PREFIXES, ClassifierConfig, build_classifier
from adsrt.bundle import Bundle, load_bundle, save_bundle, summarize
from adsrt.errors import AdsrtError, ConfigError, check_choice
from adsrt.fileio import resolved, write_json
from adsrt.train import distributed
from adsrt.train.calibrate import CalibrateConfig, run_calibrate
from adsrt.train.checkpoint import save_weights
from adsrt.train.classifier import ClassifierTrainConfig, load_classifier, train_classifier
from adsrt.train.degradations import DegradationSpec
from adsrt.train.pipeline import (
    PRESETS,
    RunOptions,
    context_stage,
    deltas_stage,
    load_stage_deltas,
    restorer_stage_kwargs,
    select_stage,
    stage_tag,
)
from adsrt.train.select import BUDGETS, SELECTORS
from adsrt.train.status import RUN_FILE
from adsrt.train.trainer import class_specs
from adsrt.train.um import TargetConfig, train_target
from adsrt.version import __version__

log = logging.getLogger(__name__)

__all__ = ["ExtendConfig", "extend_bundle", "widen_classifier_state"]

RUN_KIND = "add"
HEAD = ("head.weight", "head.bias")  # the classifier's per-class parameters (rows in class order)


@dataclass(kw_only=True)
class ExtendConfig(RunOptions):
    bundle: str  # the source bundle file (never modified)
    degradation: str  # the new class: name[/style][:level], as in `train all --degradations`
    data: str  # clean training photos (target, selection, deltas, classifier, calibration)
    work: str  # work folder (see the module doc)
    out: str  # the new bundle file; not the source bundle
    preset: str = "small"  # stage sizes and budgets (adsrt.train.pipeline.PRESETS); the backbone is the bundle's


@dataclass(frozen=True)
class _Plan:
    """What the run does, worked out (and checked) before anything is written."""

    source: Bundle
    source_path: Path  # resolved
    digest: str
    spec: DegradationSpec
    old_specs: tuple[str, ...]  # class specs of the bundle's degradations, in class order
    selector: str
    budget: str
    tag: str
    window: int  # the classifier's training crop = its window
    context_width: int  # the bundle classifier's context trunk (0: none)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    ra, rb = resolved(a), resolved(b)
    return ra == rb or (ra.exists() and rb.exists() and os.path.samefile(ra, rb))


def _old_specs(source: Bundle, label: str) -> tuple[str, ...]:
    """The class specs of the bundle's degradations: its run's spec strings where recorded, else the names."""
    recorded = source.provenance.get("degradations")
    if isinstance(recorded, list) and all(isinstance(s, str) for s in recorded):
        try:
            if [s.name for s in class_specs(recorded)] == source.degradations:
                return tuple(recorded)
        except AdsrtError:
            pass
        log.warning("%s: provenance degradations %s do not match the bundle's %s; training on the names",
                    label, recorded, source.degradations)
    try:
        class_specs(source.degradations)
    except AdsrtError as exc:
        raise ConfigError(f"{label}: the classifier is retrained on every class, but {exc}") from exc
    return tuple(source.degradations)


def _provenance_choice(source: Bundle, key: str, choices: tuple[str, ...], default: str, label: str) -> str:
    value = source.provenance.get(key, default)
    if value not in choices:
        raise ConfigError(f"{label}: provenance {key} {value!r} is not one of {', '.join(choices)}")
    return value


def _plan(cfg: ExtendConfig) -> _Plan:
    """Every refusal of the module doc; reads the bundle and the work folder's run.json, writes nothing."""
    check_choice("preset", cfg.preset, PRESETS, ConfigError)
    if cfg.refine_steps is not None and cfg.refine_steps < 0:
        raise ConfigError(f"refine_steps must be >= 0, got {cfg.refine_steps}")
    if _same_file(cfg.out, cfg.bundle):
        raise ConfigError(f"{cfg.out}: the output would replace the source bundle; write the new bundle to another file")
    if Path(cfg.out).is_dir():
        raise ConfigError(f"{cfg.out}: is a folder; give the new bundle's file name")
    specs = class_specs([cfg.degradation])  # DegradationError for unknown names, bad levels or styles
    spec = specs[0]
    source = load_bundle(cfg.bundle)
    label = str(cfg.bundle)
    if spec.name in source.degradations:
        raise ConfigError(f"{label} already has the degradation {spec.name!r} (it has {', '.join(source.degradations)})")
    if source.classifier is None:
        raise ConfigError(f"{label} has no degradation classifier to extend; train the bundle with `adsrt train all`")
    old_specs = _old_specs(source, label)
    selector = _provenance_choice(source, "selector", SELECTORS, "faig", label)
    budget = _provenance_choice(source, "budget", BUDGETS, "params", label)
    window = source.classifier.window
    if window == 0:
        window = PRESETS[cfg.preset].dc_crop_size
        log.warning("%s: the classifier sees whole frames (window 0); the new one learns on %d px crops and views "
                    "frames through windows of that size", label, window)
    digest = source.digest()
    _check_work(Path(cfg.work), digest, str(spec), cfg)
    return _Plan(source=source, source_path=resolved(cfg.bundle), digest=digest, spec=spec, old_specs=old_specs, selector=selector, budget=budget,
                 tag=stage_tag(selector, source.granularity, source.q, budget), window=window,
                 context_width=source.classifier.context_width)


def _work_key(digest: str, spec: str, cfg: ExtendConfig) -> dict[str, Any]:
    """What the stages in a work folder depend on: a folder with another key is refused (a resumed run with
    other data or refinement steps would otherwise reuse stale masks and deltas)."""
    refine = PRESETS[cfg.preset].refine_steps if cfg.refine_steps is None else cfg.refine_steps
    return {"source_digest": digest, "degradation": spec, "preset": cfg.preset, "seed": cfg.seed,
            "refine_steps": refine, "data": str(resolved(cfg.data))}


def _check_work(work: Path, digest: str, spec: str, cfg: ExtendConfig) -> None:
    run_file = work / RUN_FILE
    if not run_file.is_file():
        if work.is_dir() and any(work.iterdir()):
            raise ConfigError(f"{work}: not empty and not the work folder of `adsrt train add`; use another --work")
        return
    try:
        run = json.loads(run_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_file}: unreadable run file ({exc}); use another --work") from exc
    if not isinstance(run, dict) or run.get("kind") != RUN_KIND:
        raise ConfigError(f"{work}: the work folder of an `adsrt train all` run, not of `train add`; use another --work")
    key, theirs = _work_key(digest, spec, cfg), run.get("key")
    if theirs != key:
        theirs = theirs if isinstance(theirs, dict) else {}
        differ = ", ".join(f"{k} {theirs.get(k)!r} there, {key[k]!r} now" for k in key if theirs.get(k) != key[k])
        raise ConfigError(f"{work}: holds the stages of another `train add` run ({differ}); use another --work "
                          "or delete it")


def widen_classifier_state(state: dict[str, torch.Tensor], old_classes: list[str], config: ClassifierConfig,
                           new_classes: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights of a classifier of ``config`` (``new_classes``) warm-started from ``state`` (``old_classes``).

    Every stage weight is copied; each head row of a class in both lists moves to its new position; a new
    class's row is that of a fresh head (``torch.manual_seed(seed)``, drawn without touching the global RNG).
    """
    if config.num_classes != len(new_classes) or len(set(new_classes)) != len(new_classes):
        raise AdsrtError(f"{len(new_classes)} distinct classes needed for a classifier of {config.num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_classifier(config).state_dict()
    if fresh.keys() != state.keys():
        raise AdsrtError(f"classifier weights do not match {config.to_dict()}: e.g. {sorted(fresh.keys() ^ state.keys())[:3]}")
    out = {}
    for name, ref in fresh.items():
        old = state[name]
        if name in HEAD:
            if old.shape[0] != len(old_classes) or old.shape[1:] != ref.shape[1:]:
                raise AdsrtError(f"classifier {name} has shape {tuple(old.shape)}, not one row per class of {old_classes}")
            rows = [old[old_classes.index(c)] if c in old_classes else ref[i] for i, c in enumerate(new_classes)]
            out[name] = torch.stack(rows).to(ref.dtype).clone()
        else:
            if old.shape != ref.shape:
                raise AdsrtError(f"classifier {name} has shape {tuple(old.shape)}, {config.to_dict()} needs {tuple(ref.shape)}")
            out[name] = old.to(ref.dtype).clone()
    return out


class _Timings:
    """Seconds of each stage in WORK/timings.json, kept for stages a resumed run skips."""

    def __init__(self, path: Path, write: bool = True) -> None:
        self.path, self.write = path, write  # write: rank 0 only
        try:
            self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            self.seconds = {}

    def run(self, stage: str, fn, *args, **kwargs) -> None:
        """``fn(...)`` (a stage: returns False when it skipped), timed into the file when it ran."""
        start = time.monotonic()
        if fn(*args, **kwargs) is not False:
            self.seconds[stage] = round(time.monotonic() - start, 2)
            if self.write:
                write_json(self.path, self.seconds)
        else:
            log.info("%s: output exists, skipping", stage)


def extend_bundle(cfg: ExtendConfig) -> dict[str, Any]:
    """Add ``cfg.degradation`` to ``cfg.bundle``, writing ``cfg.out`` (see the module doc).

    Returns the new bundle's metrics (rank 0; ``{}`` on other ranks under torchrun), with ``added``: the
    stage seconds and the parameters the new degradation costs.
    """
    plan = _plan(cfg)
    source, spec, p = plan.source, plan.spec, PRESETS[cfg.preset]
    env = distributed.setup(cfg.device)
    work = Path(cfg.work)
    um_path = work / "um" / "model.safetensors"
    timings = _Timings(work / "timings.json", write=env.is_main)
    if env.is_main:
        work.mkdir(parents=True, exist_ok=True)
        # `adsrt train status WORK` reads the plan from here (um_steps 0: the UM is the bundle's, not trained).
        write_json(work / RUN_FILE, {
            "kind": RUN_KIND, "key": _work_key(plan.digest, str(spec), cfg), "config": dataclasses.asdict(cfg),
            "out": str(resolved(cfg.out)), "tag": plan.tag,
            # The classifier keeps the bundle's shape: a context stage iff the bundle's classifier has one.
            "preset_values": {**dataclasses.asdict(p), "um_steps": 0, "dc_context_width": plan.context_width},
            "degradation_names": [spec.name], "source": {"path": str(resolved(cfg.bundle)), "digest": plan.digest}})
        timings.run("um", _write_um, source, plan, um_path)
    distributed.barrier()

    timings.run("target", _target_stage, cfg, spec, work, um_path)  # every rank (DDP under torchrun)

    metrics: dict[str, Any] = {}
    if env.is_main:
        refine = p.refine_steps if cfg.refine_steps is None else cfg.refine_steps
        where = dict(work=work, tag=plan.tag, um_path=um_path, data=cfg.data, seed=cfg.seed, threads=cfg.threads,
                     device=cfg.device)
        timings.run("select", select_stage, p, spec, selector=plan.selector, q=source.q, granularity=source.granularity,
                    budget=plan.budget, **where)
        timings.run("deltas", deltas_stage, p, spec, refine_steps=refine, **where)
        timings.run("classifier", _classifier_stage, cfg, plan, work)
        if plan.context_width:
            timings.run("context", context_stage, p, work, plan.context_width, data=cfg.data, seed=cfg.seed,
                        threads=cfg.threads, device=cfg.device, progress=cfg.progress)
        metrics = _write_bundle(cfg, plan, work, refine, timings.seconds)
        start = time.monotonic()
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        temperature, table = run_calibrate(CalibrateConfig(bundle=str(work / "bundle.safetensors"), data=cfg.data,
                                                           out=cfg.out, images=p.calib_images,
                                                           prior_frames=p.calib_prior_frames,
                                                           dim_weather=p.dc_dim_weather, seed=cfg.seed,
                                                           progress=cfg.progress))
        metrics["added"]["seconds"]["calibrate"] = round(time.monotonic() - start, 2)
        metrics = {**metrics, "temperature_calibration": {"psnr": table, "temperature": temperature}}
        log.info("added %s to %s -> %s (stage seconds %s)", spec.name, cfg.bundle, cfg.out, metrics["added"]["seconds"])
    distributed.barrier()
    return metrics


def _write_um(source: Bundle, plan: _Plan, um_path: Path) -> bool:
    """The bundle's UM as the backbone weights file the target stage starts from (train_um's format)."""
    if um_path.is_file():
        return False
    header = {"kind": "um", "backbone": source.backbone.to_dict(), "backbone_name": None,
              "degradations": list(plan.old_specs), "init": None,
              "from_bundle": {"digest": plan.digest, "path": str(plan.source_path)}}
    um_val = source.metrics.get("um_val_psnr")
    if isinstance(um_val, (int, float)):
        header["val"] = {"psnr": um_val}
    save_weights(um_path, source.um_state, header)
    return True


def _target_stage(cfg: ExtendConfig, spec: DegradationSpec, work: Path, um_path: Path) -> bool:
    target = work / "targets" / spec.name / "model.safetensors"
    if target.is_file():
        return False
    p = PRESETS[cfg.preset]
    train_target(TargetConfig(out=str(target.parent), um=str(um_path), degradation=str(spec), steps=p.target_steps,
                              lr=p.target_lr, **restorer_stage_kwargs(p, cfg)))
    return True


def _classifier_stage(cfg: ExtendConfig, plan: _Plan, work: Path) -> bool:
    folder = work / "classifier"
    if (folder / "model.safetensors").is_file():
        return False
    source, p = plan.source, PRESETS[cfg.preset]
    old_classes = [*source.degradations, "clean"]
    new_classes = [*source.degradations, plan.spec.name, "clean"]
    init = folder / "init.safetensors"
    if not init.is_file():
        # The windows are retrained warm-started; a context trunk is trained afresh on them afterwards.
        config = dataclasses.replace(source.classifier, num_classes=len(new_classes), window=plan.window, temperature=1.0,
                                     context_width=0)
        windows = {n: v for n, v in source.classifier_state.items() if not n.startswith(CONTEXT_PREFIXES)}
        state = widen_classifier_state(windows, old_classes, config, new_classes, cfg.seed)
        save_weights(init, state, {"kind": "classifier", "classifier": config.to_dict(), "classes": new_classes,
                                   "from_bundle": {"digest": plan.digest, "classes": old_classes}})
    c = source.classifier
    train_classifier(ClassifierTrainConfig(
        data=cfg.data, out=str(folder), degradations=(*plan.old_specs, str(plan.spec)), input_size=c.input_size,
        width=c.width, depth=c.depth, convs=c.convs, crop_size=plan.window, grid=c.grid, steps=p.dc_steps,
        batch_size=p.dc_batch_size, val_samples=p.val_samples * 2, samples_per_epoch=p.samples_per_epoch,
        workers=p.workers, threads=cfg.threads, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
        init=str(init), dim_weather=p.dc_dim_weather))
    return True


def _write_bundle(cfg: ExtendConfig, plan: _Plan, work: Path, refine: int, seconds: dict[str, float]) -> dict[str, Any]:
    """The new bundle, uncalibrated, in WORK/bundle.safetensors; returns its metrics."""
    source, spec, p = plan.source, plan.spec, PRESETS[cfg.preset]
    names = [*source.degradations, spec.name]
    dc_path = work / ("context" if plan.context_width else "classifier") / "model.safetensors"
    dc_config, dc_state, dc_header = load_classifier(dc_path)
    if dc_header.get("classes") != [*names, "clean"]:
        raise AdsrtError(f"{dc_path}: classifier classes {dc_header.get('classes')} do not match {names} + clean")
    layer_deltas, entry = load_stage_deltas(work, plan.tag, spec.name, source.backbone, source.granularity, source.q,
                                            f"bundle {cfg.bundle}")
    old_dc_params = source.classifier.num_params()
    added = {
        "name": spec.name, "degradation": str(spec), "preset": cfg.preset, "preset_values": dataclasses.asdict(p),
        "data": str(resolved(cfg.data)), "seed": cfg.seed, "work": str(resolved(work)), "selector": plan.selector,
        "budget": plan.budget, "steps": {"target": p.target_steps, "faig_path": p.path_steps, "refine": refine,
                                         "classifier": p.dc_steps,
                                         **({"context": p.dc_context_steps} if plan.context_width else {})},
        # The windows start from the bundle's; a context trunk (if the bundle has one) is trained afresh.
        "classifier_warm_start": "windows" if plan.context_width else True, "seconds": dict(seconds),
        "params": {"delta": entry["delta_params"], "masked_units": entry["masked_units"],
                   "classifier_before": old_dc_params, "classifier_after": dc_config.num_params(),
                   "classifier_added": dc_config.num_params() - old_dc_params},
        "adsrt": __version__, "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    provenance = {k: v for k, v in source.provenance.items() if k not in ("extended_from", "added")}
    if "extended_from" in source.provenance:
        provenance["earlier_extensions"] = [*source.provenance.get("earlier_extensions", []),
                                            {"extended_from": source.provenance["extended_from"],
                                             "added": source.provenance.get("added")}]
    provenance.update(
        degradations=[*plan.old_specs, str(spec)],
        extended_from={"digest": plan.digest, "path": str(plan.source_path), "degradations": list(source.degradations)},
        added=added)
    old_metrics = {k: v for k, v in source.metrics.items() if k != "temperature_calibration"}
    per_d = dict(old_metrics.get("per_degradation") or {})
    per_d[spec.name] = entry
    metrics = {**old_metrics, "per_degradation": per_d, "classifier_accuracy": dc_header.get("val", {}).get("accuracy")}
    metrics.setdefault("protocol", "adsrt: PSNR on RGB in [0,1], held-out training crops with fixed seeds (not a benchmark)")
    bundle = dataclasses.replace(source, degradations=names, deltas={**source.deltas, spec.name: layer_deltas},
                                 classifier=dc_config, classifier_state=dc_state, provenance=provenance, metrics=metrics)
    save_bundle(bundle, work / "bundle.safetensors")
    summary = summarize(bundle)
    write_json(work / "bundle_metrics.json", {**metrics, "added": added,
                                              "overhead": {d: summary.overhead(d) for d in names}})
    return {**metrics, "added": added}
