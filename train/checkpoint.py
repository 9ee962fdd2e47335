"""Checkpoints and weight files of the training stages, written atomically and read without unpickling.

Both are safetensors files with a JSON header under the ``adsrt`` metadata key; nothing is ever pickled.

- Training checkpoints (``checkpoint.safetensors`` of a stage): any nest of dicts, lists, numbers,
  strings and tensors (model, EMA, optimizer state, RNG state, step, elapsed time). The tensors go into the
  file under generated names, the rest into the JSON with ``{"__tensor__": name}`` where each tensor was
  (dicts with integer keys, such as an optimizer's per-parameter state, are marked so they come back with
  integer keys). One file, renamed into place, so an interrupted run leaves the previous checkpoint, never
  half of one, and a resumed run restores every bit it needs.
- Stage outputs (``*.safetensors``: UM/target/classifier weights): the state dict plus a JSON header that
  names the architecture, so a later stage can refuse weights of another backbone with a clear message.
"""

from __future__ import annotations

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
CHECKPOINT_KIND = "checkpoint"
_TENSOR, _INT_KEYS = "__tensor__", "__int_keys__"


def _pack(value: Any, tensors: dict[str, torch.Tensor], storages: set[int] | None = None) -> Any:
    """``value`` as JSON-able data, its tensors moved into ``tensors`` (``storages``: their data pointers)."""
    storages = set() if storages is None else storages
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensor = value.detach().cpu().contiguous()
        # safetensors refuses two entries on one storage (tied weights, views): store a copy.
        if tensor.numel() and tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        if tensor.numel():
            storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
        return {_TENSOR: name}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if _TENSOR in value or _INT_KEYS in value:
                raise AdsrtError(f"checkpoint keys {_TENSOR!r} and {_INT_KEYS!r} are reserved")
            return {k: _pack(v, tensors, storages) for k, v in value.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {_INT_KEYS: {str(k): _pack(v, tensors, storages) for k, v in value.items()}}
        raise AdsrtError("checkpoint dicts need all-string or all-integer keys")
    if isinstance(value, (list, tuple)):
        return [_pack(v, tensors, storages) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise AdsrtError(f"cannot checkpoint a {type(value).__name__}")


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_INT_KEYS}:
            return {int(k): _unpack(v, tensors) for k, v in value[_INT_KEYS].items()}
        return {k: _unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    return value


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (a dict with a ``step``) as one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    data = _pack(state, tensors)
    try:
        header = json.dumps({"kind": CHECKPOINT_KIND, "state": data}, allow_nan=False)
    except ValueError as exc:
        raise AdsrtError(f"cannot checkpoint a non-finite number ({exc})") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: header}))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = json.loads((fh.metadata() or {})[METADATA_KEY])
        tensors = load_file(str(path))
        if header.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"kind {header.get('kind')!r}")
        state = _unpack(header["state"], tensors)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise AdsrtError(f"{path}: not a readable adsrt checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise AdsrtError(f"{path}: not an adsrt training checkpoint")
    return state


def load_run_checkpoint(path: str | os.PathLike, key: Any, what: str) -> dict[str, Any]:
    """:func:`load_checkpoint`, refused with one line unless it was written by the same run (its ``key``:
    everything the remaining steps depend on). ``what`` names the run in the message."""
    state = load_checkpoint(path)
    if state.get("key") != key:
        raise AdsrtError(f"{path}: checkpoint of another {what} (inputs or settings differ); delete it, "
                         "use another output, or pass --no-resume")
    return state


def rng_state() -> dict[str, Any]:
    """torch's global RNG state (CPU, and CUDA where initialized), for a checkpoint."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
