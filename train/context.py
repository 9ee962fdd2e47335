"""Stage 5b: the classifier's context trunk, trained on whole frames with the windows frozen.

The window classifier (:mod:`adsrt.train.classifier`) learns on single crops, so what it says of a frame
is the mean of what its windows say. On real photos that is not enough: the sky windows of a backlit dusk
scene look clean, and so do the flat parts of a rainy street. The context trunk
(:class:`adsrt.arch.ClassifierConfig` ``context_width``) sees the windows together in their places (their
mosaic, box-filtered to one view) and adds its logits to the windows', so the exposure layout, veil,
colour and streak density of the frame can decide where the windows disagree.

Why frozen windows and a pool: seeing a frame through its 3 x 3 windows costs 13x a single crop per
training step (0.22 s against 2.85 s for a batch of 32 on one core), and a degraded 320 px frame costs 10x a
96 px crop to make. So each frame of a fixed pool is made once: degraded (the same families and camera
nuisances as the window classifier), its windows' logits computed by the frozen window classifier, and
the context trunk's input (:meth:`adsrt.arch.DegradationClassifier.context_input`) stored as uint8. Training
the context trunk on the pool then costs one small view per sample. ``window_share`` of the pool are single
windows: the context trunk runs on every input (local mode's windows, frames smaller than a window), so it
learns what to add there too.

The context head starts at zero, so the first step is the window classifier exactly; the report compares
both on held-out frames of held-out photos.

Output folder: ``model.safetensors`` (the whole classifier: the window weights unchanged plus the context
trunk), ``report.json``, ``log.csv``, the two pools (``pool.safetensors``, ``val_pool.safetensors``,
keyed on everything they depend on) and, while it runs, ``checkpoint.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adsrt.arch import CONTEXT_PREFIXES, build_classifier
from adsrt.errors import AdsrtError
from adsrt.fileio import file_sha256, write_json
from adsrt.train import data as data_module
from adsrt.train import distributed
from adsrt.train.batches import ignore_sigterm
from adsrt.train.camera import NuisanceConfig
from adsrt.train.checkpoint import load_run_checkpoint, load_weights, save_checkpoint, save_weights
from adsrt.train.classifier import classification_scores, load_classifier
from adsrt.train.compute import plan_compute
from adsrt.train.data import DegradedImageDataset, folder_images
from adsrt.train.degradations import DegradationSpec, generator_digest
from adsrt.train.progress import LossLoop, StageLog, StopSignal
from adsrt.train.trainer import CHECKPOINT, adamw, cosine_lr, load_optimizer_state, set_lr, split_datasets

__all__ = ["ContextTrainConfig", "train_context", "window_classifier_digest"]

CSV_FIELDS = ("step", "lr", "loss", "seconds")
POOL_KIND = "context_pool"

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ContextTrainConfig:
    data: str
    classifier: str  # the window classifier's model.safetensors (adsrt train classifier)
    out: str
    context_width: int = 16
    frames: int = 12000  # pool size: degraded frames (and single windows) of the training photos
    window_share: float = 0.25  # of the pool: single windows (see the module doc)
    frame_range: tuple[int, int] = (160, 512)  # frame sides drawn in this range, at most the photo's
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # None: the window classifier's setting (its header), so frames come from its training distribution
    # and its held-out photos stay held out.
    clean_fraction: float | None = None
    nuisance: bool | None = None
    dim_weather: float | None = None
    val_fraction: float | None = None
    val_frames: int = 512
    ckpt_every: int = 500
    log_every: int = 50
    workers: int = 1
    threads: int | None = None
    seed: int = 0
    resume: bool = True
    device: str | None = None
    progress: bool = True


def _pool_datasets(cfg: ContextTrainConfig, specs: list[DegradationSpec], window: int, settings: dict[str, Any]
                   ) -> dict[str, list[tuple[DegradedImageDataset, int]]]:
    """(dataset, samples) of the frames and of the single windows, for the "pool" (training photos) and the
    "val_pool" (held-out photos); the folder is decoded once."""
    nuisance = NuisanceConfig() if settings["nuisance"] else None
    windows = {name: round(n * cfg.window_share) for name, n in (("pool", cfg.frames), ("val_pool", cfg.val_frames))}
    frames = {name: n - windows[name] for name, n in (("pool", cfg.frames), ("val_pool", cfg.val_frames))}
    train_frames, val_frames = split_datasets(
        cfg.data, specs, crop_size=window, samples_per_epoch=max(frames["pool"], 1),
        val_samples=max(frames["val_pool"], 1), val_fraction=settings["val_fraction"], seed=cfg.seed + 101,
        clean_fraction=settings["clean_fraction"], nuisance=nuisance, crop_range=cfg.frame_range,
        dim_weather=settings["dim_weather"])
    parts: dict[str, list[tuple[DegradedImageDataset, int]]] = {}
    for name, dataset in (("pool", train_frames), ("val_pool", val_frames)):
        single = copy.copy(dataset)  # the same photos, window-sized crops, other draws
        single.crop_range, single.seed = None, dataset.seed + 101
        single.samples_per_epoch = max(windows[name], 1)
        parts[name] = [(dataset, frames[name]), (single, windows[name])]
    return parts


def window_classifier_digest(path: str | Path) -> str:
    """What a context classifier records of the window classifier it was trained on (its file's sha256)."""
    return file_sha256(path)


def _data_digest(folder: str) -> str:
    """The photos of ``folder`` by name and size: a pool made from other photos is not reused."""
    listing = [(p.name, p.stat().st_size) for p in folder_images(folder)]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


@torch.no_grad()
def _make_pool(model: torch.nn.Module, parts: list[tuple[DegradedImageDataset, int]], device: torch.device,
               desc: str, progress: bool, workers: int) -> dict[str, torch.Tensor]:
    """Thumbnails (uint8), the frozen windows' logits and labels of every sample of ``parts``."""
    from tqdm import tqdm

    thumbs, logits, labels = [], [], []
    total = sum(n for _, n in parts)
    with tqdm(total=total, desc=desc, unit="frame", disable=not progress) as bar:
        for dataset, n in parts:
            keys = [(0, i) for i in range(n)]
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=keys, num_workers=workers,
                                                 worker_init_fn=ignore_sigterm if workers else None)
            for sample in loader:
                x = sample["input"][None].to(device)
                logits.append(model.window_logits(x).float().cpu())
                thumbs.append(torch.round(model.context_input(x).clamp(0, 1) * 255).to(torch.uint8).cpu())
                labels.append(sample["label"].reshape(1))
                bar.update(1)
    return {"thumbs": torch.cat(thumbs), "logits": torch.cat(logits), "labels": torch.cat(labels)}


