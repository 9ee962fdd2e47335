"""Where training time goes, and how much faster the current settings train than v1's.

Shared by ``benchmarks/bench_train.py`` (rows into ``benchmarks/results/train.csv``) and
``adsrt bench train``. Every row is a real run of a training stage on the photos of ``--data``:

- **Restorer stages** (UM; a target runs the same loop): :func:`adsrt.train.trainer.run_training` for
  ``warmup + steps + 1`` steps per variant, timed from the step callback of step ``warmup`` to that of
  step ``warmup + steps`` (setup, the first validation, the compilation with ``compile`` and the last step,
  which the trainer follows with a checkpoint and a validation, are outside; ``first_step_s`` is the first
  step's own time, compile included), with the trainer's phase hook splitting each step into data (waiting for the batch: the whole
  synthesis with 0 workers), forward, backward and optimizer (with the EMA). Variants take turns, round
  after round, so the drifts of a shared machine hit them alike; each variant's row is its median round, and
  ``speedup_vs_v1`` the median over rounds of its ratio to ``v1``'s run of the same round.
  ``loss_delta`` is the mean absolute difference of the per-step loss from ``v1``'s over the same steps
  (same seed): near 0 means the same loss curve per sample while the samples are the same, i.e. while
  the degradations are v1's. Since the degradation families (#15) today's code degrades the same seed
  differently, so ``loss_delta`` measures the change of the data as well, not only of the loop.
- **FAIG path, delta refinement, classifier**: each stage function run twice with a small and a larger
  step count (path points, refinement steps, classifier steps); the difference of the two wall times over
  the difference of the steps is the time of one step without the setup.
- **data** (``data-decode``, ``data-crop``, ``data-degrade``, ``data-collate``): the UM's data side in the
  training process, seconds per batch: decoding the photos (once per run; per batch of photos), crop + flip +
  to-tensor, the degradation (the same samples with and without it), collating.

Variants (``VARIANTS``): ``v1`` is the code that trained the v1 default model (git commit ``V1_COMMIT``,
checked out into a temporary worktree and run in a subprocess) with the bundled preset's settings
(nafnet-small, 16 x 64 px, NCHW, fp32, eager, torch's default threads, 2 loader workers); ``v1-settings``
is today's code with those settings (the code changes alone; threads are the process's cores in both,
2 here, torch's default for v1 and today's default policy); the others change one setting
at a time from ``v2``, the current defaults. Without git or that commit (a shallow clone), ``v1`` is
skipped with a warning and the speedups are against ``v1-settings``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adsrt.bench.timing import Machine, check_choices
from adsrt.errors import AdsrtError
from adsrt.train.checkpoint import load_backbone_weights

log = logging.getLogger(__name__)

DEGRADATIONS = ("noise", "blur", "rain", "haze", "snow", "lowlight")


V1_COMMIT = "b65282d"  # the last commit before the training-throughput work (the v1 model's trainer)


@dataclass(frozen=True)
class Variant:
    """Settings of one restorer-training row (fields of :class:`adsrt.train.trainer.TrainerConfig`)."""

    name: str
    commit: str | None = None  # run this commit's code (in a subprocess) instead of today's
    crop: int = 64
    channels_last: bool = True
    workers: int = 1
    cpu_bf16: bool = False
    compile: bool = False
    threads: int | None = None
    amp: bool = True  # CUDA autocast (bf16, else fp16); on a CPU only with cpu_bf16
    batch: int | None = None  # None: the benchmark's batch


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("v1", commit=V1_COMMIT, channels_last=False, workers=2),
    Variant("v1-settings", channels_last=False, workers=2),
    Variant("v2"),
    Variant("v2-workers0", workers=0),
    Variant("v2-workers2", workers=2),
    Variant("v2-nchw", channels_last=False),
    Variant("v2-bf16", cpu_bf16=True),
    Variant("v2-compile", compile=True),
    Variant("v2-compile-bf16", compile=True, cpu_bf16=True),
    Variant("v2-compile-workers0", compile=True, workers=0),
    Variant("v2-1thread", threads=1),
    Variant("v2-crop96", crop=96),
    Variant("v2-crop128", crop=128),
    Variant("v2-fp32", amp=False),  # CUDA: no autocast (on a CPU the same as v2)
    Variant("v2-batch64", batch=64),
)}
DEFAULT_VARIANTS = ("v1", "v1-settings", "v2", "v2-workers0", "v2-workers2", "v2-nchw", "v2-bf16", "v2-compile",
                    "v2-compile-bf16", "v2-compile-workers0", "v2-1thread", "v2-crop96", "v2-crop128")
STAGES = ("um", "faig", "refine", "classifier", "data")
COLUMNS = ("date", "stage", "variant", "backbone", "crop", "batch", "device", "threads", "workers", "dtype",
           "channels_last", "compile", "steps", "rounds", "s_per_step", "samples_per_s", "mpix_per_s", "speedup_vs_v1",
           "data_ms", "forward_ms", "backward_ms", "optimizer_ms", "first_step_s", "loss_delta", "cpu", "torch")
KEY = ("date", "stage", "variant")


@dataclass(frozen=True)
class TrainBenchConfig:
    data: str
    backbone: str = "nafnet-small"
    batch: int = 16
    steps: int = 24  # timed steps per round
    warmup: int = 4
    rounds: int = 2
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    stages: tuple[str, ...] = STAGES
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainBenchResult:
    rows: list[dict[str, Any]]
    machine: Machine

    def table(self) -> str:
        head = (f"{'stage':<10} {'variant':<12} {'crop':>4} {'thr':>3} {'wrk':>3} {'dtype':>5} {'s/step':>7} "
                f"{'samples/s':>9} {'Mpix/s':>7} {'x v1':>5} {'data':>6} {'fwd':>6} {'bwd':>6} {'opt':>6} {'dloss':>7}")
        lines = [self.machine.describe(), head]
        def cell(r: dict[str, Any], key: str, spec: str, width: int) -> str:
            return format(r[key], spec) if isinstance(r.get(key), float) else " " * width

        for r in self.rows:
            ms = {k: cell(r, k, "6.1f", 6) for k in ("data_ms", "forward_ms", "backward_ms", "optimizer_ms")}
            speed, dloss = cell(r, "speedup_vs_v1", "5.2f", 5), cell(r, "loss_delta", "7.1e", 7)
            lines.append(f"{r['stage']:<10} {r['variant']:<12} {r['crop']:>4} {r['threads']:>3} {r['workers']:>3} "
                         f"{r['dtype']:>5} {r['s_per_step']:7.3f} {cell(r, 'samples_per_s', '9.1f', 9)} {cell(r, 'mpix_per_s', '7.2f', 7)} "
                         f"{speed} {ms['data_ms']} {ms['forward_ms']} {ms['backward_ms']} {ms['optimizer_ms']} {dloss}")
        return "\n".join(lines)

    def csv_rows(self) -> list[dict[str, str]]:
        out = []
        for r in self.rows:
            row = {**self.machine.row(COLUMNS), **{k: v for k, v in r.items() if k in COLUMNS}}
            out.append({k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in row.items()})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"machine": dataclasses.asdict(self.machine), "rows": self.rows}


class _PhaseClock:
    """The trainer's phase hook: seconds per phase, summed over ``count`` steps after the first ``skip``."""

    def __init__(self, device: torch.device, skip: int, count: int) -> None:
        self.device, self.skip, self.count = device, skip, count
        self.step, self.totals = 0, dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.skip <= self.step < self.skip + self.count:
            self.totals[name] += now - self._last
        self._last = now
        if name == "optimizer":
            self.step += 1

    def rearm(self) -> None:
        """Restart the clock (after the step callback: logging and checkpoints are not a phase)."""
        self._last = time.perf_counter()


