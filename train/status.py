"""``adsrt train status WORK``: where a ``train all`` run stands, read from its work folder alone.

Every stage is ``done`` (its output exists), ``partial`` (a checkpoint exists: stopped or still running),
or ``pending``. For each: steps done of planned, training time so far, the latest quality number (val PSNR
of the restorer stages, accuracy of the classifier) and an ETA: from the stage's own rate when it has one,
else from the UM's (targets run the UM's loop on the same crops). Only file headers and the CSV curves are
read (no tensors), so it is instant and safe while the run goes on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from adsrt.errors import AdsrtError
from adsrt.train.checkpoint import METADATA_KEY
from adsrt.train.progress import beside, read_rows
from adsrt.train.trainer import CHECKPOINT

RUN_FILE = "run.json"  # written by ``train all``: the run's config, preset, stage plan


@dataclass
class StageStatus:
    stage: str
    state: str  # done | partial | pending
    step: int | None = None
    steps: int | None = None
    seconds: float | None = None  # training time so far
    quality: str = ""
    eta_seconds: float | None = None

    @property
    def rate(self) -> float | None:
        """Seconds per step, where measured."""
        return self.seconds / self.step if self.seconds and self.step else None


def _header(path: Path) -> dict[str, Any] | None:
    """The adsrt JSON header of a safetensors file (no tensors read); None if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})[METADATA_KEY])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


def _last_val(log: Path, column: str) -> str:
    for row in reversed(read_rows(log)):
        if row.get(column):
            return row[column]
    return ""


def _stage(stage: str, output: Path, checkpoint: Path, log: Path | None, planned: int | None,
           quality_of: Any) -> StageStatus:
    if output.is_file():
        header = _header(output) or {}
        step = header.get("step") or planned
        return StageStatus(stage, "done", step, step, header.get("seconds"), quality_of(header, log))
    if checkpoint.is_file():
        state = (_header(checkpoint) or {}).get("state", {})
        step, steps = state.get("step"), state.get("steps", planned)
        return StageStatus(stage, "partial", step, steps, state.get("elapsed"), quality_of(None, log))
    return StageStatus(stage, "pending", 0, planned)


def _restorer_quality(header: dict[str, Any] | None, log: Path | None) -> str:
    psnr = header.get("val", {}).get("psnr") if header else None
    if psnr is None and log is not None:
        psnr = _last_val(log, "val_psnr") or None
    return f"val PSNR {float(psnr):.2f} dB" if psnr is not None else ""


def _classifier_quality(header: dict[str, Any] | None, log: Path | None) -> str:
    accuracy = header.get("val", {}).get("accuracy") if header else None
    if accuracy is not None:
        return f"accuracy {accuracy:.3f}"
    loss = _last_val(log, "loss") if log is not None else ""
    return f"loss {float(loss):.3f}" if loss else ""


def _no_quality(header: dict[str, Any] | None, log: Path | None) -> str:
    return ""


def _deltas_quality(header: dict[str, Any] | None, log: Path | None) -> str:
    val = header.get("val", {}) if header else {}
    return f"ADS {val['ads']:.2f} dB (UM {val['um']:.2f})" if "ads" in val and "um" in val else ""


def work_status(work: str | Path) -> list[StageStatus]:
    """The stages of the run in ``work`` (see the module doc)."""
    work = Path(work)
    if not work.is_dir():
        raise AdsrtError(f"{work}: no such work folder")
    run_file = work / RUN_FILE
    if not run_file.is_file():
        raise AdsrtError(f"{work}: no {RUN_FILE}; is it the --work folder of `adsrt train all`?")
    try:
        run = json.loads(run_file.read_text())
        names, tag, preset = run["degradation_names"], run["tag"], run["preset_values"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdsrtError(f"{run_file}: unreadable run file ({exc})") from exc
    stages = [_stage("um", work / "um" / "model.safetensors", work / "um" / CHECKPOINT, work / "um" / "log.csv",
                     preset["um_steps"], _restorer_quality)]
    for d in names:
        folder = work / "targets" / d
        stages.append(_stage(f"target {d}", folder / "model.safetensors", folder / CHECKPOINT, folder / "log.csv",
                             preset["target_steps"], _restorer_quality))
    config = run.get("config", {})
    # Only FAIG-based selectors walk a path; a --refine-steps of the run overrides the preset's.
    path_steps = preset["path_steps"] if config.get("selector", "faig") in ("faig", "encoder") else None
    refine_steps = preset["refine_steps"] if config.get("refine_steps") is None else config["refine_steps"]
    for d in names:
        out = work / "select" / tag / f"{d}.safetensors"
        stages.append(_stage(f"select {d}", out, beside(out, "checkpoint"), None, path_steps, _no_quality))
        out = work / "deltas" / tag / f"{d}.safetensors"
        stages.append(_stage(f"deltas {d}", out, beside(out, "checkpoint"), beside(out, "log"),
                             refine_steps or None, _deltas_quality))
    folder = work / "classifier"
    stages.append(_stage("classifier", folder / "model.safetensors", folder / CHECKPOINT, folder / "log.csv",
                         preset["dc_steps"], _classifier_quality))
    if preset.get("dc_context_width"):  # run files from before the context stage lack the key
        folder = work / "context"
        stages.append(_stage("context", folder / "model.safetensors", folder / CHECKPOINT, folder / "log.csv",
                             preset["dc_context_steps"], _classifier_quality))
    bundle = Path(run["out"])
    stages.append(StageStatus("bundle", "done" if bundle.is_file() else "pending", quality=str(bundle)))
    _estimate(stages)
    return stages


def _estimate(stages: list[StageStatus]) -> None:
    """Fill ``eta_seconds`` from each stage's own rate, or for targets the UM's (same loop, same crops)."""
    um_rate = stages[0].rate
    for s in stages:
        if s.state == "done" or not s.steps:
            s.eta_seconds = 0.0 if s.state == "done" else None
            continue
        rate = s.rate or (um_rate if s.stage.startswith("target") else None)
        s.eta_seconds = rate * (s.steps - (s.step or 0)) if rate else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def format_status(stages: list[StageStatus]) -> str:
    lines = [f"{'stage':<20} {'state':<8} {'progress':>14} {'trained':>8} {'ETA':>8}  quality"]
    for s in stages:
        progress = f"{s.step or 0}/{s.steps}" if s.steps else ""
        trained = _duration(s.seconds) if s.seconds is not None else ""
        eta = "" if s.state == "done" else _duration(s.eta_seconds)
        lines.append(f"{s.stage:<20} {s.state:<8} {progress:>14} {trained:>8} {eta:>8}  {s.quality}")
    known = sum(s.eta_seconds for s in stages if s.state != "done" and s.eta_seconds is not None)
    unknown = sum(1 for s in stages[:-1] if s.state != "done" and s.eta_seconds is None)  # the bundle: seconds
    total = f"about {_duration(known)}" + (f" plus {unknown} stage(s) not yet measured" if unknown > 0 else "")
    lines.append(f"done {sum(s.state == 'done' for s in stages)} of {len(stages)} stages; left: {total}")
    return "\n".join(lines)


def status_json(stages: list[StageStatus]) -> list[dict[str, Any]]:
    return [asdict(s) for s in stages]
