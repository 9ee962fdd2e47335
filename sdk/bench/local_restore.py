"""Spatially varying degradation: global c against the window map (local mode) and the oracle map.

The code of ``benchmarks/bench_local.py`` (a thin wrapper around :func:`main`):

    nice .venv/bin/python benchmarks/bench_local.py --bundle B.safetensors --clean ../shared/data/eval/cbsd68

Composites made from clean photos: the left part carries one degradation, the right part another (or
none, ``clean``), with a hard edge down the middle (``halves``) or a linear blend over the middle third
(``blend``): ``composite = w * degrade(photo, A) + (1 - w) * degrade(photo, B)`` with ``w`` the share of
``A`` per column. Each is restored by

- ``um``: the UM alone;
- ``global``: swap mode, one ``c`` for the frame from the classifier (what a whole-frame ADS does);
- ``local``: local mode, the classifier's window coefficients as a smooth map;
- ``oracle``: local mode with the true map (``c = w * onehot(A) + (1 - w) * onehot(B)``, ``clean`` = 0);

and scored (PSNR, RGB in [0, 1]) on the left and right halves against the clean photo. Degradations are
keyed per photo, side and seed (reproducible). Then the frame time of local mode at 480p against swap
and branch mode, side by side in alternating rounds on the same backend (median of the rounds).

Writes ``local.csv`` (quality rows, with the machine columns) and ``local_latency.csv`` into --results.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from adsrt.bench.timing import Machine, comma_list, percentiles, torch_threads
from adsrt.fileio import upsert_csv
from adsrt.imageio import list_images, try_read_image
from adsrt.metrics import psnr
from adsrt.runtime.coefficient_map import MAP_STEP, CoefficientGrid, window_lattice
from adsrt.runtime.restorer import Restorer, RestorerConfig, resolve_bundle
from adsrt.train.degradations import degrade, keyed_rng, parse_specs

log = logging.getLogger(__name__)

METHODS = ("input", "um", "global", "local", "oracle")
LAYOUTS = ("halves", "blend")
DEFAULT_PAIRS = "rain:3|clean,noise:25|clean,lowlight:3|clean,rain:3|noise:25,blur:2|lowlight:3"
QUALITY_COLUMNS = ("pair", "layout", "n", *(f"{m}_{side}" for m in METHODS for side in ("left", "right")),
                   "local_gain", "bundle", "data", "seed", "date", "device", "cpu", "threads", "torch")
QUALITY_KEY = ("pair", "layout", "bundle")
LATENCY_COLUMNS = ("backend", "size", "mode", "p20_ms", "p50_ms", "p80_ms", "ratio_to_swap", "windows", "bundle",
                   "date", "device", "cpu", "threads", "torch", "onnxruntime")
LATENCY_KEY = ("backend", "size", "mode", "bundle")


def left_weight(width: int, layout: str) -> np.ndarray:
    """Share ``w`` of the left degradation per column: 1 then 0 at the middle (``halves``), or falling
    linearly over the middle third (``blend``)."""
    x = np.arange(width) + 0.5
    if layout == "halves":
        return (x < width / 2).astype(np.float32)
    if layout == "blend":
        return np.clip((2 * width / 3 - x) / (width / 3), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def composite(clean: np.ndarray, left: str, right: str, layout: str, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The composite of ``clean`` (uint8 RGB) with ``left`` and ``right`` specs (``clean``: untouched) and
    its per-column left share ``w``."""
    sides = [clean if spec == "clean" else degrade(clean, parse_specs(spec), keyed_rng(seed, spec, side, key))
             for spec, side in ((left, "left"), (right, "right"))]
    w = left_weight(clean.shape[1], layout)[None, :, None]
    mixed = w * sides[0].astype(np.float32) + (1 - w) * sides[1].astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8), w[0, :, 0]


def oracle_grid(degradations: Sequence[str], left: str, right: str, w: np.ndarray, height: int) -> CoefficientGrid:
    """The true coefficient map of a composite: one column of centres every MAP_STEP pixels."""
    k = len(degradations)
    onehot = {name: np.eye(k, dtype=np.float32)[i] for i, name in enumerate(degradations)}
    a, b = (onehot.get(parse_specs(s)[0].name, np.zeros(k, np.float32)) if s != "clean" else np.zeros(k, np.float32)
            for s in (left, right))
    xs = np.arange(0, len(w), MAP_STEP) + (MAP_STEP - 1) / 2
    ws = np.interp(xs, np.arange(len(w)), w)
    values = (ws[None, :] * a[:, None] + (1 - ws[None, :]) * b[:, None])[:, None, :]
    return CoefficientGrid(values, ys=[height / 2], xs=xs)


