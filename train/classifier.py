"""Stage 5: the degradation classifier (DC) with k + 1 classes, the last one clean/unknown.

Trained with cross-entropy on random crops degraded by one of the k degradations at a random level
of its training range (each a family of styles and physical parameters, :mod:`adsrt.train.degradations`),
or left clean (``clean_fraction``, default 1 / (k + 1), so classes are balanced), then, with ``nuisance``
(the default), put through mild camera processing whatever the class (:func:`adsrt.train.camera.camera_nuisance`),
so what it learns transfers to real photos rather than to the generators' signatures; ``dim_weather`` of the rain
and snow samples are at dusk or night (:func:`adsrt.train.data.dim_scene`). Reports the accuracy and the confusion
matrix (rows: true class, columns: predicted) on held-out crops drawn with a fixed seed. The context trunk that
sees the windows together is a later stage on whole frames (:mod:`adsrt.train.context`).

Warm start (``init``): classifier weights (a ``model.safetensors`` of this stage) of the same shape and
classes to start from instead of a random init; ``adsrt train add`` starts the k + 2-class classifier of an
extended bundle from the k + 1-class one this way (:mod:`adsrt.train.extend`).

Resumable like the restorer stages: ``checkpoint.safetensors`` every ``ckpt_every`` steps (and on SIGTERM),
the loss curve in ``log.csv`` continuing across resumes, batches fixed per step (:mod:`adsrt.train.batches`).

Output folder: ``model.safetensors`` (weights + config + class names, written last), ``report.json``,
``log.csv`` and, while it runs, ``checkpoint.safetensors``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adsrt.arch import ClassifierConfig, DegradationClassifier, build_classifier
from adsrt.errors import AdsrtError
from adsrt.fileio import file_sha256, write_json
from adsrt.train import distributed
from adsrt.train.batches import step_batches
from adsrt.train.camera import NuisanceConfig
from adsrt.train.checkpoint import (
    load_run_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from adsrt.train.compute import plan_compute
from adsrt.train.degradations import DegradationSpec
from adsrt.train.progress import LossLoop, StageLog, StopSignal
from adsrt.train.trainer import (
    CHECKPOINT,
    adamw,
    class_specs,
    cosine_lr,
    fixed_batches,
    load_optimizer_state,
    set_lr,
    split_datasets,
)

CSV_FIELDS = ("step", "lr", "loss", "seconds")

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ClassifierTrainConfig:
    data: str
    out: str
    degradations: tuple[str, ...] = ("noise", "blur", "rain")
    input_size: int = 128
    width: int = 16
    depth: int = 4
    convs: int = 1  # 3x3 convolutions per stage (ClassifierConfig.convs)
    crop_size: int = 128  # also the window the classifier views frames through (ClassifierConfig.window)
    grid: int = 3  # frames larger than a crop are classified on grid x grid windows
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    clean_fraction: float | None = None  # default 1 / (k + 1)
    nuisance: bool = True  # camera processing on every sample (see the module doc)
    dim_weather: float = 0.3  # share of rain and snow samples at dusk or night (DegradedImageDataset)
    init: str | None = None  # classifier weights to start from (same shape and classes; see the module doc)
    samples_per_epoch: int = 2048
    val_samples: int = 256
    val_fraction: float = 0.1
    ckpt_every: int = 500
    log_every: int = 50
    workers: int = 1
    threads: int | None = None  # see adsrt.train.compute
    seed: int = 0
    resume: bool = True
    device: str | None = None
    progress: bool = True


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def format_confusion(report: dict[str, Any]) -> str:
    """The confusion matrix as a text table (rows true class, columns predicted)."""
    classes = report["classes"]
    w = max(8, *(len(c) for c in classes)) + 1
    corner = "true/pred"
    lines = [f"{corner:<{w}}" + "".join(f"{c:>{w}}" for c in classes)]
    for c, row in zip(classes, report["confusion"], strict=True):
        lines.append(f"{c:<{w}}" + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)


def train_classifier(cfg: ClassifierTrainConfig) -> dict[str, Any]:
    """Train the DC; write the weights and ``report.json``; return the report."""
    specs = class_specs(cfg.degradations)
    # The DC must recognise a degradation at any level, so drop fixed levels (names are the classes).
    specs = [DegradationSpec(s.name) for s in specs]
    k = len(specs)
    clean_fraction = 1.0 / (k + 1) if cfg.clean_fraction is None else cfg.clean_fraction
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise AdsrtError("steps and batch_size must be >= 1")
    try:
        model_config = ClassifierConfig(num_classes=k + 1, input_size=cfg.input_size, width=cfg.width, depth=cfg.depth,
                                        convs=cfg.convs, window=cfg.crop_size, grid=cfg.grid)
    except ValueError as exc:
        raise AdsrtError(f"bad classifier shape: {exc}") from exc
    if cfg.ckpt_every < 1 or cfg.log_every < 1:
        raise AdsrtError("ckpt_every and log_every must be >= 1")
    device = distributed.setup(cfg.device).device
    # The classifier's inputs are small windows of a few channels: NCHW, fp32 (no autocast, no channels_last).
    plan = plan_compute(device, threads=cfg.threads, channels_last=False, amp=False)
    torch.manual_seed(cfg.seed)
    train_set, val_set = split_datasets(
        cfg.data, specs, crop_size=cfg.crop_size, samples_per_epoch=max(cfg.samples_per_epoch, cfg.batch_size),
        val_samples=cfg.val_samples, val_fraction=cfg.val_fraction, seed=cfg.seed, clean_fraction=clean_fraction,
        nuisance=NuisanceConfig() if cfg.nuisance else None, dim_weather=cfg.dim_weather)
    classes = [*(s.name for s in specs), "clean"]
    model = build_classifier(model_config)
    if cfg.init is not None:
        _warm_start(model, cfg.init, classes)
    model = model.to(device).train()
    optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, step, elapsed = out / CHECKPOINT, 0, 0.0
    # Everything the remaining steps depend on; a checkpoint of any other run is refused.
    run_key = {"classifier": model_config.to_dict(), "classes": [s.name for s in specs],
               **{k: getattr(cfg, k) for k in ("steps", "batch_size", "lr", "weight_decay", "crop_size", "seed")},
               "clean_fraction": clean_fraction, "nuisance": cfg.nuisance, "dim_weather": cfg.dim_weather, "samples_per_epoch": len(train_set), "images": len(train_set.images),
               **({"init": file_sha256(cfg.init)} if cfg.init is not None else {})}
    running = {"sum": 0.0, "n": 0}
    resumed = cfg.resume and ckpt_path.is_file()
    if resumed:
        state = load_run_checkpoint(ckpt_path, run_key, "classifier run")
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        step, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        running.update(state["running_loss"])
        log.info("%s: resuming from step %d", ckpt_path, step)
    curve = StageLog(out / "log.csv", CSV_FIELDS, resume_step=step if resumed else None, elapsed=elapsed)

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, {"step": step, "steps": cfg.steps, "elapsed": curve.seconds(),
                                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "rng": rng_state(), "key": run_key, "running_loss": dict(running)})

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc="train classifier", unit="step", disable=not cfg.progress)
    batches = step_batches(train_set, cfg.batch_size, steps=cfg.steps, start=step, seed=cfg.seed, workers=cfg.workers)
    with StopSignal() as stop, contextlib.closing(batches), contextlib.closing(bar):
        loop = LossLoop("train classifier", steps=cfg.steps, running=running, curve=curve, bar=bar, stop=stop,
                        save=save, checkpoint=ckpt_path, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every)
        for step, b in batches:
            lr = cosine_lr(step, cfg.steps, cfg.lr)
            set_lr(optimizer, lr)
            step = loop.step(optimizer, F.cross_entropy(model(plan.to_input(b["input"])), b["label"].to(device)), step, lr)

    report = evaluate_classifier(model, fixed_batches(val_set, cfg.batch_size), [s.name for s in specs], device)
    write_json(out / "report.json", report)
    save_weights(out / "model.safetensors", model.state_dict(),
                 {"kind": "classifier", "classifier": model_config.to_dict(), "classes": report["classes"],
                  "val": {"accuracy": report["accuracy"]}, "step": cfg.steps, "seconds": round(curve.seconds(), 1),
                  "config": asdict(cfg)})
    log.info("classifier: held-out accuracy %.3f on %d crops -> %s", report["accuracy"], report["n"], out)
    return report


def _warm_start(model: DegradationClassifier, path: str, classes: list[str]) -> None:
    """Load the weights of ``path`` into ``model``; AdsrtError unless they have its shape and ``classes``."""
    _, state, header = load_classifier(path)
    if header.get("classes") != classes:
        raise AdsrtError(f"{path}: warm-start weights for the classes {header.get('classes')}, this run trains {classes}")
    expected = model.state_dict()
    wrong = sorted(n for n in expected.keys() | state.keys()
                   if n not in expected or n not in state or state[n].shape != expected[n].shape)
    if wrong:
        raise AdsrtError(f"{path}: warm-start weights do not fit the classifier {model.config.to_dict()} "
                         f"(e.g. {wrong[:3]})")
    model.load_state_dict(state, strict=True)
    log.info("classifier: warm start from %s", path)


@torch.no_grad()
def evaluate_classifier(model: DegradationClassifier, batches: list[dict[str, torch.Tensor]], names: list[str],
                        device: torch.device | str = "cpu") -> dict[str, Any]:
    model.eval()
    true = torch.cat([b["label"] for b in batches])
    probs = torch.cat([torch.softmax(model(b["input"].to(device)), 1).cpu() for b in batches])
    classes = [*names, "clean"]
    return {**classification_scores(probs, true, classes), "classes": classes}


def classification_scores(probs: torch.Tensor, true: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, n, confusion matrix, per-class accuracy and ECE of class probabilities ``[n, k]``."""
    pred = probs.argmax(1)
    cm = confusion_matrix(true, pred, len(classes))
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    return {"accuracy": float((true == pred).float().mean()), "n": len(true), "confusion": cm.tolist(),
            "per_class_accuracy": per_class, "ece": expected_calibration_error(probs, true)}


def expected_calibration_error(probs: torch.Tensor, true: torch.Tensor, bins: int = 10) -> float:
    """ECE (Guo et al. 2017) at T = 1: the mean over equal-width confidence bins of |accuracy - confidence|,
    weighted by the share of samples in the bin. 0 means the top probability is as often right as it says."""
    confidence, pred = probs.max(1)
    hit = (pred == true).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(hit[inside].mean()) - float(confidence[inside].mean()))
    return ece


def load_classifier(path: str | Path) -> tuple[ClassifierConfig, dict[str, torch.Tensor], dict[str, Any]]:
    state, header = load_weights(path)
    if header.get("kind") != "classifier":
        raise AdsrtError(f"{path}: not classifier weights (kind {header.get('kind')!r})")
    try:
        config = ClassifierConfig.from_dict(header["classifier"])
    except (KeyError, ValueError) as exc:
        raise AdsrtError(f"{path}: bad classifier header ({exc})") from exc
    return config, state, header
