"""Stage 3: choose the units (kernel slices or filters) that matter most for one degradation.

Selectors, all at the same budget (q of the eligible weight values by default, see below):

- ``faig`` (FAIG-SD, the method): along the straight path
  ``lambda(alpha_t) = alpha_t * theta_um + (1 - alpha_t) * theta_d``, ``alpha_t = t / N`` for t = 0..N-1,
  accumulate the gradient of the restoration loss on degraded images of d; the score of a weight is
  ``|(theta_d - theta_um) * (1/N) * sum_t dL/dlambda(alpha_t)|``, summed over the values of each unit.
  Units of all eligible layers are ranked together (global top-q).
- ``random``: a seeded random ranking (the ablation's floor).
- ``encoder``: the FAIG ranking restricted to the encoder half of the U-Net (``intro``, ``encoders.*``,
  ``downs.*``). Reading of the paper's "encoder" ablation: adapt only the part that sees the degraded
  input first, as encoder-conditioned all-in-one methods (AirNet-style) do, with the same number of
  units; if the encoder holds fewer eligible units than the budget, all of them are taken (logged).
- ``absdiff``: ``|theta_d - theta_um|`` summed per unit (how far fine-tuning moved the unit).

Budget. ``budget="params"`` (the default) takes units in score order while their values fit in q of
the eligible weight values, so a degradation's delta costs at most q of the parameters.
``budget="units"`` takes ``round(q * eligible units)`` units, the paper's convention; units differ in
size (a 1x1 kernel slice has 1 value, a depthwise 3x3 one 9) and summed scores favour the big ones, so
there the delta holds more than q of the parameters (5.4% at q = 3% for nafnet-small). Measured in
``benchmarks/results/quality.md``: at equal parameters the two budgets are within 0.05 dB, so the
default keeps the promise "about q of the parameters per degradation".

FAIG resumes: after each of the N path points the gradient sum so far is checkpointed next to the output
(``<out stem>.checkpoint.safetensors``, removed once the output is written), so a stopped selection goes on
from the last finished point.

The result file (safetensors) holds ``score/<layer>`` (float32 per unit) for every eligible layer and
``units/<layer>`` (int64, sorted) for every layer with selected units, plus a JSON header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from adsrt.ads import GRANULARITIES, UnitLayout, unit_layouts
from adsrt.arch import NAFNetConfig, build_backbone
from adsrt.errors import AdsrtError, check_choice
from adsrt.fileio import atomic_write_bytes, file_sha256
from adsrt.train import distributed
from adsrt.train.checkpoint import (
    METADATA_KEY,
    check_same_architecture,
    load_backbone_weights,
    load_run_checkpoint,
    load_weights,
    save_checkpoint,
)
from adsrt.train.compute import plan_compute
from adsrt.train.data import DegradedImageDataset
from adsrt.train.progress import StopSignal, beside
from adsrt.train.trainer import LOSSES, class_specs, fixed_batches, restoration_loss

log = logging.getLogger(__name__)

SELECTORS = ("faig", "random", "encoder", "absdiff")
BUDGETS = ("units", "params")
ENCODER_PREFIXES = ("intro.", "encoders.", "downs.")
FAIG_SEED_OFFSET = 4241  # images for FAIG are drawn apart from training and validation crops


@dataclass(kw_only=True)
class SelectConfig:
    um: str  # UM model.safetensors
    target: str  # target (IM) model.safetensors of ``degradation``
    degradation: str  # name[:level]; images of it drive the FAIG gradients
    out: str  # output .safetensors
    data: str | None = None  # clean photos (needed by faig and encoder)
    selector: str = "faig"
    q: float = 0.03
    granularity: str = "kernel"
    budget: str = "params"  # params: at most q of the eligible weight values; units: round(q * eligible units)
    path_steps: int = 50  # N
    n_images: int = 16
    batch_size: int = 8
    crop_size: int = 128
    loss: str = "l1"
    threads: int | None = None  # see adsrt.train.compute
    seed: int = 0
    resume: bool = True
    device: str | None = None


def check_q(q: float) -> float:
    if not isinstance(q, (int, float)) or not 0.0 < q <= 0.5:
        raise AdsrtError(f"q must be in (0, 0.5] (a fraction of the eligible units, e.g. 0.03), got {q!r}")
    return float(q)


def unit_sums(values: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """Sum ``values`` (shaped like the layer's weight) over the elements of each unit: ``[n_units]``."""
    offsets = layout.element_offsets(torch.arange(layout.n_units, device=values.device))
    return values.reshape(-1)[offsets].sum(1)


def faig_scores(
    config: NAFNetConfig, um_state: Mapping[str, torch.Tensor], target_state: Mapping[str, torch.Tensor],
    batches: Sequence[dict[str, torch.Tensor]], granularity: str, *, path_steps: int = 50, loss: str = "l1",
    device: str | torch.device = "cpu", checkpoint: Path | None = None, run_key: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """FAIG-SD score of every unit of every eligible layer (float32, CPU).

    With ``checkpoint``, the gradient sum is saved there after every path point and a run whose
    checkpoint has the same ``run_key`` starts after the last saved point.
    """
    if path_steps < 1:
        raise AdsrtError(f"path_steps must be >= 1, got {path_steps}")
    if not batches:
        raise AdsrtError("FAIG needs at least one batch of degraded images")
    model = build_backbone(config).to(device).train()
    layouts = unit_layouts(model, granularity)
    params = dict(model.named_parameters())
    for name, p in params.items():
        # Gradients are needed for the eligible weights only; everything else is still interpolated.
        p.requires_grad_(name in layouts)
    um = {k: v.detach().float().to(device) for k, v in um_state.items()}
    tg = {k: v.detach().float().to(device) for k, v in target_state.items()}
    grad_sum = {name: torch.zeros_like(um[name]) for name in layouts}
    n_images = sum(len(b["input"]) for b in batches)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = load_run_checkpoint(checkpoint, run_key, "selection")
        if sorted(state["grad_sum"]) != sorted(grad_sum):
            raise AdsrtError(f"{checkpoint}: checkpoint of another selection (other layers); delete it")
        grad_sum = {n: g.to(device) for n, g in state["grad_sum"].items()}
        start = int(state["step"])
        log.info("%s: resuming FAIG after path point %d of %d", checkpoint, start, path_steps)
    stop = StopSignal() if checkpoint is not None else None
    with stop or contextlib.nullcontext():
        for t in range(start, path_steps):
            _faig_point(model, params, um, tg, layouts, grad_sum, batches, n_images, t / path_steps, loss, device)
            if checkpoint is not None:
                save_checkpoint(checkpoint, {"step": t + 1, "steps": path_steps, "key": run_key, "grad_sum": grad_sum})
                if t + 1 < path_steps:
                    stop.check("FAIG", t + 1, checkpoint)
    return {
        name: unit_sums(((tg[name] - um[name]) * grad_sum[name] / path_steps).abs(), layout).cpu()
        for name, layout in layouts.items()
    }


def _faig_point(model, params, um, tg, layouts, grad_sum, batches, n_images, alpha, loss, device) -> None:
    """Add the loss gradient at ``lambda(alpha) = alpha * theta_um + (1 - alpha) * theta_d`` to ``grad_sum``."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(alpha * um[name] + (1.0 - alpha) * tg[name])
    model.zero_grad(set_to_none=True)
    for b in batches:
        x, y = b["input"].to(device), b["target"].to(device)
        # Weighted by batch size so the gradient is that of the mean loss over all images.
        (restoration_loss(model(x), y, loss) * (len(x) / n_images)).backward()
    for name in layouts:
        grad_sum[name] += params[name].grad


def absdiff_scores(um_state: Mapping[str, torch.Tensor], target_state: Mapping[str, torch.Tensor],
                   layouts: Mapping[str, UnitLayout]) -> dict[str, torch.Tensor]:
    return {name: unit_sums((target_state[name].float() - um_state[name].float()).abs(), layout)
            for name, layout in layouts.items()}


def random_scores(layouts: Mapping[str, UnitLayout], seed: int, degradation: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(degradation.encode()))
    return {name: torch.rand(layout.n_units, generator=g) for name, layout in layouts.items()}


def top_q_units(scores: Mapping[str, torch.Tensor], q: float, allowed: Sequence[str] | None = None,
                unit_numel: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Global top-q over the ``allowed`` layers (default all), best score first.

    Without ``unit_numel`` the budget is ``round(q * all units)`` units (the paper's convention). With it,
    the budget is ``q`` of all eligible weight values: units are taken in score order while they fit,
    so the delta stays within q of the parameters even where unit sizes differ (1x1 vs 3x3 kernels).
    Returns sorted int64 unit indices per layer (layers without a selected unit are left out). Ties
    keep layer order and unit order (stable sort), so the result is deterministic.
    """
    check_q(q)
    names = [n for n in scores if allowed is None or n in allowed]
    flat = torch.cat([scores[n].reshape(-1).float() for n in names]) if names else torch.zeros(0)
    order = torch.sort(flat, descending=True, stable=True).indices
    if unit_numel is None:
        budget = max(1, round(q * sum(s.numel() for s in scores.values())))
        if budget > flat.numel():
            log.warning("only %d candidate units for a budget of %d: taking them all", flat.numel(), budget)
        order = order[:budget]
    else:
        sizes = torch.cat([torch.full((scores[n].numel(),), unit_numel[n], dtype=torch.int64) for n in names])
        budget = q * sum(s.numel() * unit_numel[n] for n, s in scores.items())
        fits = torch.cumsum(sizes[order], 0) <= budget
        order = order[fits] if bool(fits.any()) else order[:1]
    result, start = {}, 0
    for n in names:
        size = scores[n].numel()
        sel = order[(order >= start) & (order < start + size)] - start
        if len(sel):
            result[n] = torch.sort(sel).values.to(torch.int64)
        start += size
    return result


def encoder_layers(layouts: Mapping[str, UnitLayout]) -> list[str]:
    return [n for n in layouts if n.startswith(ENCODER_PREFIXES)]


def save_selection(path: str | Path, scores: Mapping[str, torch.Tensor], units: Mapping[str, torch.Tensor],
                   header: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save

    tensors = {f"score/{n}": s.float().contiguous() for n, s in scores.items()}
    tensors.update({f"units/{n}": u.to(torch.int64).contiguous() for n, u in units.items()})
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(header, allow_nan=False)}))
    return path