def _restorer_round(cfg: TrainBenchConfig, v: Variant, work: Path) -> dict[str, Any]:
    from adsrt.train.um import UMConfig, train_um

    device = torch.device(cfg.device)
    clock = _PhaseClock(device, cfg.warmup, cfg.steps)
    marks: list[float] = []
    losses: list[float] = []

    def callback(step: int, loss: float) -> None:
        marks.append(time.perf_counter())
        losses.append(loss)
        clock.rearm()

    total, batch = cfg.warmup + cfg.steps + 1, v.batch or cfg.batch
    run = UMConfig(data=cfg.data, out=str(work / v.name), degradations=DEGRADATIONS, backbone=cfg.backbone,
                   steps=total, batch_size=batch, crop_size=v.crop, val_every=10**9, val_samples=1,
                   ckpt_every=10**9, log_every=10**9, workers=v.workers, channels_last=v.channels_last,
                   cpu_bf16=v.cpu_bf16, amp=v.amp, compile=v.compile, threads=v.threads, device=cfg.device,
                   resume=False, progress=False, samples_per_epoch=max(2048, batch * total))
    train_um(run, callback=callback, phase=clock)
    seconds = (marks[-2] - marks[cfg.warmup - 1]) / cfg.steps
    _, _, header = load_backbone_weights(work / v.name / "model.safetensors")
    compute = header["compute"]  # what the trainer resolved (threads, dtype; compile False after a fallback)
    return {
        "s_per_step": seconds, "losses": losses[cfg.warmup : -1], "first_step_s": header["first_step_seconds"],
        "threads": compute["threads"], "dtype": compute["dtype"], "compile": compute["compile"], "batch": batch,
        **{f"{k}_ms": 1e3 * t / cfg.steps for k, t in clock.totals.items()},
    }


