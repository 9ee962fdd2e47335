"""Checkpoints and weight files of the training stages, written atomically and read without unpickling.

Two kinds of file:

- ``*.pt`` training checkpoints (model, EMA, optimizer and scaler state, step): ``torch.save`` of
  plain dicts, lists, numbers, strings and tensors only, read back with ``torch.load(weights_only=True)``
  so a checkpoint can never execute code. Written to a temp file and renamed, so an interrupted run
  leaves the previous checkpoint, never a half-written one.
- ``*.safetensors`` stage outputs (UM/target/classifier weights): the state dict plus a JSON header
  under the ``adsrt`` metadata key that names the architecture, so a later stage can refuse weights
  of another backbone with a clear message.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from adsrt.arch import NAFNetConfig
from adsrt.errors import AdsrtError
from adsrt.fileio import atomic_write_bytes

METADATA_KEY = "adsrt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` (plain containers and tensors only) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; never unpickles arbitrary objects."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises pickle/runtime/zip errors of many kinds for a bad file
        raise AdsrtError(f"{path}: not a readable adsrt checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise AdsrtError(f"{path}: not an adsrt training checkpoint")
    return state


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], header: dict[str, Any]) -> Path:
    """Write a state dict and a JSON ``header`` as one safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
               for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(header, allow_nan=False)}))
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_weights`: (state dict, header)."""
    path = Path(path)
    if not path.is_file():
        raise AdsrtError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
        header = json.loads(metadata[METADATA_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise AdsrtError(f"{path}: not an adsrt weights file ({type(exc).__name__}: {exc})") from exc
    return tensors, header


def load_backbone_weights(path: str | os.PathLike) -> tuple[NAFNetConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read UM or target weights: (backbone config, state dict, header)."""
    state, header = load_weights(path)
    try:
        config = NAFNetConfig.from_dict(header["backbone"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AdsrtError(f"{path}: the header names no valid backbone ({exc})") from exc
    return config, state, header


def check_same_architecture(um: tuple[NAFNetConfig, dict[str, torch.Tensor]],
                            target: tuple[NAFNetConfig, dict[str, torch.Tensor]], label: str) -> None:
    """Raise unless the target weights have the UM's architecture (same config, names and shapes)."""
    (um_config, um_state), (t_config, t_state) = um, target
    if um_config != t_config:
        raise AdsrtError(f"{label}: backbone {t_config.to_dict()} does not match the UM's {um_config.to_dict()}")
    if um_state.keys() != t_state.keys():
        diff = sorted(um_state.keys() ^ t_state.keys())
        raise AdsrtError(f"{label}: parameter names differ from the UM's (e.g. {diff[:3]})")
    for name, tensor in um_state.items():
        if tensor.shape != t_state[name].shape:
            raise AdsrtError(f"{label}: {name} has shape {tuple(t_state[name].shape)}, the UM's is {tuple(tensor.shape)}")
