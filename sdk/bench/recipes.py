"""The UM recipe study: which backbone, crop, loss and learning rate to train the next default model with.

The code of ``benchmarks/bench_recipes.py`` (a thin wrapper around :func:`main`):

    nice .venv/bin/python benchmarks/bench_recipes.py --train ../shared/data/train \\
        --eval ../shared/data/eval/cbsd68 --work runs/recipes --budget-minutes 12 --threads 1

Every recipe trains a UM on the six degradations for the same CPU budget: a probe of a few steps
measures its CPU seconds per step (process time, so a second job on the machine slows the wall clock, not
the budget), and the run gets ``budget / (seconds per step)`` steps of a full cosine schedule. EMA snapshots
at a quarter, half, three quarters and the end of the run are scored on the evaluation photos (each
degradation at its typical level, the first ``--eval-images`` photos, a centred ``--eval-crop`` px crop,
one generator per photo and degradation, PSNR on RGB in [0, 1]): the curve of PSNR against training
minutes. Each recipe's GMACs per 1280x720 frame come from :func:`adsrt.arch.cost.model_cost`.

Everything resumes: the runs from their checkpoints (``WORK/<recipe>/``), the scores from ``recipes.csv``
(a snapshot already scored is not scored again). Writes into --results: ``recipes.csv`` (one row per
recipe and snapshot) and ``recipes.png`` (PSNR against training minutes, and final PSNR against GMACs).
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adsrt.arch import BACKBONES, build_backbone
from adsrt.arch.cost import model_cost
from adsrt.bench.timing import Machine, comma_list
from adsrt.fileio import upsert_csv
from adsrt.imageio import list_images, read_image
from adsrt.metrics import psnr
from adsrt.train.checkpoint import load_backbone_weights
from adsrt.train.data import to_tensor
from adsrt.train.degradations import BASE_DEGRADATIONS, LEVELS, degrade, keyed_rng, parse_specs
from adsrt.train.um import UMConfig, train_um

log = logging.getLogger(__name__)

TYPICAL = tuple(f"{d}:{LEVELS[d].default:g}" for d in BASE_DEGRADATIONS)
COLUMNS = ("recipe", "backbone", "crop", "loss", "lr", "batch", "steps", "snapshot_step", "train_minutes",
           "budget_minutes", "cpu_s_per_step", "gmacs_720p", "params", *(f"psnr_{d}" for d in BASE_DEGRADATIONS),
           "psnr_mean", "eval_images", "eval_crop", "date", "device", "cpu", "threads", "torch")


@dataclass(frozen=True)
class Recipe:
    name: str
    backbone: str
    crop: int
    loss: str = "l1"
    lr: float = 1e-3
    batch: int = 16
    warmup: int = 0


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("small-64-l1", "nafnet-small", 64),  # the v1 default's recipe
    Recipe("small-128-l1", "nafnet-small", 128),
    Recipe("small-128-psnr", "nafnet-small", 128, loss="psnr"),
    Recipe("small-128-l1-lr2e-3", "nafnet-small", 128, lr=2e-3, warmup=200),
    Recipe("edge-128-l1", "nafnet-edge", 128),
    Recipe("small-64-psnr", "nafnet-small", 64, loss="psnr"),
    Recipe("small-64-l1-lr2e-3", "nafnet-small", 64, lr=2e-3, warmup=200),
)}


@dataclass(frozen=True)
class StudyConfig:
    train: str
    eval: str
    work: str
    results: Path
    recipes: tuple[str, ...] = tuple(RECIPES)
    budget_minutes: float = 12.0
    threads: int = 1
    probe_steps: int = 12
    eval_images: int = 12
    eval_crop: int = 256
    seed: int = 0


def _um_config(cfg: StudyConfig, r: Recipe, out: Path, steps: int, **overrides: Any) -> UMConfig:
    base = dict(data=cfg.train, out=str(out), degradations=BASE_DEGRADATIONS, backbone=r.backbone, steps=steps,
                batch_size=r.batch, crop_size=r.crop, lr=r.lr, warmup_steps=r.warmup, loss=r.loss,
                val_every=max(1, steps // 4), val_samples=32, ckpt_every=max(1, steps // 20),
                snapshot_every=max(1, steps // 4), workers=0, threads=cfg.threads, seed=cfg.seed, device="cpu",
                progress=False)
    return UMConfig(**{**base, **overrides})


def cpu_seconds_per_step(cfg: StudyConfig, r: Recipe, work: Path) -> float:
    """Process CPU seconds per training step of ``r`` (a short probe run; the first 2 steps are warm-up)."""
    marks: list[float] = []
    train_um(_um_config(cfg, r, work / "probe", cfg.probe_steps, resume=False, val_every=10**9, val_samples=1,
                        snapshot_every=0, ckpt_every=10**9),
             callback=lambda step, loss: marks.append(time.process_time()))
    return (marks[-1] - marks[1]) / (len(marks) - 2)


def eval_cases(folder: str, n: int, crop: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(degradation, degraded, clean) for the first ``n`` photos, centre-cropped, at the typical levels."""
    cases = []
    for path in list_images(Path(folder))[:n]:
        image = read_image(path)
        h, w = image.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        clean = np.ascontiguousarray(image[top : top + crop, left : left + crop])
        for spec in TYPICAL:
            cases.append((spec.split(":")[0], degrade(clean, parse_specs(spec), keyed_rng(seed, spec, path.name)), clean))
    return cases