# Run in a subprocess on an older commit's code: the same measurement as _restorer_round, through the
# trainer API that commit has (UMConfig + train_um with a step callback).
_COMMIT_ROUND = """
import json, sys, time, torch, adsrt
from adsrt.train.um import UMConfig, train_um
marks, losses = [], []
t0 = time.perf_counter()
train_um(UMConfig(**json.loads(sys.argv[1])), callback=lambda step, loss: (marks.append(time.perf_counter()), losses.append(loss)))
print(json.dumps({"marks": marks, "losses": losses, "t0": t0, "threads": torch.get_num_threads(), "adsrt": adsrt.__file__}))
"""


def checkout(commit: str, tmp: Path) -> Path | None:
    """An import root whose ``adsrt`` is ``commit``'s code (``git archive`` of this repository), or None
    where there is no git checkout with that commit (an installed wheel, a shallow clone)."""
    repo = Path(__file__).resolve().parents[2]
    tree = tmp / f"tree-{commit}"
    tree.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True,
                                 check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot check out %s here (%s): no v1 row", commit, exc)
        return None
    # The package layout of pyproject.toml: adsrt is sdk/, with the other top-level folders inside it.
    for sub in ("kernels", "export", "train"):
        (tree / "sdk" / sub).symlink_to(tree / sub)
    root = tmp / f"path-{commit}"
    root.mkdir()
    (root / "adsrt").symlink_to(tree / "sdk")
    return root


