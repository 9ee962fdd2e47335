"""Stage 6: ``adsrt train all``, every stage in order into a work folder, then the bundle.

Work folder layout (a stage is skipped when its final file exists; every stage resumes from its
checkpoint when a run was interrupted half way; ``adsrt train status WORK`` reads it):

    WORK/run.json                                   the run's config and plan (written first)
    WORK/um/model.safetensors                       stage 1 (UM)
    WORK/targets/<d>/model.safetensors              stage 2 (IM per degradation)
    WORK/select/<selector>_<gran>_q<q>[_params]/<d>.safetensors   stage 3 (scores + masks)
    WORK/deltas/<selector>_<gran>_q<q>[_params]/<d>.safetensors   stage 4 (sparse deltas + val PSNR)
    WORK/classifier/model.safetensors, report.json  stage 5 (DC on windows)
    WORK/context/model.safetensors, report.json     stage 5b (its context trunk on whole frames; presets
                                                    with dc_context_width), the bundle's classifier

Masks and deltas are keyed by selector, granularity and q, so an ablation reuses the UM and targets.
``adsrt train add`` extends a finished bundle by one degradation with the same stage functions in a work
folder of the same shape (:mod:`adsrt.train.extend`).
Under ``torchrun`` stages 1-2 train with DDP; stages 3-5 and the bundle run on rank 0 while the other
ranks wait.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adsrt.ads import LayerDelta
from adsrt.arch import NAFNetConfig
from adsrt.bundle import Bundle, InputContract, save_bundle, summarize
from adsrt.errors import AdsrtError, check_choice
from adsrt.fileio import write_json
from adsrt.train import distributed
from adsrt.train.checkpoint import load_backbone_weights
from adsrt.train.classifier import ClassifierTrainConfig, load_classifier, train_classifier
from adsrt.train.context import ContextTrainConfig, train_context, window_classifier_digest
from adsrt.train.degradations import DegradationSpec
from adsrt.train.deltas import DeltasConfig, build_deltas, load_deltas
from adsrt.train.select import GRANULARITIES, SELECTORS, SelectConfig, check_q, load_selection, run_select
from adsrt.train.status import RUN_FILE
from adsrt.train.trainer import class_specs
from adsrt.train.um import TargetConfig, UMConfig, train_target, train_um
from adsrt.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of a whole pipeline run."""

    backbone: str
    crop_size: int
    batch_size: int
    um_steps: int
    um_lr: float
    target_steps: int
    target_lr: float
    val_every: int
    val_samples: int
    ckpt_every: int
    samples_per_epoch: int
    path_steps: int  # FAIG N
    faig_images: int
    refine_steps: int
    dc_steps: int
    dc_input_size: int
    dc_width: int
    dc_depth: int
    dc_crop_size: int
    dc_batch_size: int
    workers: int
    dc_convs: int = 1  # 3x3 convolutions per classifier stage (ClassifierConfig.convs)
    um_clean_fraction: float = 0.0  # UM samples left clean, so it leaves a clean frame alone (TrainerConfig)
    um_warmup: int = 0  # linear warm-up steps of the UM's learning rate
    calib_images: int = 16  # training photos for the classifier's temperature (adsrt.train.calibrate)
    calib_prior_frames: int = 600  # whole held-out training frames for the classifier's clean prior (same)
    # The classifier's context trunk (adsrt.train.context): its width (0: none), pool frames and steps.
    dc_context_width: int = 0
    dc_context_frames: int = 12000
    dc_context_steps: int = 3000
    dc_dim_weather: float = 0.3  # share of the classifier's rain and snow samples at dusk or night
    # torch.compile the UM and target steps: 2x the samples/s of v1's loop on 2 CPU cores (adsrt bench train,
    # benchmarks/results/train.csv); the first step of each run compiles (about a minute on a CPU).
    compile: bool = True