def _pool(path: Path, key: dict[str, Any], make) -> dict[str, torch.Tensor]:
    """The pool at ``path`` if it was made with ``key``, else made now and written (atomically)."""
    if path.is_file():
        tensors, header = load_weights(path)
        if header.get("kind") == POOL_KIND and header.get("key") == key:
            log.info("%s: reusing the pool (%d samples)", path, len(tensors["labels"]))
            return tensors
        log.info("%s: made with other inputs or settings; making it again", path)
    tensors = make()
    save_weights(path, tensors, {"kind": POOL_KIND, "key": key})
    return tensors


@torch.no_grad()
def _evaluate(model: torch.nn.Module, pool: dict[str, torch.Tensor], windows_from: int, classes: list[str],
              device: torch.device) -> dict[str, Any]:
    """Held-out accuracy of the windows alone and with the context, on frames and on single windows."""
    thumbs = pool["thumbs"].to(device).float() / 255.0
    context = torch.cat([model.context_logits(t) for t in thumbs.split(256)]).cpu()
    report: dict[str, Any] = {"classes": classes}
    for part, sl in (("frames", slice(0, windows_from)), ("windows", slice(windows_from, None))):
        logits, labels = pool["logits"][sl], pool["labels"][sl]
        if len(labels) == 0:
            continue
        report[part] = {"windows_only": classification_scores(torch.softmax(logits, 1), labels, classes),
                        "with_context": classification_scores(torch.softmax(logits + context[sl], 1), labels, classes)}
    return report