def _halves(image: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    mid = image.shape[1] // 2  # capped at 100 dB: an untouched clean half is infinitely close
    return (min(100.0, psnr(image[:, :mid], clean[:, :mid], data_range=255.0)),
            min(100.0, psnr(image[:, mid:], clean[:, mid:], data_range=255.0)))


def quality(bundle_path: str, clean_dir: str, pairs: Sequence[str], layouts: Sequence[str], seed: int = 0,
            max_images: int | None = None) -> list[dict]:
    bundle, label = resolve_bundle(bundle_path)
    cfg = {"backend": "torch", "device": "cpu", "memory_limit_mb": 0.0}
    um = Restorer(bundle, RestorerConfig(mode="um", **cfg))
    swap = Restorer(bundle, RestorerConfig(mode="swap", **cfg))
    local = Restorer(bundle, RestorerConfig(mode="local", **cfg))
    paths = list_images(clean_dir)[:max_images]
    photos = [(p.name, img) for p in paths if (img := try_read_image(p)) is not None]
    from tqdm import tqdm

    rows = []
    for pair in pairs:
        left, _, right = pair.partition("|")
        for layout in layouts:
            scores = {m: [] for m in METHODS}
            for name, clean in tqdm(photos, desc=f"{pair} {layout}", unit="img"):
                image, w = composite(clean, left, right, layout, seed, name)
                with torch.inference_mode():
                    outs = {"input": image, "um": um.restore(image), "global": swap.restore(image),
                            "local": local.restore(image),
                            "oracle": local.restore_with_map(image, oracle_grid(bundle.degradations, left, right, w,
                                                                                image.shape[0]))}
                for m, out in outs.items():
                    scores[m].append(_halves(out, clean))
            row = {"pair": pair, "layout": layout, "n": len(photos), "bundle": label, "data": str(clean_dir),
                   "seed": seed}
            for m in METHODS:
                mean = np.mean(scores[m], axis=0)
                row[f"{m}_left"], row[f"{m}_right"] = f"{mean[0]:.2f}", f"{mean[1]:.2f}"
            gain = np.mean(np.asarray(scores["local"]) - np.asarray(scores["global"]))
            row["local_gain"] = f"{gain:+.2f}"
            rows.append(row)
            log.info("%s %s: %s", pair, layout, {m: (row[f'{m}_left'], row[f'{m}_right']) for m in METHODS})
    return rows


def latency(bundle_path: str, backends: Sequence[str], size: tuple[int, int], rounds: int, cache_dir: str | None) -> list[dict]:
    """Frame time of swap, branch and local mode on one photo-sized frame, in alternating rounds."""
    import cv2
    from skimage import data

    bundle, label = resolve_bundle(bundle_path)
    h, w = size
    frame = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
    rows = []
    for backend in backends:
        cache = {"cache_dir": cache_dir} if backend != "torch" else {}
        restorers = {m: Restorer(bundle, RestorerConfig(backend=backend, device="cpu", mode=m, memory_limit_mb=0, **cache))
                     for m in ("swap", "branch", "local")}
        for r in restorers.values():  # warm-up (graph sessions, first-call allocations)
            r.restore(frame)
            r.restore(frame)
        samples = {m: [] for m in restorers}
        for _ in range(rounds):
            for m, r in restorers.items():
                t0 = time.perf_counter()
                r.restore(frame)
                samples[m].append((time.perf_counter() - t0) * 1e3)
        swap_p50 = percentiles(samples["swap"])[1]
        ys, xs, _, _ = window_lattice(h, w, bundle.classifier.window)
        for m, s in samples.items():
            p20, p50, p80 = percentiles(s)
            rows.append({"backend": backend, "size": f"{w}x{h}", "mode": m, "p20_ms": f"{p20:.1f}",
                         "p50_ms": f"{p50:.1f}", "p80_ms": f"{p80:.1f}", "ratio_to_swap": f"{p50 / swap_p50:.2f}",
                         "windows": str(len(ys) * len(xs) if m == "local" else bundle.classifier.grid ** 2),
                         "bundle": label})
    return rows


def picture(bundle_path: str, photo: Path, pair: str, layout: str, out: Path, seed: int = 0) -> Path:
    """One composite as the user sees it: input | global c | local (with its map) | oracle map | clean, PSNR
    per half in the titles. Written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adsrt.fileio import atomic_write_bytes
    from adsrt.imageio import read_image

    bundle, _ = resolve_bundle(bundle_path)
    clean = read_image(photo)
    left, _, right = pair.partition("|")
    image, w = composite(clean, left, right, layout, seed, photo.name)
    cfg = {"backend": "torch", "device": "cpu", "memory_limit_mb": 0.0}
    local = Restorer(bundle, RestorerConfig(mode="local", **cfg))
    with torch.inference_mode():
        panels = [("input", image), ("global c (swap)", Restorer(bundle, RestorerConfig(mode="swap", **cfg)).restore(image)),
                  ("window map (local)", local.restore(image))]
        grid = local.last.grid
        panels.append(("oracle map", local.restore_with_map(
            image, oracle_grid(bundle.degradations, left, right, w, image.shape[0]))))
    panels.append(("clean", clean))
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 5.2),
                             gridspec_kw={"height_ratios": [3, 1.2]})
    for ax, (title, img) in zip(axes[0], panels, strict=True):
        ax.imshow(img)
        if title != "clean":
            a, b = _halves(img, clean)
            title += f"\n{a:.2f} | {b:.2f} dB"
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    cmap = grid.region(0, 0, *image.shape[:2])
    for i, ax in enumerate(axes[1]):
        if i < len(bundle.degradations):
            ax.imshow(cmap[i], vmin=0, vmax=1, cmap="magma")
            ax.set_title(f"local map: c_{bundle.degradations[i]}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{left} | {right} ({layout}), {photo.name}: PSNR of the left | right half", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _table(rows: list[dict]) -> str:
    head = "| pair (left \\| right) | layout | n | " + " | ".join(f"{m} L / R" for m in METHODS) + " | local - global |"
    lines = [head, "|" + "---|" * (len(METHODS) + 4)]
    for r in rows:
        cells = " | ".join(f"{r[f'{m}_left']} / {r[f'{m}_right']}" for m in METHODS)
        pair = r["pair"].replace("|", " \\| ")  # a literal | inside a markdown cell
        lines.append(f"| {pair} | {r['layout']} | {r['n']} | {cells} | {r['local_gain']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle file or bundled model name (a windowed classifier)")
    p.add_argument("--clean", help="folder of clean photos for the composites (skip the quality rows if absent)")
    p.add_argument("--pairs", type=comma_list, default=comma_list(DEFAULT_PAIRS),
                   help=f"LEFT|RIGHT,... specs or clean (default {DEFAULT_PAIRS})")
    p.add_argument("--layouts", type=comma_list, default=LAYOUTS)
    p.add_argument("--max-images", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-backends", type=comma_list, default=("torch", "onnxruntime"),
                   help="backends of the latency rows ('' for none)")
    p.add_argument("--latency-size", default="480x640", help="HxW of the latency frame (default 480x640)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir", help="onnxruntime graph cache")
    p.add_argument("--results", type=Path, default=default_results)
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--picture", type=Path, help="also draw one composite of --picture-photo as this PNG")
    p.add_argument("--picture-photo", type=Path, help="the clean photo of the picture")
    p.add_argument("--picture-pair", default="blur:2|lowlight:3")
    p.add_argument("--picture-layout", default="halves", choices=LAYOUTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with torch_threads(args.threads):
        machine = Machine.detect(torch.device("cpu"))
        if args.clean:
            rows = quality(args.bundle, args.clean, args.pairs, args.layouts, args.seed, args.max_images)
            print(_table(rows))
            if not args.no_csv:
                rows = [{**r, **machine.row(QUALITY_COLUMNS)} for r in rows]
                upsert_csv(args.results / "local.csv", rows, key=QUALITY_KEY, columns=QUALITY_COLUMNS)
        if args.picture:
            if not args.picture_photo:
                raise SystemExit("--picture needs --picture-photo")
            out = picture(args.bundle, args.picture_photo, args.picture_pair, args.picture_layout, args.picture, args.seed)
            print(f"picture -> {out}")
        if args.latency_backends:
            h, w = (int(v) for v in args.latency_size.lower().split("x"))
            rows = latency(args.bundle, args.latency_backends, (h, w), args.rounds, args.cache_dir)
            for r in rows:
                print(f"{r['backend']:>12} {r['size']} {r['mode']:>7}: p50 {r['p50_ms']} ms "
                      f"(x{r['ratio_to_swap']} of swap, {r['windows']} classifier windows)")
            if not args.no_csv:
                rows = [{**r, **machine.row(LATENCY_COLUMNS)} for r in rows]
                upsert_csv(args.results / "local_latency.csv", rows, key=LATENCY_KEY, columns=LATENCY_COLUMNS)
    return 0