PRESETS: dict[str, Preset] = {
    # Seconds on a CPU: proves the plumbing end to end, learns almost nothing.
    "tiny": Preset(
        backbone="nafnet-tiny", crop_size=32, batch_size=4, um_steps=6, um_lr=0.002, target_steps=3,
        target_lr=0.001, val_every=3, val_samples=8, ckpt_every=3, samples_per_epoch=64, path_steps=3,
        faig_images=4, refine_steps=2, dc_steps=6, dc_input_size=32, dc_width=4, dc_depth=2, dc_crop_size=48,
        dc_batch_size=8, workers=0, calib_images=2, calib_prior_frames=12, compile=False, um_clean_fraction=0.25,
        dc_context_width=2, dc_context_frames=24, dc_context_steps=3,
    ),
    # Minutes to an hour on one GPU: numbers that move.
    "small": Preset(
        backbone="nafnet-small", crop_size=64, batch_size=16, um_steps=4000, um_lr=0.001, target_steps=1000,
        target_lr=0.0002, val_every=500, val_samples=64, ckpt_every=500, samples_per_epoch=2048,
        path_steps=20, faig_images=16, refine_steps=200, dc_steps=1500, dc_input_size=64, dc_width=8,
        dc_depth=3, dc_crop_size=96, dc_batch_size=32, workers=2, um_clean_fraction=0.1,
        dc_context_width=8, dc_context_frames=4000, dc_context_steps=1500,
    ),
    # The bundled default model (adsrt/models/default.safetensors): the small backbone, which runs a
    # 480p frame in ~0.3 s on two CPU cores, trained longer on six degradations in ~1.5 h on one CPU core.
    # Its classifier sees 96 px windows at full resolution (input_size = crop: resizing 96 -> 64 px erased
    # noise and blur; a width-8 classifier so trained reached 38% on 7 classes). On the degradation families
    # with camera nuisances, width 16 with one conv per stage reached 57% on held-out crops and 5% on real
    # rain; width 24 with two convs per stage 74% and 47% at 3,000 steps, so it trains 8,000.
    "bundled": Preset(
        backbone="nafnet-small", crop_size=64, batch_size=16, um_steps=6000, um_lr=0.001, target_steps=1000,
        target_lr=0.0002, val_every=1000, val_samples=64, ckpt_every=500, samples_per_epoch=2048,
        path_steps=20, faig_images=16, refine_steps=300, dc_steps=8000, dc_input_size=96, dc_width=24,
        dc_depth=4, dc_crop_size=96, dc_batch_size=32, workers=1, dc_convs=2, um_clean_fraction=0.1,
        dc_context_width=16,
    ),
    # Default model v2 (issue 16): the recipe of the UM study (benchmarks/results/recipes.csv: nafnet-small,
    # 64 px, L1, lr 2e-3 with 200 warm-up steps, compiled) trained 10x v1's UM samples (60k steps of 16,
    # about 4 h of one CPU core), targets 4x, refinement 3x. Train it on a split that holds photos out
    # (`adsrt train split`), so the quality report has clean photos no stage has seen.
    "bundled-v2": Preset(
        backbone="nafnet-small", crop_size=64, batch_size=16, um_steps=60000, um_lr=0.002, um_warmup=200,
        target_steps=4000, target_lr=0.0002, val_every=2000, val_samples=64, ckpt_every=1000,
        samples_per_epoch=2048, path_steps=20, faig_images=16, refine_steps=1000, dc_steps=8000,
        dc_input_size=96, dc_width=24, dc_depth=4, dc_crop_size=96, dc_batch_size=32, workers=1, dc_convs=2,
        um_clean_fraction=0.1, dc_context_width=16,
    ),
    # The edge model at full size (a few GPU hours).
    "default": Preset(
        backbone="nafnet-edge", crop_size=128, batch_size=16, um_steps=60000, um_lr=0.001,
        target_steps=10000, target_lr=0.0002, val_every=2000, val_samples=128, ckpt_every=1000,
        samples_per_epoch=4096, path_steps=50, faig_images=32, refine_steps=1000, dc_steps=5000,
        dc_input_size=128, dc_width=16, dc_depth=4, dc_crop_size=128, dc_batch_size=32, workers=8,
        um_clean_fraction=0.1, dc_context_width=16,
    ),
}