def load_selection(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(scores, units, header) of a file written by :func:`save_selection`."""
    tensors, header = load_weights(path)
    if header.get("kind") != "selection":
        raise AdsrtError(f"{path}: not a unit selection (kind {header.get('kind')!r})")
    scores = {k.removeprefix("score/"): v for k, v in tensors.items() if k.startswith("score/")}
    units = {k.removeprefix("units/"): v for k, v in tensors.items() if k.startswith("units/")}
    return scores, units, header


def run_select(cfg: SelectConfig) -> dict[str, Any]:
    """Score and select the units of one degradation; write them to ``cfg.out``. Returns the header."""
    for name, choices in (("selector", SELECTORS), ("granularity", GRANULARITIES), ("loss", LOSSES),
                          ("budget", BUDGETS)):
        check_choice(name, getattr(cfg, name), choices)
    check_q(cfg.q)
    spec = class_specs([cfg.degradation])[0]
    um_config, um_state, _ = load_backbone_weights(cfg.um)
    t_config, t_state, t_header = load_backbone_weights(cfg.target)
    check_same_architecture((um_config, um_state), (t_config, t_state), f"target {cfg.target}")
    if t_header.get("degradations") and t_header["degradations"] != [str(spec)]:
        log.warning("%s was fine-tuned on %s, not %s", cfg.target, t_header["degradations"], spec)
    layouts = unit_layouts(build_backbone(um_config), cfg.granularity)

    if cfg.selector in ("faig", "encoder"):
        if cfg.data is None:
            raise AdsrtError(f"the {cfg.selector} selector needs --data (images of {spec})")
        dataset = DegradedImageDataset(cfg.data, [spec], crop_size=cfg.crop_size, samples_per_epoch=cfg.n_images,
                                       seed=cfg.seed + FAIG_SEED_OFFSET)
        device = distributed.setup(cfg.device).device
        plan_compute(device, threads=cfg.threads, channels_last=False)
        ckpt = beside(cfg.out, "checkpoint")
        if not cfg.resume:
            ckpt.unlink(missing_ok=True)
        # What the gradient sum depends on (the weights by content: the work folder may have moved to another
        # machine since), so a checkpoint of any other selection is refused.
        key = {k: v for k, v in asdict(cfg).items()
               if k in ("degradation", "granularity", "path_steps", "n_images", "batch_size", "crop_size", "loss", "seed")}
        key.update(um=file_sha256(cfg.um), target=file_sha256(cfg.target))
        scores = faig_scores(um_config, um_state, t_state, fixed_batches(dataset, cfg.batch_size), cfg.granularity,
                             path_steps=cfg.path_steps, loss=cfg.loss, device=device, checkpoint=ckpt, run_key=key)
    elif cfg.selector == "absdiff":
        scores = absdiff_scores(um_state, t_state, layouts)
    else:
        scores = random_scores(layouts, cfg.seed, spec.name)
    units = top_q_units(scores, cfg.q, encoder_layers(layouts) if cfg.selector == "encoder" else None,
                        {n: layout.unit_numel for n, layout in layouts.items()} if cfg.budget == "params" else None)
    eligible = sum(layout.n_units for layout in layouts.values())
    header = {
        "kind": "selection", "degradation": spec.name, "spec": str(spec), "selector": cfg.selector, "q": cfg.q,
        "granularity": cfg.granularity, "budget": cfg.budget, "eligible_units": eligible,
        "selected_units": sum(len(u) for u in units.values()), "backbone": um_config.to_dict(),
        "config": asdict(cfg),
    }
    save_selection(cfg.out, scores, units, header)
    beside(cfg.out, "checkpoint").unlink(missing_ok=True)
    log.info("%s/%s: %d of %d units (%d layers) -> %s", spec.name, cfg.selector, header["selected_units"],
             eligible, len(units), cfg.out)
    return header
