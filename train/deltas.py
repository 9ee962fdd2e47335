"""Stage 4: the sparse per-degradation deltas, ``delta_d = (theta_d - theta_um)`` on the masked units.

Optionally refined: starting from that difference, only the masked units are trained on d while the
UM stays frozen. The delta values are the only parameters (the layer weight is
``W_um + scatter(delta)``, evaluated with ``torch.func.functional_call``), so nothing outside the
mask can move, not even through weight decay or optimizer momentum. The refined delta is kept only
when it beats the plain difference on the held-out crops (both numbers are recorded).

Output (safetensors): ``ads/<layer>/units`` (int64, sorted) and ``ads/<layer>/delta`` (float32
``[n, unit_numel]``) per layer with masked units, and a JSON header with the validation PSNR of
the input, the UM, UM + delta ("ads", the oracle one-hot blend) and the target (IM).

The refinement resumes: ``<out stem>.checkpoint.safetensors`` every ``ckpt_every`` steps (and on SIGTERM),
its loss curve in ``<out stem>.log.csv``; both are removed once the output is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch.func import functional_call

from adsrt.ads import GRANULARITIES, LayerDelta, UnitLayout, extract_delta, unit_layouts
from adsrt.arch import NAFNet, build_backbone
from adsrt.errors import AdsrtError
from adsrt.fileio import atomic_write_bytes, file_sha256
from adsrt.metrics import batch_psnr
from adsrt.train import distributed
from adsrt.train.batches import step_batches
from adsrt.train.checkpoint import (
    METADATA_KEY,
    check_same_architecture,
    load_backbone_weights,
    load_run_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from adsrt.train.compute import plan_compute
from adsrt.train.degradations import DegradationSpec
from adsrt.train.progress import StageLog, StopSignal, beside
from adsrt.train.select import load_selection
from adsrt.train.trainer import (
    adamw,
    class_specs,
    cosine_lr,
    fixed_batches,
    load_optimizer_state,
    restoration_loss,
    set_lr,
    split_datasets,
)

CSV_FIELDS = ("step", "lr", "loss", "seconds")

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DeltasConfig:
    um: str
    target: str
    masks: str  # a selection file from ``adsrt train select``
    out: str  # output .safetensors
    data: str | None = None  # clean photos: needed for refining and for the validation numbers
    refine_steps: int = 0  # 0 = the plain difference
    batch_size: int = 8
    crop_size: int = 128
    lr: float = 1e-4
    loss: str = "l1"
    val_samples: int = 32
    val_fraction: float = 0.1
    ckpt_every: int = 100
    threads: int | None = None  # see adsrt.train.compute
    seed: int = 0
    resume: bool = True
    device: str | None = None


def masked_weights(um: Mapping[str, torch.Tensor], layouts: Mapping[str, UnitLayout],
                   offsets: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``W_um + scatter(delta)`` for every layer with masked units (differentiable in ``values``)."""
    return {n: um[n].reshape(-1).index_add(0, offsets[n], values[n].reshape(-1)).view(layouts[n].shape)
            for n in values}


@torch.no_grad()
def _mean_psnr(model: NAFNet, weights: Mapping[str, torch.Tensor] | None, batches: Sequence[dict[str, torch.Tensor]],
          device: torch.device) -> float:
    vals = []
    for b in batches:
        x, y = b["input"].to(device), b["target"].to(device)
        out = model(x) if weights is None else functional_call(model, dict(weights), (x,))
        vals.append(batch_psnr(out, y).cpu())
    return float(torch.cat(vals).mean())


def save_deltas(path: str | Path, deltas: Mapping[str, LayerDelta], header: dict[str, Any]) -> Path:
    tensors = {}
    for layer, d in deltas.items():
        tensors[f"ads/{layer}/units"] = d.units.to(torch.int64).contiguous()
        tensors[f"ads/{layer}/delta"] = d.values.float().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(header, allow_nan=False)}))
    return path


def load_deltas(path: str | Path) -> tuple[dict[str, LayerDelta], dict[str, Any]]:
    tensors, header = load_weights(path)
    if header.get("kind") != "deltas":
        raise AdsrtError(f"{path}: not a delta file (kind {header.get('kind')!r})")
    layers = {k[len("ads/"): -len("/units")] for k in tensors if k.startswith("ads/") and k.endswith("/units")}
    return {n: LayerDelta(units=tensors[f"ads/{n}/units"], values=tensors[f"ads/{n}/delta"]) for n in layers}, header


def build_deltas(cfg: DeltasConfig) -> dict[str, Any]:
    """Extract (and optionally refine) the delta of one degradation; write ``cfg.out``. Returns the header."""
    um_config, um_state, _ = load_backbone_weights(cfg.um)
    t_config, t_state, _ = load_backbone_weights(cfg.target)
    check_same_architecture((um_config, um_state), (t_config, t_state), f"target {cfg.target}")
    _, units, sel = load_selection(cfg.masks)
    if sel.get("backbone") != um_config.to_dict():
        raise AdsrtError(f"{cfg.masks}: masks of another backbone than the UM's")
    if sel.get("granularity") not in GRANULARITIES:
        raise AdsrtError(f"{cfg.masks}: bad granularity {sel.get('granularity')!r}")
    if cfg.refine_steps < 0:
        raise AdsrtError(f"refine_steps must be >= 0, got {cfg.refine_steps}")
    spec = class_specs([sel["spec"]])[0]
    model = build_backbone(um_config)
    layouts = unit_layouts(model, sel["granularity"])
    unknown = sorted(units.keys() - layouts.keys())
    if unknown:
        raise AdsrtError(f"{cfg.masks}: layers the UM does not have: {unknown[:3]}")
    deltas = {n: extract_delta(layouts[n], um_state[n], t_state[n], u) for n, u in units.items()}

    header: dict[str, Any] = {
        "kind": "deltas", "degradation": sel["degradation"], "spec": sel["spec"], "selector": sel["selector"],
        "q": sel["q"], "granularity": sel["granularity"], "backbone": um_config.to_dict(),
        "masked_units": sum(len(d.units) for d in deltas.values()),
        "delta_params": sum(d.n_params for d in deltas.values()), "refined": False, "config": asdict(cfg),
    }
    if cfg.data is not None:
        header["val"], deltas = _measure_and_refine(cfg, spec, model, um_state, t_state, layouts, deltas, header)
    elif cfg.refine_steps:
        raise AdsrtError("refining the deltas needs --data (clean photos)")
    save_deltas(cfg.out, deltas, header)
    for role in ("checkpoint", "log"):
        beside(cfg.out, role).unlink(missing_ok=True)
    log.info("%s: delta on %d units (%d values) -> %s", header["degradation"], header["masked_units"],
             header["delta_params"], cfg.out)
    return header