@dataclass(kw_only=True)
class RunOptions:
    """What a multi-stage run (``train all``, ``train add``) passes to every stage besides the preset."""

    refine_steps: int | None = None  # None = the preset's
    seed: int = 0
    device: str | None = None
    # How the restorer stages use the machine (adsrt.train.compute); None: the stage configs' defaults.
    threads: int | None = None
    amp: bool | None = None
    cpu_bf16: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    progress: bool = True


@dataclass(kw_only=True)
class PipelineConfig(RunOptions):
    data: str
    out: str  # bundle path
    work: str
    degradations: tuple[str, ...] = ("noise", "blur", "rain")
    preset: str = "default"
    selector: str = "faig"
    q: float = 0.03
    granularity: str = "kernel"
    budget: str = "params"  # see adsrt.train.select


def stage_tag(selector: str, granularity: str, q: float, budget: str) -> str:
    """The folder name of a run's masks and deltas under WORK/select and WORK/deltas."""
    suffix = "" if budget == "units" else f"_{budget}"
    return f"{selector}_{granularity}_q{q:g}{suffix}"


def _tag(cfg: PipelineConfig) -> str:
    return stage_tag(cfg.selector, cfg.granularity, cfg.q, cfg.budget)


def restorer_stage_kwargs(p: Preset, cfg: Any) -> dict[str, Any]:
    """The keywords of the restorer stages (UMConfig, TargetConfig) from a preset and a run config with
    ``data``, ``seed``, ``device``, ``progress`` and the compute fields (PipelineConfig, ExtendConfig)."""
    common = dict(data=cfg.data, crop_size=p.crop_size, batch_size=p.batch_size, val_every=p.val_every,
                  val_samples=p.val_samples, ckpt_every=p.ckpt_every, samples_per_epoch=p.samples_per_epoch,
                  workers=p.workers, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
    compute = {"compile": p.compile, **{k: getattr(cfg, k) for k in ("threads", "amp", "cpu_bf16", "channels_last",
                                                                      "compile") if getattr(cfg, k) is not None}}
    return {**common, **compute}


def select_stage(p: Preset, spec: DegradationSpec, *, work: Path, tag: str, um_path: Path, data: str, selector: str,
                 q: float, granularity: str, budget: str, seed: int, threads: int | None, device: str | None) -> bool:
    """Stage 3 of one degradation into WORK/select/TAG/<d>.safetensors; False (skipped) when that file exists."""
    masks = work / "select" / tag / f"{spec.name}.safetensors"
    if masks.is_file():
        return False
    run_select(SelectConfig(um=str(um_path), target=str(work / "targets" / spec.name / "model.safetensors"),
                            degradation=str(spec), out=str(masks), data=data, selector=selector, q=q,
                            granularity=granularity, budget=budget, path_steps=p.path_steps, n_images=p.faig_images,
                            batch_size=p.batch_size, crop_size=p.crop_size, seed=seed, threads=threads, device=device))
    return True


def deltas_stage(p: Preset, spec: DegradationSpec, *, work: Path, tag: str, um_path: Path, data: str,
                 refine_steps: int, seed: int, threads: int | None, device: str | None) -> bool:
    """Stage 4 of one degradation into WORK/deltas/TAG/<d>.safetensors; False (skipped) when that file exists."""
    deltas = work / "deltas" / tag / f"{spec.name}.safetensors"
    if deltas.is_file():
        return False
    build_deltas(DeltasConfig(um=str(um_path), target=str(work / "targets" / spec.name / "model.safetensors"),
                              masks=str(work / "select" / tag / f"{spec.name}.safetensors"), out=str(deltas),
                              data=data, refine_steps=refine_steps, batch_size=p.batch_size, crop_size=p.crop_size,
                              val_samples=p.val_samples, seed=seed, threads=threads, device=device))
    return True


def load_stage_deltas(work: Path, tag: str, name: str, backbone: NAFNetConfig, granularity: str, q: float,
                      um_label: str) -> tuple[dict[str, LayerDelta], dict[str, Any]]:
    """The deltas of ``name`` from a work folder, checked against the run's backbone, granularity and q, and
    their entry of the bundle's ``metrics["per_degradation"]`` (``um_label`` names the UM in messages)."""
    layer_deltas, header = load_deltas(work / "deltas" / tag / f"{name}.safetensors")
    if header["backbone"] != backbone.to_dict():
        raise AdsrtError(f"deltas of {name} were made for another backbone than {um_label}'s")
    if header["granularity"] != granularity or header["q"] != q:
        raise AdsrtError(f"deltas of {name}: granularity/q {header['granularity']}/{header['q']} differ from the run's")
    entry = {**header.get("val", {}), "refined": header["refined"], "masked_units": header["masked_units"],
             "delta_params": header["delta_params"]}
    _, _, sel = load_selection(work / "select" / tag / f"{name}.safetensors")
    entry["eligible_units"] = sel["eligible_units"]
    return layer_deltas, entry


def context_stage(p: Preset, work: Path, width: int, **kw: Any) -> bool:
    """Stage 5b: the context trunk (``width``) of WORK/classifier on whole frames, into WORK/context (the
    whole classifier). False when it was done already; a context trained on another window classifier than
    the one in WORK/classifier is refused, not shipped with the wrong windows."""
    window_classifier, path = work / "classifier" / "model.safetensors", work / "context" / "model.safetensors"
    if path.is_file():
        _, _, header = load_classifier(path)
        if (header.get("window_classifier") or {}).get("sha256") != window_classifier_digest(window_classifier):
            raise AdsrtError(f"{path}: trained on another window classifier than {window_classifier}; delete "
                             f"{path.parent} to train it again")
        log.info("context: %s exists, skipping", path)
        return False
    train_context(ContextTrainConfig(classifier=str(window_classifier), out=str(path.parent), context_width=width,
                                     frames=p.dc_context_frames, steps=p.dc_context_steps,
                                     val_frames=max(8, p.val_samples * 4), workers=p.workers, **kw))
    return True


def train_all(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the missing stages and write the bundle. Returns the bundle's metrics (rank 0)."""
    check_choice("preset", cfg.preset, PRESETS)
    check_choice("selector", cfg.selector, SELECTORS)
    check_choice("granularity", cfg.granularity, GRANULARITIES)
    check_q(cfg.q)
    specs = class_specs(cfg.degradations)
    p = PRESETS[cfg.preset]
    env = distributed.setup(cfg.device)
    work = Path(cfg.work)
    if env.is_main:
        work.mkdir(parents=True, exist_ok=True)
        # What `adsrt train status WORK` reads to know the plan (stage names and step counts).
        write_json(work / RUN_FILE, {"config": dataclasses.asdict(cfg), "out": str(Path(cfg.out).resolve()),
                                     "preset_values": dataclasses.asdict(p), "tag": _tag(cfg),
                                     "degradation_names": [s.name for s in specs]})
    stage_kwargs = restorer_stage_kwargs(p, cfg)

    um_path = work / "um" / "model.safetensors"
    if um_path.is_file():
        log.info("UM: %s exists, skipping", um_path)
    else:
        train_um(UMConfig(out=str(um_path.parent), degradations=tuple(str(s) for s in specs), backbone=p.backbone,
                          steps=p.um_steps, lr=p.um_lr, warmup_steps=p.um_warmup, clean_fraction=p.um_clean_fraction, **stage_kwargs))

    for s in specs:
        target = work / "targets" / s.name / "model.safetensors"
        if target.is_file():
            log.info("target %s: %s exists, skipping", s.name, target)
            continue
        train_target(TargetConfig(out=str(target.parent), um=str(um_path), degradation=str(s), steps=p.target_steps,
                                  lr=p.target_lr, **stage_kwargs))

    if env.is_main:
        tag = _tag(cfg)
        refine = p.refine_steps if cfg.refine_steps is None else cfg.refine_steps
        for s in specs:
            where = dict(work=work, tag=tag, um_path=um_path, data=cfg.data, seed=cfg.seed, threads=cfg.threads,
                         device=cfg.device)
            select_stage(p, s, selector=cfg.selector, q=cfg.q, granularity=cfg.granularity, budget=cfg.budget, **where)
            deltas_stage(p, s, refine_steps=refine, **where)
        dc_path = work / "classifier" / "model.safetensors"
        if not dc_path.is_file():
            train_classifier(ClassifierTrainConfig(
                data=cfg.data, out=str(dc_path.parent), degradations=tuple(s.name for s in specs),
                input_size=p.dc_input_size, width=p.dc_width, depth=p.dc_depth, convs=p.dc_convs,
                crop_size=p.dc_crop_size, dim_weather=p.dc_dim_weather,
                steps=p.dc_steps, batch_size=p.dc_batch_size, val_samples=p.val_samples * 2,
                samples_per_epoch=p.samples_per_epoch, workers=p.workers, threads=cfg.threads, seed=cfg.seed, device=cfg.device,
                progress=cfg.progress))
        if p.dc_context_width:
            context_stage(p, work, p.dc_context_width, data=cfg.data, seed=cfg.seed, threads=cfg.threads,
                          device=cfg.device, progress=cfg.progress)
            dc_path = work / "context" / "model.safetensors"
        metrics = _write_bundle(cfg, specs, work, tag, um_path, dc_path)
        from adsrt.train.calibrate import CalibrateConfig, run_calibrate

        temperature, table = run_calibrate(CalibrateConfig(bundle=cfg.out, data=cfg.data, images=p.calib_images,
                                                           prior_frames=p.calib_prior_frames,
                                                           dim_weather=p.dc_dim_weather, seed=cfg.seed,
                                                           progress=cfg.progress))
        metrics = {**metrics, "temperature_calibration": {"psnr": table, "temperature": temperature}}
    else:
        metrics = {}
    distributed.barrier()
    return metrics


def _write_bundle(cfg: PipelineConfig, specs: list, work: Path, tag: str, um_path: Path, dc_path: Path) -> dict[str, Any]:
    config, um_state, um_header = load_backbone_weights(um_path)
    dc_config, dc_state, dc_header = load_classifier(dc_path)
    names = [s.name for s in specs]
    if dc_header.get("classes") != [*names, "clean"]:
        raise AdsrtError(f"{dc_path}: classifier classes {dc_header.get('classes')} do not match {names} + clean")
    deltas, per_d = {}, {}
    for name in names:
        deltas[name], per_d[name] = load_stage_deltas(work, tag, name, config, cfg.granularity, cfg.q, str(um_path))
    dc_report = dc_header.get("val", {})
    metrics = {
        "protocol": "adsrt: PSNR on RGB in [0,1], held-out training crops with fixed seeds (not a benchmark)",
        "um_val_psnr": um_header.get("val", {}).get("psnr"),
        "per_degradation": per_d,
        "classifier_accuracy": dc_report.get("accuracy"),
        **({"classifier_frame_accuracy": dc_report["frame_accuracy"]} if "frame_accuracy" in dc_report else {}),
    }
    bundle = Bundle(
        backbone=config, um_state=um_state, degradations=names, granularity=cfg.granularity, q=cfg.q,
        deltas=deltas, classifier=dc_config, classifier_state=dc_state,
        input=InputContract(pad_multiple=max(16, config.pad_multiple)),
        provenance={
            "adsrt": __version__, "torch": torch.__version__, "preset": cfg.preset,
            "preset_values": dataclasses.asdict(PRESETS[cfg.preset]), "data": str(Path(cfg.data).resolve()),
            "degradations": [str(s) for s in specs], "selector": cfg.selector, "budget": cfg.budget, "seed": cfg.seed,
            "work": str(work.resolve()), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        metrics=metrics,
    )
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    save_bundle(bundle, cfg.out)
    summary = summarize(bundle)
    write_json(work / "bundle_metrics.json", {**metrics, "overhead": {d: summary.overhead(d) for d in names}})
    return metrics
