"""The restorer trainer behind ``adsrt train um`` and ``adsrt train target``.

One loop for both stages: the UM trains from scratch on a mix of degradations, a target (IM) fine-tunes
a copy of the UM on one degradation. The loop has AdamW with a linear warmup and a cosine decay
(computed from the step, so resuming needs no scheduler state), an EMA of the weights (what gets
validated and exported), mixed precision on CUDA only, periodic validation PSNR on held-out crops drawn
with a fixed seed, atomic checkpoints (``last.pt``), resume from the last checkpoint, a tqdm bar and a
CSV of the loss curve.

Under ``torchrun`` the model is wrapped in DDP (gloo on the CPU, nccl on CUDA) and every rank reads its
own shard of each epoch's sample indices; the dataset draws crops and degradations from
(seed, epoch, index), so shards never overlap and a resumed run sees exactly the batches it would have
seen. Only rank 0 validates and writes files.

Output folder: ``last.pt`` (checkpoint), ``model.safetensors`` (EMA weights + header, written last: its
presence means the stage is done), ``log.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from adsrt.arch import BACKBONES, NAFNet, NAFNetConfig, build_backbone
from adsrt.errors import AdsrtError
from adsrt.fileio import atomic_write_bytes, write_json
from adsrt.metrics import batch_psnr
from adsrt.train import distributed
from adsrt.train.checkpoint import load_backbone_weights, load_checkpoint, save_checkpoint, save_weights
from adsrt.train.data import DegradedImageDataset
from adsrt.train.degradations import DegradationSpec, parse_specs

log = logging.getLogger(__name__)

LOSSES = ("l1", "psnr")
CSV_FIELDS = ("step", "epoch", "lr", "loss", "val_psnr", "val_input_psnr", "seconds")
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
    amp: bool = True  # only ever used on CUDA
    samples_per_epoch: int = 2048
    val_every: int = 1000
    val_samples: int = 64
    val_fraction: float = 0.1  # of the images held out for validation (needs >= 5 images)
    ckpt_every: int = 500
    log_every: int = 10
    workers: int = 2
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
) -> tuple[DegradedImageDataset, DegradedImageDataset]:
    """Training and validation datasets over one decoded folder.

    With at least 5 images, ``val_fraction`` of them (at least one, every n-th by name) is held out
    entirely; with fewer, validation uses the same images but crops and degradations drawn from a
    different fixed seed (logged, since it measures fit more than generalization).
    """
    full = DegradedImageDataset(folder, specs, crop_size=crop_size, samples_per_epoch=samples_per_epoch,
                                clean_fraction=clean_fraction, seed=seed)
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


class ShardSampler(Sampler[int]):
    """Per-epoch shuffled indices, split into equal contiguous shards per rank; can skip a prefix."""

    def __init__(self, n: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.rank, self.world_size, self.seed = n, rank, world_size, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _shard(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.world_size
        return perm[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.skip :])

    def __len__(self) -> int:
        return max(0, self.n // self.world_size - self.skip)


class WeightEMA:
    """Exponential moving average of a model's floating-point state (params and buffers)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm up the decay so a short run (or the first steps) is not dominated by the random init.
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.is_floating_point():
                e.lerp_(p.detach(), 1.0 - d)
            else:
                e.copy_(p)


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