@torch.no_grad()
def score(weights: Path, cases: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean PSNR per degradation of the UM ``weights`` on ``cases``."""
    config, state, _ = load_backbone_weights(weights)
    model = build_backbone(config).eval()
    model.load_state_dict(state)
    per: dict[str, list[float]] = {}
    for name, degraded, clean in cases:
        out = model(to_tensor(degraded)[None]).clamp(0, 1)[0]
        restored = (out.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        per.setdefault(name, []).append(psnr(restored, clean, data_range=255))
    return {name: float(np.mean(v)) for name, v in per.items()}


def _done(results: Path) -> set[tuple[str, int]]:
    path = results / "recipes.csv"
    if not path.is_file():
        return set()
    with path.open(newline="") as fh:
        return {(r["recipe"], int(r["snapshot_step"])) for r in csv.DictReader(fh) if r.get("psnr_mean")}


def run_recipe(cfg: StudyConfig, r: Recipe, cases, machine: Machine) -> None:
    work = Path(cfg.work) / r.name
    plan_file = work / "plan.txt"
    if plan_file.is_file():  # the step count is fixed at the first session: a resumed run keeps its schedule
        per_step, steps = (float(v) for v in plan_file.read_text().split())
        steps = int(steps)
    else:
        per_step = cpu_seconds_per_step(cfg, r, work)
        steps = max(8, int(cfg.budget_minutes * 60 / per_step))
        work.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(f"{per_step:.6f} {steps}\n")
    log.info("%s: %.3f CPU s per step -> %d steps for %.0f minutes", r.name, per_step, steps, cfg.budget_minutes)
    run = work / "run"
    if not (run / "model.safetensors").is_file():
        train_um(_um_config(cfg, r, run, steps))
    cost = model_cost(build_backbone(BACKBONES[r.backbone]), 720, 1280)
    done = _done(cfg.results)
    rows = []
    points = {int(p.stem.removeprefix("step_")): p for p in (run / "snapshots").glob("step_*.safetensors")}
    points[steps] = run / "model.safetensors"  # the end of the schedule
    for step, snap in sorted(points.items()):
        if (r.name, step) in done:
            continue
        per = score(snap, cases)
        rows.append({
            "recipe": r.name, "backbone": r.backbone, "crop": r.crop, "loss": r.loss, "lr": f"{r.lr:g}",
            "batch": r.batch, "steps": steps, "snapshot_step": step, "train_minutes": f"{step * per_step / 60:.2f}",
            "budget_minutes": f"{cfg.budget_minutes:g}", "cpu_s_per_step": f"{per_step:.4f}",
            "gmacs_720p": f"{cost.gmacs:.2f}", "params": cost.params,
            **{f"psnr_{d}": f"{per[d]:.3f}" for d in BASE_DEGRADATIONS},
            "psnr_mean": f"{np.mean([per[d] for d in BASE_DEGRADATIONS]):.3f}", "eval_images": cfg.eval_images,
            "eval_crop": cfg.eval_crop, **machine.row(COLUMNS),
        })
        log.info("%s step %d: mean PSNR %s dB", r.name, step, rows[-1]["psnr_mean"])
    if rows:
        upsert_csv(cfg.results / "recipes.csv", rows, key=("recipe", "snapshot_step"), columns=COLUMNS)


def plot(results: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (results / "recipes.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    finals = []
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = sorted((r for r in rows if r["recipe"] == name), key=lambda r: int(r["snapshot_step"]))
        (line,) = ax1.plot([float(r["train_minutes"]) for r in mine], [float(r["psnr_mean"]) for r in mine], "o-",
                           label=name)
        finals.append((float(mine[-1]["gmacs_720p"]), float(mine[-1]["psnr_mean"]), name, line.get_color()))
    # Labels in the points' colours, above the point, or below it where a better recipe of the same cost
    # sits within 0.1 dB (they would overlap).
    for x, y, name, color in finals:
        crowded = any(abs(x2 - x) < 1 and 0 < y2 - y < 0.1 for x2, y2, _, _ in finals)
        ax2.scatter(x, y, s=40, color=color)
        ax2.annotate(name, (x, y), fontsize=8, color=color, xytext=(5, -10 if crowded else 4),
                     textcoords="offset points")
    ax1.set(xlabel="training minutes (CPU time of one core)", ylabel="mean PSNR over 6 degradations (dB)",
            title="UM quality against training time")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    # Left of the band fits: 720p at 30 fps on a Jetson Orin Nano leaves about 25-50 GMACs per frame.
    ax2.axvspan(25, 50, color="orange", alpha=0.15, label="Jetson Orin Nano 720p30 ceiling (25-50 GMACs)")
    ax2.set_xlim(0, 55)
    ax2.set(xlabel="GMACs per 1280x720 frame", ylabel="mean PSNR at the end of the budget (dB)",
            title="quality against inference cost")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = results / "recipes.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    parser = argparse.ArgumentParser(description="UM recipes at an equal CPU budget (see adsrt.bench.recipes)")
    parser.add_argument("--train", required=True, help="clean training photos")
    parser.add_argument("--eval", required=True, help="clean evaluation photos (never trained on)")
    parser.add_argument("--work", required=True, help="work folder (runs resume from it)")
    parser.add_argument("--results", type=Path, default=default_results)
    parser.add_argument("--recipes", type=comma_list, default=tuple(RECIPES), help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="CPU minutes of UM training per recipe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=12)
    parser.add_argument("--eval-crop", type=int, default=256)
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    cfg = StudyConfig(train=args.train, eval=args.eval, work=args.work, results=args.results, recipes=args.recipes,
                      budget_minutes=args.budget_minutes, threads=args.threads, eval_images=args.eval_images,
                      eval_crop=args.eval_crop)
    if not args.plot_only:
        torch.set_num_threads(cfg.threads)
        machine = Machine.detect(torch.device("cpu"))
        cases = eval_cases(cfg.eval, cfg.eval_images, cfg.eval_crop, cfg.seed)
        for name in cfg.recipes:
            run_recipe(cfg, RECIPES[name], cases, machine)
    print(f"plot -> {plot(cfg.results)}")
    return 0
