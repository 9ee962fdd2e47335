"""The restorer trainer behind ``adsrt train um`` and ``adsrt train target``.

One loop for both stages: the UM trains from scratch on a mix of degradations, a target (IM) fine-tunes
a copy of the UM on one degradation. The loop has AdamW with a linear warmup and a cosine decay
(computed from the step, so resuming needs no scheduler state), an EMA of the weights (what gets
validated and exported), periodic validation PSNR on held-out crops drawn with a fixed seed, atomic
checkpoints, resume from the last one, a tqdm bar and a CSV of the loss curve that continues across
resumes. How it uses the machine (threads, channels_last, autocast, ``torch.compile``) is
:mod:`adsrt.train.compute`; the batch of every step is fixed by :mod:`adsrt.train.batches`, so a run
stopped at any moment (SIGTERM: after the current step, with a checkpoint; SIGKILL: from the last periodic
checkpoint) and resumed, here or on another machine with only the output folder, ends with the same weights
as one that never stopped (bit for bit on the same kind of CPU with the same threads; elsewhere to rounding).

Under ``torchrun`` the model is wrapped in DDP (gloo on the CPU, nccl on CUDA) and every rank reads its
own shard of each epoch's samples. Only rank 0 validates and writes files.

Output folder: ``checkpoint.safetensors`` (model, EMA, optimizer, step, elapsed time; no pickle),
``model.safetensors`` (EMA weights + header, written last: its presence means the stage is done),
``log.csv``, ``metrics.json`` and, with ``snapshot_every``, ``snapshots/step_NNNNNNN.safetensors`` (EMA
weights along the way, for curves of quality against training time).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from adsrt.arch import BACKBONES, NAFNet, NAFNetConfig, build_backbone
from adsrt.errors import AdsrtError
from adsrt.fileio import write_json
from adsrt.metrics import batch_psnr
from adsrt.train import distributed
from adsrt.train.batches import step_batches
from adsrt.train.camera import NuisanceConfig
from adsrt.train.checkpoint import (
    load_backbone_weights,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from adsrt.train.compute import CompiledStep, plan_compute, prepare_model
from adsrt.train.data import DegradedImageDataset
from adsrt.train.degradations import DegradationSpec, parse_specs
from adsrt.train.progress import StageLog, StopSignal

log = logging.getLogger(__name__)

LOSSES = ("l1", "psnr")
CSV_FIELDS = ("step", "epoch", "lr", "loss", "val_psnr", "val_input_psnr", "seconds")
CHECKPOINT = "checkpoint.safetensors"  # a stage folder's resumable state (adsrt.train.checkpoint)
# Held-out crops are drawn with this offset from the training seed, so they never repeat a training draw.
VAL_SEED_OFFSET = 7919


@dataclass(kw_only=True)
class TrainerConfig:
    """Hyperparameters of one restorer training run (batch size is per process)."""

    data: str  # folder of clean training photos
    out: str  # output folder of the stage
    degradations: tuple[str, ...] = ("noise", "blur", "rain")  # name[:level] per class; no level = random
    backbone: str | None = "nafnet-edge"  # name in BACKBONES; None = take it from ``init``
    init: str | None = None  # weights to start from (targets: the UM's model.safetensors)
    steps: int = 20000
    batch_size: int = 16
    crop_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.9)  # NAFNet's choice
    grad_clip: float = 0.0  # max grad norm; 0 = off
    loss: str = "l1"  # l1 | psnr
    ema_decay: float = 0.999
    amp: bool = True  # autocast on CUDA (bf16, else fp16); on a CPU see cpu_bf16
    cpu_bf16: bool = False  # bf16 autocast on a CPU (measure first: adsrt bench train)
    threads: int | None = None  # torch threads; None: this process's share of its cores (adsrt.train.compute)
    channels_last: bool = True  # NHWC model and batches (faster convolutions and LayerNorm on a CPU)
    compile: bool = False  # torch.compile the training step (falls back to eager if it fails)
    samples_per_epoch: int = 2048
    # Share of samples left clean (input = target): a blind restorer that never saw a clean frame
    # "restores" one anyway (v1's UM changed clean CBSD68 photos to 28.1 dB); these teach it to leave one alone.
    clean_fraction: float = 0.0
    val_every: int = 1000
    val_samples: int = 64
    val_fraction: float = 0.1  # of the images held out for validation (needs >= 5 images)
    ckpt_every: int = 500
    log_every: int = 10
    snapshot_every: int = 0  # keep the EMA weights every N steps under snapshots/ (0: never)
    workers: int = 1  # data loader processes per training process (0: in the training process)
    seed: int = 0
    resume: bool = True
    device: str | None = None  # default: cuda:LOCAL_RANK if available, else cpu
    progress: bool = True

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise AdsrtError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("steps", "batch_size", "val_every", "val_samples", "ckpt_every", "log_every", "samples_per_epoch"):
            if getattr(self, name) < 1:
                raise AdsrtError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("snapshot_every", "workers"):
            if getattr(self, name) < 0:
                raise AdsrtError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.clean_fraction < 1.0:
            raise AdsrtError(f"clean_fraction must be in [0, 1), got {self.clean_fraction}")
        if self.loss == "psnr" and self.clean_fraction > 0:
            # 10 log10 MSE of a clean sample falls without bound as the output nears its input, and its
            # gradient (~1/MSE) drowns the degraded samples': the bundled UM so trained (clean_fraction 0.1,
            # 6,000 steps) stayed the identity, output PSNR = input PSNR on every degradation.
            raise AdsrtError("the psnr loss cannot train on clean samples (clean_fraction > 0): clean "
                             "samples make it learn the identity; use l1")
        if self.threads is not None and self.threads < 1:
            raise AdsrtError(f"threads must be >= 1, got {self.threads}")
        if not 0.0 < self.lr or self.min_lr < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise AdsrtError(f"bad lr/min_lr/ema_decay: {self.lr}, {self.min_lr}, {self.ema_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise AdsrtError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.backbone is not None and self.backbone not in BACKBONES:
            raise AdsrtError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")
        if self.backbone is None and self.init is None:
            raise AdsrtError("name a backbone or initial weights")


def class_specs(degradations: Sequence[str]) -> list[DegradationSpec]:
    """One spec per class; DegradationError for unknown names or bad levels."""
    if not degradations:
        raise AdsrtError("no degradations given")
    specs = []
    for text in degradations:
        parsed = parse_specs(text)
        if len(parsed) != 1:
            raise AdsrtError(f"{text!r}: one degradation per class (compose with 'mix', not '+')")
        specs.append(parsed[0])
    if len({s.name for s in specs}) != len(specs):
        raise AdsrtError(f"degradations repeat a name: {list(degradations)}")
    return specs


def split_datasets(
    folder: str, specs: Sequence[DegradationSpec], *, crop_size: int, samples_per_epoch: int,
    val_samples: int, val_fraction: float, seed: int, clean_fraction: float = 0.0,
    nuisance: NuisanceConfig | None = None, crop_range: tuple[int, int] | None = None, dim_weather: float = 0.0,
) -> tuple[DegradedImageDataset, DegradedImageDataset]:
    """Training and validation datasets over one decoded folder.

    With at least 5 images, ``val_fraction`` of them (at least one, every n-th by name) is held out
    entirely; with fewer, validation uses the same images but crops and degradations drawn from a
    different fixed seed (logged, since it measures fit more than generalization).
    """
    full = DegradedImageDataset(folder, specs, crop_size=crop_size, samples_per_epoch=samples_per_epoch,
                                clean_fraction=clean_fraction, nuisance=nuisance, crop_range=crop_range,
                                dim_weather=dim_weather, seed=seed)
    n = len(full.images)
    train, val = full, copy.copy(full)
    if n >= 5 and val_fraction > 0:
        n_val = max(1, round(n * val_fraction))
        val_idx = set(range(0, n, max(1, n // n_val))[:n_val])
        train = copy.copy(full)
        train.paths = [p for i, p in enumerate(full.paths) if i not in val_idx]
        train.images = [im for i, im in enumerate(full.images) if i not in val_idx]
        val.paths = [p for i, p in enumerate(full.paths) if i in val_idx]
        val.images = [im for i, im in enumerate(full.images) if i in val_idx]
    else:
        log.warning("%s: only %d images, so validation crops come from the training images (other seed)", folder, n)
    val.samples_per_epoch = val_samples
    val.seed = seed + VAL_SEED_OFFSET
    val.set_epoch(0)
    return train, val


class WeightEMA:
    """Exponential moving average of a model's floating-point state (params and buffers)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm up the decay so a short run (or the first steps) is not dominated by the random init.
        d = min(self.decay, (1 + step) / (10 + step))
        floats, sources = [], []
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.is_floating_point():
                floats.append(e)
                sources.append(p.detach())
            else:
                e.copy_(p)
        torch._foreach_lerp_(floats, sources, 1.0 - d)  # one fused call instead of one lerp per tensor