def _measure_and_refine(
    cfg: DeltasConfig, spec: DegradationSpec, model: NAFNet, um_state: dict[str, torch.Tensor],
    t_state: dict[str, torch.Tensor], layouts: dict[str, UnitLayout], deltas: dict[str, LayerDelta],
    header: dict[str, Any],
) -> tuple[dict[str, float], dict[str, LayerDelta]]:
    """Validation PSNR of input / UM / UM + delta / IM on held-out crops of d, and the optional refinement."""
    device = distributed.setup(cfg.device).device
    plan_compute(device, threads=cfg.threads, channels_last=False)
    torch.manual_seed(cfg.seed)
    train_set, val_set = split_datasets(cfg.data, [spec], crop_size=cfg.crop_size, samples_per_epoch=1024,
                                        val_samples=cfg.val_samples, val_fraction=cfg.val_fraction, seed=cfg.seed)
    val = fixed_batches(val_set, cfg.batch_size)
    model = model.to(device).eval().requires_grad_(False)
    um = {k: v.float().to(device) for k, v in um_state.items()}
    offsets = {n: layouts[n].element_offsets(d.units).reshape(-1).to(device) for n, d in deltas.items()}
    values = {n: d.values.to(device) for n, d in deltas.items()}

    model.load_state_dict(t_state)
    im = _mean_psnr(model, None, val, device)
    model.load_state_dict(um_state)
    metrics = {"input": float(torch.cat([batch_psnr(b["input"], b["target"]) for b in val]).mean()),
               "um": _mean_psnr(model, None, val, device), "im": im,
               "ads": _mean_psnr(model, masked_weights(um, layouts, offsets, values), val, device)}
    if not cfg.refine_steps:
        return metrics, deltas

    params = {n: v.clone().requires_grad_(True) for n, v in values.items()}
    optimizer = adamw(params.values(), lr=cfg.lr, weight_decay=0.0)
    ckpt_path, step, elapsed = beside(cfg.out, "checkpoint"), 0, 0.0
    # The inputs by content (the work folder may have moved) and every setting the remaining steps depend on.
    run_key = {"spec": str(spec), "um": file_sha256(cfg.um), "target": file_sha256(cfg.target),
               "masks": file_sha256(cfg.masks), "shapes": {n: list(v.shape) for n, v in values.items()},
               **{k: getattr(cfg, k) for k in ("refine_steps", "batch_size", "crop_size", "lr", "loss", "seed")}}
    resumed = cfg.resume and ckpt_path.is_file()
    if resumed:
        state = load_run_checkpoint(ckpt_path, run_key, "refinement")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["params"][n])
        load_optimizer_state(optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        step, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        log.info("%s: resuming the refinement from step %d", ckpt_path, step)
    curve = StageLog(beside(cfg.out, "log"), CSV_FIELDS, resume_step=step if resumed else None, elapsed=elapsed)

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, {"step": step, "steps": cfg.refine_steps, "elapsed": curve.seconds(),
                                    "key": run_key, "params": {n: p.detach() for n, p in params.items()},
                                    "optimizer": optimizer.state_dict(), "rng": rng_state()})

    batches = step_batches(train_set, cfg.batch_size, steps=cfg.refine_steps, start=step, seed=cfg.seed)
    with StopSignal() as stop, contextlib.closing(batches):
        for step, b in batches:
            lr = cosine_lr(step, cfg.refine_steps, cfg.lr)
            set_lr(optimizer, lr)
            x, y = b["input"].to(device), b["target"].to(device)
            loss = restoration_loss(functional_call(model, masked_weights(um, layouts, offsets, params), (x,)), y, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            last = step >= cfg.refine_steps
            if step % 10 == 0 or last:
                curve.write({"step": step, "lr": f"{lr:.3e}", "loss": f"{float(loss.detach()):.5f}"})
            if step % cfg.ckpt_every == 0 or last or stop.requested:
                save(step)
            if not last:
                stop.check(f"refine {spec}", step, ckpt_path)
    refined = _mean_psnr(model, masked_weights(um, layouts, offsets, params), val, device)
    metrics["ads_unrefined"] = metrics["ads"]
    if refined > metrics["ads"]:
        metrics["ads"] = refined
        header["refined"] = True
        deltas = {n: LayerDelta(units=d.units, values=params[n].detach().cpu().float()) for n, d in deltas.items()}
    else:
        log.info("%s: refining did not help on the held-out crops (%.2f vs %.2f dB); keeping the plain delta",
                 spec, refined, metrics["ads"])
    metrics["ads_refined"] = refined
    return metrics, deltas