def scheduled_batches(loader, dataset, optimizer: torch.optim.Optimizer, steps: int,
                      lr: float) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(step, batch)`` for ``steps`` optimizer steps, epoch after epoch (``dataset.set_epoch`` draws each
    epoch's crops and degradations), the learning rate set by :func:`cosine_lr` before each step. The short
    loops (classifier, delta refinement) use it; the restorer loop adds resume and DDP around the same idea."""
    step, epoch = 0, 0
    while step < steps:
        dataset.set_epoch(epoch)
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, steps, lr)
            yield step, batch
            step += 1
            if step >= steps:
                return
        epoch += 1


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


def _trim_csv(path: Path, last_step: int) -> None:
    """On resume, drop log rows past the checkpoint (they will be trained again)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= last_step]
    lines = [",".join(CSV_FIELDS)] + [",".join(r.get(k, "") for k in CSV_FIELDS) for r in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


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


def run_training(cfg: TrainerConfig, *, kind: str = "um", callback: StepCallback | None = None) -> dict[str, Any]:
    """Train (or resume) one restorer; returns the final validation metrics. See the module doc."""
    cfg.check()
    specs = class_specs(cfg.degradations)
    names = [str(s) for s in specs]
    env = distributed.setup(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    world_batch = cfg.batch_size * env.world_size
    train_set, val_set = split_datasets(
        cfg.data, specs, crop_size=cfg.crop_size, samples_per_epoch=max(cfg.samples_per_epoch, world_batch),
        val_samples=cfg.val_samples, val_fraction=cfg.val_fraction, seed=cfg.seed)
    model, config = _initial_model(cfg)
    model.to(env.device).train()
    ema = WeightEMA(model, cfg.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and env.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, ckpt_path, csv_path = 0, out / "last.pt", out / "log.csv"
    header = {"kind": kind, "backbone": config.to_dict(), "backbone_name": cfg.backbone, "degradations": names,
              "init": cfg.init, "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    if cfg.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=env.device)
        if state.get("backbone") != config.to_dict() or state.get("degradations") != names:
            raise AdsrtError(f"{ckpt_path}: checkpoint of another run (backbone or degradations differ); "
                             "use another --out or --no-resume")
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        log.info("%s: resuming from step %d", ckpt_path, step)
        if env.is_main:
            _trim_csv(csv_path, step)
    elif env.is_main and csv_path.exists():
        csv_path.unlink()

    val_batches = fixed_batches(val_set, cfg.batch_size) if env.is_main else []
    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    sampler = ShardSampler(len(train_set), env.rank, env.world_size, cfg.seed)
    batches_per_epoch = len(train_set) // world_batch

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "step": step, "model": model.state_dict(), "ema": ema.model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "backbone": config.to_dict(), "degradations": names,
        })

    if env.is_main and not csv_path.exists():
        csv_path.write_text(",".join(CSV_FIELDS) + "\n")
    metrics: dict[str, Any] = {}
    if env.is_main and step == 0:
        metrics = evaluate(ema.model, val_batches, names, env.device)
        log.info("start: val PSNR input %.2f dB, model %.2f dB", metrics["input_psnr"], metrics["psnr"])

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {kind}", unit="step",
               disable=not (env.is_main and cfg.progress))
    t0, loss_sum, loss_n = time.perf_counter(), 0.0, 0
    while step < cfg.steps:
        epoch, offset = divmod(step, batches_per_epoch)
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, skip=offset * cfg.batch_size)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            drop_last=True, pin_memory=env.device.type == "cuda")
        for batch in loader:
            lr = cosine_lr(step, cfg.steps, cfg.lr, warmup=cfg.warmup_steps, min_lr=cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = batch["input"].to(env.device, non_blocking=True)
            y = batch["target"].to(env.device, non_blocking=True)
            with torch.autocast(env.device.type, dtype=amp_dtype, enabled=use_amp):
                output = net(x)
            loss = restoration_loss(output.float(), y, cfg.loss)
            _check_finite(loss, step, env)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            ema.update(model, step)
            step += 1
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}")
            last = step >= cfg.steps
            val_due = step % cfg.val_every == 0 or last
            if env.is_main and (step % cfg.log_every == 0 or val_due):
                row: dict[str, Any] = {"step": step, "epoch": epoch, "lr": f"{lr:.3e}",
                                       "loss": f"{loss_sum / loss_n:.6f}", "seconds": f"{time.perf_counter() - t0:.1f}"}
                loss_sum, loss_n = 0.0, 0
                if val_due:
                    metrics = evaluate(ema.model, val_batches, names, env.device)
                    row.update(val_psnr=f"{metrics['psnr']:.4f}", val_input_psnr=f"{metrics['input_psnr']:.4f}")
                    log.info("step %d: val PSNR %.2f dB (input %.2f dB)", step, metrics["psnr"], metrics["input_psnr"])
                with csv_path.open("a", newline="") as fh:
                    csv.DictWriter(fh, CSV_FIELDS).writerow(row)
            if env.is_main and (step % cfg.ckpt_every == 0 or last):
                save(step)
            if callback is not None:
                callback(step, float(loss.detach()))
            if last:
                break
    bar.close()

    if env.is_main:
        if not metrics:
            metrics = evaluate(ema.model, val_batches, names, env.device)
        metrics = {**metrics, "step": step}
        write_json(out / "metrics.json", metrics)
        save_weights(out / "model.safetensors", ema.model.state_dict(), {**header, "step": step, "val": metrics})
        log.info("%s: wrote %s (val PSNR %.2f dB, input %.2f dB)", kind, out / "model.safetensors",
                 metrics["psnr"], metrics["input_psnr"])
    distributed.barrier()
    return metrics

