"""Atomic file output: write beside the target, then rename, so no half file ever carries the final name."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adsrt.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_file(folder: Path, target: Path, suffix: str) -> tuple[int, str]:
    """A new hidden temporary file next to ``target`` in ``folder``; OutputError when it cannot be made."""
    if not folder.is_dir():
        raise OutputError(f"{target}: output folder {folder} does not exist")
    try:
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write in {folder} ({exc.strerror})") from exc


def check_writable_folder(folder: Path, target: Path) -> None:
    """Fail before any work when ``target`` cannot be created in ``folder``."""
    fd, probe = _temp_file(Path(folder), Path(target), ".probe")
    os.close(fd)
    os.unlink(probe)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` (any bytes-like buffer) to a temporary file in the target folder, then rename it over
    ``path``."""
    path = Path(path)
    fd, tmp = _temp_file(path.parent, path, ".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
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


def upsert_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str],
               columns: Sequence[str]) -> None:
    """Insert ``rows`` into the CSV at ``path`` (benchmark results), replacing existing rows with the
    same values in the ``key`` columns; written atomically, creating the folder if needed."""
    path = Path(path)
    existing: list[dict[str, str]] = []
    if path.exists():
        with path.open(newline="") as fh:
            existing = list(csv.DictReader(fh))
    new_keys = {tuple(str(r[k]) for k in key) for r in rows}
    kept = [r for r in existing if tuple(r.get(k, "") for k in key) not in new_keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in [*kept, *rows]:
        writer.writerow({k: row.get(k, "") for k in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, out.getvalue().encode())


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