def _commit_round(cfg: TrainBenchConfig, v: Variant, work: Path, root: Path) -> dict[str, Any]:
    total = cfg.warmup + cfg.steps + 1
    run = dict(data=str(Path(cfg.data).resolve()), out=str(work / v.name), degradations=list(DEGRADATIONS),
               backbone=cfg.backbone, steps=total, batch_size=cfg.batch, crop_size=v.crop, val_every=10**9,
               val_samples=1, ckpt_every=10**9, log_every=10**9, workers=v.workers, device=cfg.device, resume=False,
               progress=False, samples_per_epoch=max(2048, cfg.batch * total))
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", _COMMIT_ROUND, json.dumps(run)], capture_output=True, text=True,
                            env=env, cwd=root, timeout=1800)
    if result.returncode:
        raise AdsrtError(f"the {v.commit} trainer failed: {result.stderr[-2000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if not out["adsrt"].startswith(str(root)):
        raise AdsrtError(f"the {v.commit} run imported {out['adsrt']}, not the checked-out code")
    marks = out["marks"]
    # v1's trainer has no phase hook: its first step's time is the wall time to the first callback (setup too).
    return {"s_per_step": (marks[-2] - marks[cfg.warmup - 1]) / cfg.steps, "losses": out["losses"][cfg.warmup : -1],
            "first_step_s": marks[0] - out["t0"], "threads": out["threads"]}


def bench_restorer(cfg: TrainBenchConfig, work: Path) -> list[dict[str, Any]]:
    from tqdm import tqdm

    variants = [VARIANTS[n] for n in cfg.variants]
    roots = {c: checkout(c, work / "commits") for c in {v.commit for v in variants if v.commit}}
    variants = [v for v in variants if not v.commit or roots[v.commit] is not None]
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    threads_before = torch.get_num_threads()
    with tqdm(total=cfg.rounds * len(variants), desc="bench train", disable=not cfg.progress) as bar:
        for _ in range(cfg.rounds):
            for v in variants:
                r = _commit_round(cfg, v, work, roots[v.commit]) if v.commit else _restorer_round(cfg, v, work)
                torch.set_num_threads(threads_before)  # each variant resolves its own threads
                runs[v.name].append(r)
                bar.update(1)
    ref_name = "v1" if "v1" in runs else "v1-settings" if "v1-settings" in runs else None
    rows = []
    for v in variants:
        mine = runs[v.name]
        # The median round; the speedup is the median over rounds of the ratio to the reference's run in the
        # same round (they ran one after the other), which cancels the slow drifts of a shared machine.
        r = sorted(mine, key=lambda run: run["s_per_step"])[len(mine) // 2]
        batch = r.get("batch", cfg.batch)
        samples = batch / r["s_per_step"]
        ref = runs[ref_name][0] if ref_name else None
        speedup = (float(np.median([a["s_per_step"] / b["s_per_step"] for a, b in zip(runs[ref_name], mine, strict=True)]))
                   if ref_name else None)
        same_data = (ref is not None and v.crop == VARIANTS["v1"].crop and batch == cfg.batch
                     and len(ref["losses"]) == len(r["losses"]))
        rows.append({
            "stage": "um", "variant": v.name, "backbone": cfg.backbone, "crop": v.crop, "batch": batch,
            "threads": r["threads"], "workers": v.workers, "dtype": r.get("dtype", "fp32"),
            "channels_last": v.channels_last, "compile": r.get("compile", v.compile), "steps": cfg.steps,
            "rounds": cfg.rounds, "s_per_step": r["s_per_step"], "samples_per_s": samples,
            "mpix_per_s": samples * v.crop**2 / 1e6, "speedup_vs_v1": speedup,
            **{k: r.get(k) for k in ("data_ms", "forward_ms", "backward_ms", "optimizer_ms", "first_step_s")},
            "loss_delta": float(np.mean(np.abs(np.subtract(r["losses"], ref["losses"])))) if same_data else None,
        })
    return rows


def profile_variant(cfg: TrainBenchConfig, name: str, work: Path, rows: int = 25) -> str:
    """torch.profiler's table (self CPU time, top ``rows`` ops) over ``cfg.steps`` UM steps of variant ``name``
    after ``cfg.warmup`` steps: where the time of a step goes, op by op."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from adsrt.train.um import UMConfig, train_um

    check_choices("variant", (name,), VARIANTS)
    v = VARIANTS[name]
    run = UMConfig(data=cfg.data, out=str(work / f"profile-{name}"), degradations=DEGRADATIONS,
                   backbone=cfg.backbone, steps=cfg.warmup + cfg.steps + 1, batch_size=v.batch or cfg.batch,
                   crop_size=v.crop, val_every=10**9, val_samples=1, ckpt_every=10**9, log_every=10**9,
                   workers=v.workers, channels_last=v.channels_last, cpu_bf16=v.cpu_bf16, amp=v.amp,
                   compile=v.compile, threads=v.threads, device=cfg.device, resume=False, progress=False)
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=cfg.warmup, warmup=0, active=cfg.steps,
                                                                     repeat=1)) as prof:
        train_um(run, callback=lambda step, loss: prof.step())
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"variant {name}: {cfg.steps} steps after {cfg.warmup}, {torch.get_num_threads()} threads\n{table}"


def bench_data(cfg: TrainBenchConfig) -> list[dict[str, Any]]:
    """The data side of a UM step in the training process, per batch: decode (once per run, shown per batch of
    photos), crop + flip + to-tensor, the degradation, collate."""
    from torch.utils.data import default_collate

    from adsrt.train.data import DegradedImageDataset

    t0 = time.perf_counter()
    data = DegradedImageDataset(cfg.data, DEGRADATIONS, crop_size=64, samples_per_epoch=4096)
    decode = (time.perf_counter() - t0) / len(data.images) * cfg.batch
    # The same crops with (nearly) every sample left clean: the difference is the degradation's time.
    clean = DegradedImageDataset(cfg.data, DEGRADATIONS, crop_size=64, samples_per_epoch=4096, clean_fraction=0.9999)
    n = cfg.batch * max(4, cfg.steps // 2)
    timings = {}
    for name, dataset in (("sample", data), ("crop", clean)):
        t0 = time.perf_counter()
        samples = [dataset[i] for i in range(n)]
        timings[name] = (time.perf_counter() - t0) / n * cfg.batch
    t0 = time.perf_counter()
    for i in range(0, n, cfg.batch):
        default_collate(samples[i : i + cfg.batch])
    collate = (time.perf_counter() - t0) / (n // cfg.batch)
    parts = {"decode": decode, "crop": timings["crop"], "degrade": timings["sample"] - timings["crop"],
             "collate": collate}
    return [{"stage": f"data-{k}", "variant": "v2", "backbone": "", "crop": 64, "batch": cfg.batch,
             "threads": torch.get_num_threads(), "workers": 0, "dtype": "", "channels_last": "", "compile": "",
             "steps": n // cfg.batch, "rounds": 1, "s_per_step": v, "samples_per_s": cfg.batch / v if v > 0 else None,
             "mpix_per_s": cfg.batch / v * 64**2 / 1e6 if v > 0 else None} for k, v in parts.items()]


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_other_stages(cfg: TrainBenchConfig, work: Path) -> list[dict[str, Any]]:
    """FAIG path points, delta refinement steps and classifier steps, each by the difference of two runs."""
    from adsrt.train.classifier import ClassifierTrainConfig, train_classifier
    from adsrt.train.deltas import DeltasConfig, build_deltas
    from adsrt.train.select import SelectConfig, run_select
    from adsrt.train.um import TargetConfig, UMConfig, train_target, train_um

    common = dict(data=cfg.data, batch_size=cfg.batch, crop_size=64, val_samples=cfg.batch, workers=0,
                  progress=False, device=cfg.device)
    um, target = work / "um", work / "target"
    train_um(UMConfig(out=str(um), degradations=DEGRADATIONS, backbone=cfg.backbone, steps=2, **common))
    train_target(TargetConfig(out=str(target), um=str(um / "model.safetensors"), degradation="noise", steps=2, **common))
    um_w, target_w = str(um / "model.safetensors"), str(target / "model.safetensors")
    masks = work / "masks.safetensors"

    def select(points: int) -> None:
        run_select(SelectConfig(um=um_w, target=target_w, degradation="noise", out=str(masks), data=cfg.data,
                                path_steps=points, n_images=16, batch_size=cfg.batch, crop_size=64, resume=False,
                                device=cfg.device))

    def refine(steps: int) -> None:
        build_deltas(DeltasConfig(um=um_w, target=target_w, masks=str(masks), out=str(work / "d.safetensors"),
                                  data=cfg.data, refine_steps=steps, batch_size=cfg.batch, crop_size=64,
                                  val_samples=cfg.batch, resume=False, device=cfg.device))

    def classifier(steps: int) -> None:
        train_classifier(ClassifierTrainConfig(data=cfg.data, out=str(work / "dc"), degradations=DEGRADATIONS,
                                               input_size=96, width=16, depth=4, crop_size=96, steps=steps,
                                               batch_size=32, val_samples=32, resume=False, progress=False,
                                               device=cfg.device))

    rows = []
    # (stage, function, small and large step counts, samples per step, crop)
    for stage, fn, lo, hi, samples, crop in (("faig", select, 1, 4, 16, 64), ("refine", refine, 4, 4 + cfg.steps, cfg.batch, 64),
                                             ("classifier", classifier, 4, 4 + 2 * cfg.steps, 32, 96)):
        if stage not in cfg.stages:
            continue
        per = [(_timed(fn, hi) - _timed(fn, lo)) / (hi - lo) for _ in range(cfg.rounds)]
        s = max(min(per), 1e-9)
        rows.append({"stage": stage, "variant": "v2", "backbone": cfg.backbone, "crop": crop, "batch": samples,
                     "threads": torch.get_num_threads(), "workers": 0 if stage != "classifier" else 1,
                     "dtype": "fp32", "channels_last": False, "compile": False, "steps": hi - lo, "s_per_step": s,
                     "samples_per_s": samples / s, "mpix_per_s": samples / s * crop**2 / 1e6})
    return rows


def run_train_benchmark(cfg: TrainBenchConfig) -> TrainBenchResult:
    check_choices("variants", cfg.variants, VARIANTS)
    check_choices("stages", cfg.stages, STAGES)
    if cfg.steps < 2 or cfg.warmup < 1 or cfg.rounds < 1:
        raise AdsrtError("steps >= 2, warmup >= 1 and rounds >= 1 are needed")
    from adsrt.train.compute import default_threads

    torch.set_num_threads(default_threads())
    machine = Machine.detect(torch.device(cfg.device))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adsrt-bench-train-") as tmp:
        if "um" in cfg.stages:
            rows += bench_restorer(cfg, Path(tmp) / "um")
        if set(cfg.stages) - {"um", "data"}:
            rows += bench_other_stages(cfg, Path(tmp) / "other")
        if "data" in cfg.stages:
            rows += bench_data(cfg)
    return TrainBenchResult(rows=rows, machine=machine)