def restoration_loss(output: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L1, or the PSNR loss (mean over images of 10 log10 MSE: minimizing it maximizes mean PSNR)."""
    if kind == "l1":
        return F.l1_loss(output, target)
    mse = (output.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(mse + 1e-8).mean()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], names: Sequence[str],
             device: torch.device) -> dict[str, Any]:
    """Mean PSNR of the input and of the model's output, overall and per degradation label."""
    was_training = model.training
    model.eval()
    inputs, outputs, labels = [], [], []
    for batch in batches:
        x, y = batch["input"].to(device), batch["target"].to(device)
        inputs.append(batch_psnr(x, y).cpu())
        outputs.append(batch_psnr(model(x), y).cpu())
        labels.append(batch["label"])
    model.train(was_training)
    psnr_in, psnr_out, label = torch.cat(inputs), torch.cat(outputs), torch.cat(labels)
    per = {}
    for i, name in enumerate(names):
        sel = label == i
        if sel.any():
            per[name] = {"input": float(psnr_in[sel].mean()), "output": float(psnr_out[sel].mean()), "n": int(sel.sum())}
    return {"psnr": float(psnr_out.mean()), "input_psnr": float(psnr_in.mean()), "n": len(label), "per_degradation": per}


def fixed_batches(dataset: DegradedImageDataset, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Materialize a fixed-seed dataset once (validation and FAIG reuse the same crops every time)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return [{k: v for k, v in b.items() if isinstance(v, torch.Tensor)} for b in loader]


def cosine_lr(step: int, total: int, lr: float, *, warmup: int = 0, min_lr: float = 0.0) -> float:
    """Learning rate at ``step`` of ``total``: linear warmup, then cosine decay from ``lr`` to ``min_lr``.

    A pure function of the step, so a resumed run needs no scheduler state. Shared by every training loop.
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def adamw(params, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one call per step for all parameters: ~3x faster than the per-tensor
    foreach path for a small model on a CPU); the foreach path where the fused one is unavailable."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, with every per-parameter tensor given its parameter's memory layout.

    A checkpoint stores tensors contiguous, so a channels_last run gets its moments back in NCHW order;
    the fused AdamW kernel walks a parameter and its moments in memory order, so mismatched layouts
    would pair the wrong elements (measured: 1e-3 off after one resumed step). Same layout, same bits.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _initial_model(cfg: TrainerConfig) -> tuple[NAFNet, NAFNetConfig]:
    if cfg.init is None:
        config = BACKBONES[cfg.backbone]
        return build_backbone(config), config
    config, state, _ = load_backbone_weights(cfg.init)
    if cfg.backbone is not None and BACKBONES[cfg.backbone] != config:
        raise AdsrtError(f"{cfg.init}: weights of backbone {config.to_dict()}, but {cfg.backbone!r} was asked for")
    model = build_backbone(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AdsrtError(f"{cfg.init}: weights do not fit the backbone named in their header: {exc}") from exc
    return model, config


def _check_finite(loss: torch.Tensor, step: int, env: distributed.DistEnv) -> None:
    """AdsrtError on a non-finite loss, raised by every rank together under DDP.

    Under DDP the ranks agree first (one tiny all-reduce per step): a rank that raised alone would leave
    the others waiting in the gradient all-reduce until the process-group timeout. One process: no
    communication, it raises at the first non-finite loss.
    """
    if not env.distributed:
        if not bool(torch.isfinite(loss)):
            raise AdsrtError(f"loss became {float(loss)} at step {step}; lower the learning rate")
        return
    bad = distributed.flagged_ranks(~torch.isfinite(loss.detach()), env)  # the step's one host sync
    if bad:
        here = f", {float(loss)} here" if env.rank in bad else ""
        raise AdsrtError(f"loss became non-finite at step {step} on rank(s) {', '.join(map(str, bad))} of "
                         f"{env.world_size} (rank {env.rank}{here}); lower the learning rate")


StepCallback = Callable[[int, float], None]
# Called with the name of each part of a training step as it ends ("data", "forward", "backward",
# "optimizer"): how adsrt.bench.training splits a step's time. None in normal runs.
PhaseHook = Callable[[str], None]


def _save_snapshot(out: Path, step: int, ema: WeightEMA, header: dict[str, Any]) -> None:
    save_weights(out / "snapshots" / f"step_{step:07d}.safetensors", ema.model.state_dict(),
                 {**header, "step": step, "snapshot": True})


def run_training(cfg: TrainerConfig, *, kind: str = "um", callback: StepCallback | None = None,
                 phase: PhaseHook | None = None) -> dict[str, Any]:
    """Train (or resume) one restorer; returns the final validation metrics. See the module doc."""
    cfg.check()
    specs = class_specs(cfg.degradations)
    names = [str(s) for s in specs]
    env = distributed.setup(cfg.device)
    plan = plan_compute(env.device, threads=cfg.threads, channels_last=cfg.channels_last, amp=cfg.amp,
                        cpu_bf16=cfg.cpu_bf16, compile=cfg.compile)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    world_batch = cfg.batch_size * env.world_size
    train_set, val_set = split_datasets(
        cfg.data, specs, crop_size=cfg.crop_size, samples_per_epoch=max(cfg.samples_per_epoch, world_batch),
        val_samples=cfg.val_samples, val_fraction=cfg.val_fraction, seed=cfg.seed, clean_fraction=cfg.clean_fraction)
    val_set.clean_fraction = 0.0  # validation measures restoration: an identity sample would score 100 dB
    model, config = _initial_model(cfg)
    prepare_model(model, plan).train()
    ema = WeightEMA(model, cfg.ema_decay)
    optimizer = adamw(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=plan.autocast_dtype == torch.float16)

    step, elapsed, ckpt_path = 0, 0.0, out / CHECKPOINT
    header = {"kind": kind, "backbone": config.to_dict(), "backbone_name": cfg.backbone, "degradations": names,
              "init": cfg.init, "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    # What maps a step to its samples: a resume with other values would train on other data than it claims.
    data_key = {"batch_size": cfg.batch_size, "world_size": env.world_size, "seed": cfg.seed,
                "crop_size": cfg.crop_size, "samples_per_epoch": len(train_set), "images": len(train_set.images),
                **({"clean_fraction": cfg.clean_fraction} if cfg.clean_fraction else {})}
    running = {"sum": 0.0, "n": 0}  # the loss mean of the next log row (checkpointed: rows read the same)
    resumed = cfg.resume and ckpt_path.is_file()
    if resumed:
        state = load_checkpoint(ckpt_path)
        if state.get("backbone") != config.to_dict() or state.get("degradations") != names:
            raise AdsrtError(f"{ckpt_path}: checkpoint of another run (backbone or degradations differ); "
                             "use another --out or --no-resume")
        if state.get("data") != data_key:
            raise AdsrtError(f"{ckpt_path}: checkpoint of a run with other data settings ({state.get('data')}, now "
                             f"{data_key}); use the same ones, another --out, or --no-resume")
        if state.get("steps") not in (None, cfg.steps):
            log.warning("%s: the run was planned for %s steps, now %d: the cosine schedule changes from here",
                        ckpt_path, state["steps"], cfg.steps)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        load_optimizer_state(optimizer, state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        running.update(state["running_loss"])
        log.info("%s: resuming from step %d (%.0f s trained)", ckpt_path, step, elapsed)
    log.info("%s: %s", kind, plan.describe())
    curve = StageLog(out / "log.csv", CSV_FIELDS, resume_step=step if resumed else None, elapsed=elapsed,
                     write=env.is_main)

    val_batches = fixed_batches(val_set, cfg.batch_size) if env.is_main else []
    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    compiled = CompiledStep(net, plan.compile)

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "step": step, "steps": cfg.steps, "elapsed": curve.seconds(), "model": model.state_dict(),
            "ema": ema.model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": rng_state(),
            "backbone": config.to_dict(), "degradations": names, "data": data_key, "running_loss": dict(running),
        })

    metrics: dict[str, Any] = {}
    if env.is_main and step == 0:
        metrics = evaluate(ema.model, val_batches, names, env.device)
        log.info("start: val PSNR input %.2f dB, model %.2f dB", metrics["input_psnr"], metrics["psnr"])

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {kind}", unit="step",
               disable=not (env.is_main and cfg.progress))
    batches = step_batches(train_set, cfg.batch_size, steps=cfg.steps, start=step, seed=cfg.seed, rank=env.rank,
                           world_size=env.world_size, workers=cfg.workers, pin_memory=env.device.type == "cuda")
    batches_per_epoch = len(train_set) // world_batch
    # closing: an exception (a stop, a NaN) shuts the loader's workers down now, not when the frame is freed.
    with StopSignal(enabled=not env.distributed) as stop, contextlib.closing(batches), contextlib.closing(bar):
        for step, batch in batches:
            if phase:
                phase("data")
            lr = cosine_lr(step, cfg.steps, cfg.lr, warmup=cfg.warmup_steps, min_lr=cfg.min_lr)
            set_lr(optimizer, lr)
            x, y = plan.to_input(batch["input"]), plan.to_input(batch["target"])

            def forward_backward(module: nn.Module, x=x, y=y, step=step) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                with plan.autocast():
                    output = module(x)
                loss = restoration_loss(output.float(), y, cfg.loss)
                if phase:
                    phase("forward")
                _check_finite(loss, step, env)
                scaler.scale(loss).backward()
                if phase:
                    phase("backward")
                return loss

            loss = compiled(forward_backward)
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            ema.update(model, step)
            if phase:
                phase("optimizer")
            step += 1
            running["sum"], running["n"] = running["sum"] + float(loss.detach()), running["n"] + 1
            bar.update(1)
            bar.set_postfix(loss=f"{running['sum'] / running['n']:.4f}")
            last = step >= cfg.steps
            val_due = step % cfg.val_every == 0 or last
            if env.is_main and (step % cfg.log_every == 0 or val_due):
                row: dict[str, Any] = {"step": step, "epoch": (step - 1) // batches_per_epoch, "lr": f"{lr:.3e}",
                                       "loss": f"{running['sum'] / running['n']:.6f}"}
                running.update(sum=0.0, n=0)
                if val_due:
                    metrics = evaluate(ema.model, val_batches, names, env.device)
                    row.update(val_psnr=f"{metrics['psnr']:.4f}", val_input_psnr=f"{metrics['input_psnr']:.4f}")
                    log.info("step %d: val PSNR %.2f dB (input %.2f dB)", step, metrics["psnr"], metrics["input_psnr"])
                curve.write(row)
            if env.is_main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                _save_snapshot(out, step, ema, header)
            if env.is_main and (step % cfg.ckpt_every == 0 or last or stop.requested):
                save(step)
            if not last:
                stop.check(f"train {kind}", step, ckpt_path)
            if callback is not None:
                callback(step, float(loss.detach()))

    if env.is_main:
        if not metrics:
            metrics = evaluate(ema.model, val_batches, names, env.device)
        metrics = {**metrics, "step": step}
        write_json(out / "metrics.json", metrics)
        # compile: whether it really ran compiled (False after a fallback to eager).
        header.update(step=step, seconds=round(curve.seconds(), 1),
                      compute={**plan.to_dict(), "compile": compiled.compiled},
                      first_step_seconds=compiled.first_step_seconds)
        save_weights(out / "model.safetensors", ema.model.state_dict(), {**header, "val": metrics})
        log.info("%s: wrote %s (val PSNR %.2f dB, input %.2f dB)", kind, out / "model.safetensors",
                 metrics["psnr"], metrics["input_psnr"])
    distributed.barrier()
    return metrics