def _settings(cfg: ContextTrainConfig, header: dict[str, Any], k: int) -> dict[str, Any]:
    """The data settings: the config's where given, else the window classifier's (its header), else defaults."""
    trained = header.get("config") if isinstance(header.get("config"), dict) else {}
    defaults = {"clean_fraction": None, "nuisance": True, "dim_weather": 0.0, "val_fraction": 0.1}
    out = {name: getattr(cfg, name) if getattr(cfg, name) is not None else trained.get(name, default)
           for name, default in defaults.items()}
    if out["clean_fraction"] is None:
        out["clean_fraction"] = 1.0 / (k + 1)
    return out


def train_context(cfg: ContextTrainConfig) -> dict[str, Any]:
    """Train the context trunk of a window classifier; write the whole classifier and ``report.json``."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.frames < 1 or cfg.context_width < 1:
        raise AdsrtError("steps, batch_size, frames and context_width must be >= 1")
    if not 0.0 <= cfg.window_share < 1.0:
        raise AdsrtError(f"window_share must be in [0, 1), got {cfg.window_share}")
    val_windows_from = cfg.val_frames - round(cfg.val_frames * cfg.window_share)
    if val_windows_from < 1:
        raise AdsrtError(f"val_frames {cfg.val_frames} at window_share {cfg.window_share} leaves no held-out frame")
    if cfg.ckpt_every < 1 or cfg.log_every < 1:
        raise AdsrtError("ckpt_every and log_every must be >= 1")
    base_config, base_state, header = load_classifier(cfg.classifier)
    classes = list(header.get("classes") or [])
    if len(classes) != base_config.num_classes or classes[-1:] != ["clean"]:
        raise AdsrtError(f"{cfg.classifier}: classes {classes} do not end with clean")
    if base_config.window == 0:
        raise AdsrtError(f"{cfg.classifier}: the classifier sees whole frames (window 0); context needs windows")
    try:
        config = dataclasses.replace(base_config, context_width=cfg.context_width, temperature=1.0)
    except ValueError as exc:
        raise AdsrtError(f"bad context trunk: {exc}") from exc
    specs = [DegradationSpec(name) for name in classes[:-1]]
    settings = _settings(cfg, header, len(specs))
    device = distributed.setup(cfg.device).device
    plan_compute(device, threads=cfg.threads, channels_last=False, amp=False)
    torch.manual_seed(cfg.seed)
    model = build_classifier(config)
    own = {n for n in model.state_dict() if n.startswith(CONTEXT_PREFIXES)}
    missing = model.load_state_dict({n: v for n, v in base_state.items() if n not in own}, strict=False)
    if set(missing.missing_keys) != own or missing.unexpected_keys:
        raise AdsrtError(f"{cfg.classifier}: weights do not fit {base_config.to_dict()}")
    torch.nn.init.zeros_(model.context_head.weight)
    torch.nn.init.zeros_(model.context_head.bias)
    model = model.to(device).eval()  # no batch norm or dropout: eval and train compute the same
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # Everything the pools depend on: the window classifier, the generators and the sampling code, the
    # photos and the data settings.
    window_digest = window_classifier_digest(cfg.classifier)
    pool_key = {"classifier": window_digest, "generators": generator_digest(), "sampling": file_sha256(data_module.__file__),
                "data": _data_digest(cfg.data), "classes": classes, "window_share": cfg.window_share, "seed": cfg.seed,
                "frame_range": list(cfg.frame_range), **settings}
    parts = None
    pools = {}
    for name, n in (("pool", cfg.frames), ("val_pool", cfg.val_frames)):
        def make(name: str = name) -> dict[str, torch.Tensor]:
            nonlocal parts
            parts = parts or _pool_datasets(cfg, specs, base_config.window, settings)
            return _make_pool(model, parts[name], device, f"context {name}", cfg.progress, cfg.workers)

        pools[name] = _pool(out / f"{name}.safetensors", {**pool_key, "samples": n}, make)
    train_pool, val_pool = pools["pool"], pools["val_pool"]

    params = [p for n, p in model.named_parameters() if n in own]
    for n, p in model.named_parameters():
        p.requires_grad_(n in own)
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt_path, step, elapsed = out / CHECKPOINT, 0, 0.0
    run_key = {"config": config.to_dict(), "pool": pool_key, "frames": cfg.frames,
               **{f: getattr(cfg, f) for f in ("steps", "batch_size", "lr", "weight_decay")}}
    running = {"sum": 0.0, "n": 0}
    resumed = cfg.resume and ckpt_path.is_file()
    if resumed:
        state = load_run_checkpoint(ckpt_path, run_key, "context run")
        model.load_state_dict({**model.state_dict(), **state["context"]})
        load_optimizer_state(optimizer, state["optimizer"])
        step, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        running.update(state["running_loss"])
        log.info("%s: resuming from step %d", ckpt_path, step)
    curve = StageLog(out / "log.csv", CSV_FIELDS, resume_step=step if resumed else None, elapsed=elapsed)

    def save(step: int) -> None:
        context = {n: v for n, v in model.state_dict().items() if n in own}
        save_checkpoint(ckpt_path, {"step": step, "steps": cfg.steps, "elapsed": curve.seconds(), "context": context,
                                    "optimizer": optimizer.state_dict(), "key": run_key, "running_loss": dict(running)})

    from tqdm import tqdm

    n_pool = len(train_pool["labels"])
    bar = tqdm(total=cfg.steps, initial=step, desc="train context", unit="step", disable=not cfg.progress)
    with StopSignal() as stop, contextlib.closing(bar):
        loop = LossLoop("train context", steps=cfg.steps, running=running, curve=curve, bar=bar, stop=stop,
                        save=save, checkpoint=ckpt_path, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every)
        while step < cfg.steps:
            # The batch of a step is a function of the seed and the step, so a resumed run continues exactly.
            # No flips: the pool's window logits are those of the frame as it was made (the dataset flips).
            index = torch.randint(n_pool, (cfg.batch_size,), generator=torch.Generator().manual_seed(
                cfg.seed * 1_000_003 + step))
            views = (train_pool["thumbs"][index].float() / 255.0).to(device)
            lr = cosine_lr(step, cfg.steps, cfg.lr)
            set_lr(optimizer, lr)
            logits = train_pool["logits"][index].to(device) + model.context_logits(views)
            step = loop.step(optimizer, F.cross_entropy(logits, train_pool["labels"][index].to(device)), step, lr)

    report = _evaluate(model, val_pool, val_windows_from, classes, device)
    write_json(out / "report.json", report)
    frames = report["frames"]
    save_weights(out / "model.safetensors", model.state_dict(),
                 {"kind": "classifier", "classifier": config.to_dict(), "classes": classes,
                  # accuracy: the window classifier's on held-out crops, as every classifier header has it.
                  "val": {**(header.get("val") or {}), "frame_accuracy": frames["with_context"]["accuracy"],
                          "frame_accuracy_windows_only": frames["windows_only"]["accuracy"],
                          "frame_protocol": "held-out frames of held-out training photos"},
                  "step": cfg.steps, "seconds": round(curve.seconds(), 1), "config": asdict(cfg),
                  "settings": settings, "window_classifier": {"sha256": window_digest, "config": header.get("config")}})
    log.info("context: held-out frame accuracy %.3f with context, %.3f windows only -> %s",
             frames["with_context"]["accuracy"], frames["windows_only"]["accuracy"], out)
    return report
