"""Atomic file output: write beside the target, then rename, so no half file ever carries the final name."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with its links followed; OutputError for a symlink loop (Python raises
    RuntimeError for one) instead of a traceback."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        raise OutputError(f"{path}: cannot resolve the path ({exc})") from exc


def check_not_overwriting(output: str | os.PathLike, protected: dict[str, str | os.PathLike | None]) -> None:
    """OutputError when the file ``output`` (a report, a stats file) would replace one of the ``protected``
    paths (role -> path: the input, the bundle, the main output), so a report never costs an input."""
    out = resolved(output)
    for role, path in protected.items():
        if path is None:
            continue
        other = resolved(path)
        if out == other or (out.exists() and other.exists() and os.path.samefile(out, other)):
            raise OutputError(f"{output}: would replace the {role} ({path}); choose another file")


def check_writable_folder(folder: Path, target: Path) -> None:
    """Fail before any work when ``target`` cannot be created in ``folder``."""
    fd, probe = _temp_file(Path(folder), Path(target), ".probe")
    os.close(fd)
    os.unlink(probe)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None], *, suffix: str = ".part") -> None:
    """Call ``write(tmp)`` on a temporary file in the target folder (named ``...suffix``), then rename it over
    ``path``: the target is never half written. ``write`` may stream (an encoder writing rows to disk), so a
    large output needs no in-memory copy of its encoded bytes."""
    path = Path(path)
    fd, tmp = _temp_file(path.parent, path, suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: write failed ({exc.strerror})") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` (any bytes-like buffer) to ``path`` atomically (:func:`atomic_write_with`)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


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


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C libraries write there directly), then back."""
    if sys.stderr is not None:
        sys.stderr.flush()  # what Python has buffered is ours: it goes out before the redirection
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a daemon): nothing to silence
        saved = None
    if saved is None:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
