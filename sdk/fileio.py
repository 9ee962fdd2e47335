"""Atomic file output: write beside the target, then rename, so no half file ever carries the final name."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from adsrt.errors import OutputError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the target folder, then rename it over ``path``."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: output folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {folder} ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: write failed ({exc.strerror})") from exc
        raise


def _finite_or_none(value: Any) -> Any:
    """JSON has no Infinity/NaN: non-finite floats (e.g. PSNR of identical images) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON (non-finite floats as null) atomically."""
    text = json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())
