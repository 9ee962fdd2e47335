"""Stages 1 and 2 of the method: the unified model (UM) and the per-degradation targets (IM).

- :func:`train_um`: the backbone trained from scratch on a mix of all k degradations.
- :func:`train_target`: a copy of the UM fine-tuned on one degradation alone: the "independent mode"
  upper bound, and the end point of the FAIG-SD path.

Both are :func:`adsrt.train.trainer.run_training` with a different data spec and starting point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from adsrt.train.trainer import PhaseHook, StepCallback, TrainerConfig, class_specs, run_training


@dataclass(kw_only=True)
class UMConfig(TrainerConfig):
    """The UM stage: from scratch, on the mix (defaults of :class:`TrainerConfig`)."""


@dataclass(kw_only=True)
class TargetConfig(TrainerConfig):
    """A target stage: fine-tune the UM (``um``: its model.safetensors) on ``degradation`` alone."""

    um: str
    degradation: str
    backbone: str | None = None  # always the UM's
    steps: int = 5000
    lr: float = 2e-4
    warmup_steps: int = 0


def train_um(cfg: UMConfig, *, callback: StepCallback | None = None, phase: PhaseHook | None = None) -> dict[str, Any]:
    return run_training(cfg, kind="um", callback=callback, phase=phase)


def train_target(cfg: TargetConfig, *, callback: StepCallback | None = None) -> dict[str, Any]:
    spec = class_specs([cfg.degradation])[0]  # validates the name before anything loads
    run = dataclasses.replace(cfg, degradations=(str(spec),), init=cfg.um)
    return run_training(run, kind="target", callback=callback)
