"""Peak memory of ``adsrt restore`` on large photos against its ``--memory-limit``.

The code of ``benchmarks/bench_memory.py`` (a thin wrapper around :func:`main`):

    nice .venv/bin/python benchmarks/bench_memory.py --work runs/memory

For each (frame size, limit) row a fresh ``python -m adsrt restore BIG.png OUT.png --memory-limit MB``
runs on the CPU with the torch backend, and its peak resident set size comes from the kernel
(``os.wait4``: that child's own ``ru_maxrss``). The constant the limit does not cover (the interpreter,
torch, OpenCV, the model) is measured the same way on a 64 x 64 photo, in the same run. A row holds when
``peak <= limit + constant``. The photos are scikit-image's astronaut resized to each size with noise on
top (a restoration input, not a flat frame that compresses to nothing). Rows with limit 0 (no limit: the
frame restored whole) show what the limit saves.

Writes ``memory.csv`` into --results (upserted by size and limit), with the machine columns.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from adsrt.bench.timing import Machine, comma_list
from adsrt.fileio import upsert_csv

log = logging.getLogger(__name__)

COLUMNS = ("width", "height", "megapixels", "limit_mb", "peak_rss_mb", "constant_mb", "peak_minus_constant_mb",
           "within_limit", "seconds", "bundle", "date", "device", "cpu", "threads", "torch")
KEY = ("width", "height", "limit_mb", "bundle")
DEFAULT_CASES = "4000x3000:0,4000x3000:512,4000x3000:256,8000x6000:1024,12000x12000:2048"


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    from skimage import data

    image = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 15.0, size=(height, width, 1)).astype(np.float32)  # grey noise: 4 B/px, not 12
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _write_photo(path: Path, width: int, height: int) -> None:
    """Make the photo in a child process: a child's ``ru_maxrss`` includes the pages it shared with this
    process when it was forked, so this process must stay small (a 48-megapixel photo made here added
    about 400 MB to every later row)."""
    code = ("import sys; from adsrt.bench.memory import _photo; from adsrt.imageio import write_image; "
            "write_image(sys.argv[1], _photo(int(sys.argv[2]), int(sys.argv[3])))")
    subprocess.run([sys.executable, "-c", code, str(path), str(width), str(height)], check=True)


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its peak RSS in MiB (``ru_maxrss`` is KiB on Linux) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().strip().splitlines() if proc.stderr else []
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; keep Popen from waiting again
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-1] if err else ''}")
    return usage.ru_maxrss / 1024.0, seconds


def _restore_cmd(src: Path, dst: Path, limit_mb: float, bundle: str) -> list[str]:
    return [sys.executable, "-m", "adsrt", "-q", "restore", str(src), str(dst), "--bundle", bundle,
            "--backend", "torch", "--device", "cpu", "--memory-limit", f"{limit_mb:g}", "--overwrite"]


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the large photos and outputs (several GB)")
    p.add_argument("--cases", type=comma_list, default=comma_list(DEFAULT_CASES),
                   help=f"WIDTHxHEIGHT:LIMIT_MB,... (default {DEFAULT_CASES})")
    p.add_argument("--bundle", default="default", help="bundle file or bundled model name (default: default)")
    p.add_argument("--results", type=Path, default=default_results)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = Machine.detect(torch.device("cpu"))

    small = work / "small.png"
    _write_photo(small, 64, 64)
    constant, _ = peak_rss_of(_restore_cmd(small, work / "small_out.png", 0, args.bundle))
    log.info("constant (restoring 64 x 64): %.0f MB", constant)
    path = Path(args.results) / "memory.csv"
    for case in args.cases:
        size, _, limit = case.partition(":")
        width, height = (int(v) for v in size.lower().split("x"))
        limit_mb = float(limit)
        src = work / f"photo_{width}x{height}.png"
        if not src.is_file():
            _write_photo(src, width, height)
        out = work / f"out_{width}x{height}_{limit}.png"
        peak, seconds = peak_rss_of(_restore_cmd(src, out, limit_mb, args.bundle))
        out.unlink(missing_ok=True)
        within = "" if limit_mb == 0 else str(peak <= limit_mb + constant)
        row = {"width": width, "height": height, "megapixels": f"{width * height / 1e6:.1f}", "limit_mb": f"{limit_mb:g}",
               "peak_rss_mb": f"{peak:.0f}", "constant_mb": f"{constant:.0f}",
               "peak_minus_constant_mb": f"{peak - constant:.0f}", "within_limit": within, "seconds": f"{seconds:.1f}",
               "bundle": args.bundle, **machine.row(COLUMNS)}
        log.info("%s x %s, limit %s MB: peak %.0f MB (constant %.0f), %.0f s", width, height, limit, peak, constant,
                 seconds)
        upsert_csv(path, [row], key=KEY, columns=COLUMNS)  # row by row: a large case takes many minutes
    with path.open() as fh:
        print(fh.read())
    return 0
