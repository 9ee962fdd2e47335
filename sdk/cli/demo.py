"""``adsrt demo``: the bundled model restoring degraded sample photos, with numbers and picture grids.

No network and no user data: the photos are scikit-image's samples (:func:`adsrt.imageio.sample_photos`),
centre-cropped to at most ``max_size`` (256x384 by default, so the demo stays quick on a small CPU).
Each photo is degraded with every degradation the bundle knows, at that degradation's typical level
(:data:`adsrt.train.degradations.LEVELS`), with a generator keyed by the seed, the photo name and the
spec text, so the inputs are the same on every run and machine. Each degraded photo is restored twice:

- UM: the unified model alone (``mode="um"``: no classifier, c = 0), the baseline;
- ADS: the classifier picks c and the deltas are swapped in (``mode="swap"``).

Per (photo, degradation) it records the classifier's top guess (over the degradations and ``clean``)
with its probability, and PSNR (RGB, 8-bit, data range 255, no crop) of the degraded input, the UM
output and the ADS output against the clean crop. :meth:`DemoResult.table` prints one row per
degradation, averaged over the photos, and a mean row. The output folder receives one grid per photo,
``demo_<photo>.png`` (a header row naming the columns, then one row per degradation:
degraded | UM | ADS | clean, each tile labelled), and ``demo.json`` with every number. All files are
written atomically.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from adsrt.errors import AdsrtError, OutputError

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "DEMO_PHOTOS", "HEADER_HEIGHT", "DegradationSummary", "DemoConfig", "DemoResult",
           "DemoRow", "center_crop", "run_demo"]

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea")
COLUMNS = ("degraded", "UM", "ADS", "clean")
HEADER_HEIGHT = 28  # pixels of the header row of a grid, above the tiles
JSON_NAME = "demo.json"

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_LINE_HEIGHT = 16
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DemoConfig:
    bundle: str | os.PathLike = "default"  # a bundle file or a bundled model name
    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt
    out: str | os.PathLike = "adsrt-demo"  # folder for the grids and demo.json (created if missing)
    seed: int = 0
    photos: tuple[str, ...] = DEMO_PHOTOS  # scikit-image sample names
    max_size: tuple[int, int] = (256, 384)  # (height, width) of the centre crop, at most
    progress: bool = True  # a tqdm bar over photos x degradations

    def check(self) -> None:
        if not self.photos:
            raise AdsrtError("the demo needs at least one photo")
        if len(self.max_size) != 2 or min(self.max_size) < 16:
            raise AdsrtError(f"max_size must be (height, width) of >= 16 pixels each, got {self.max_size}")


@dataclass
class DemoRow:
    """One photo under one degradation: the classifier's guess and PSNR (dB) of input, UM and ADS."""

    photo: str
    degradation: str
    level: float
    spec: str
    guess: str  # the classifier's top class (a degradation or "clean")
    guess_probability: float
    probabilities: dict[str, float]
    psnr_input: float
    psnr_um: float
    psnr_ads: float

    @property
    def correct(self) -> bool:
        return self.guess == self.degradation

    @property
    def gain(self) -> float:
        """ADS over UM, in dB."""
        return self.psnr_ads - self.psnr_um

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "correct": self.correct, "gain": self.gain}


@dataclass
class DegradationSummary:
    """One degradation averaged over the photos. ``probability`` is the mean probability the classifier
    gave to ``guess``, the most frequent top guess (ties: the first seen)."""

    degradation: str
    level: float
    guess: str
    probability: float
    correct: int
    count: int
    psnr_input: float
    psnr_um: float
    psnr_ads: float

    @property
    def gain(self) -> float:
        return self.psnr_ads - self.psnr_um

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "gain": self.gain}


@dataclass
class DemoResult:
    rows: list[DemoRow]  # one per (photo, degradation), photos in order, then degradations
    summary: list[DegradationSummary]  # one per degradation
    bundle: str  # where the bundle came from
    backend: str  # the ADS restorer's backend: name, mode, device, precision (Backend.describe)
    # mean total time of an ADS frame (decode -> classify -> update -> restore -> encode), the first left out
    ms_per_frame: float
    seed: int
    photo_sizes: dict[str, tuple[int, int]]  # (height, width) after the crop
    files: list[Path] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        """Means over every (photo, degradation) row; ``correct`` and ``count`` are totals."""
        return {
            "correct": sum(r.correct for r in self.rows),
            "count": len(self.rows),
            "psnr_input": _mean(r.psnr_input for r in self.rows),
            "psnr_um": _mean(r.psnr_um for r in self.rows),
            "psnr_ads": _mean(r.psnr_ads for r in self.rows),
            "gain": _mean(r.gain for r in self.rows),
        }

    def table(self) -> str:
        head = (f"{'degradation':<12}  {'level':>5}  {'top guess':<18}  {'correct':>7}  "
                f"{'PSNR input -> UM -> ADS (dB)':>28}  {'ADS-UM':>7}")
        lines = [head]
        for s in self.summary:
            guess = f"{s.guess} {s.probability:.0%}"
            lines.append(f"{s.degradation:<12}  {s.level:>5g}  {guess:<18}  {f'{s.correct}/{s.count}':>7}  "
                         f"{_psnr_chain(s.psnr_input, s.psnr_um, s.psnr_ads):>28}  {s.gain:>+7.2f}")
        m = self.mean
        correct = f"{m['correct']}/{m['count']}"
        lines.append(f"{'mean':<12}  {'':>5}  {'':<18}  {correct:>7}  "
                     f"{_psnr_chain(m['psnr_input'], m['psnr_um'], m['psnr_ads']):>28}  {m['gain']:>+7.2f}")
        lines.append(f"bundle:  {self.bundle}")
        lines.append(f"backend: {self.backend}")
        frames = max(len(self.rows) - 1, 1)
        lines.append(f"ADS restorer: {self.ms_per_frame:.1f} ms per frame (mean over {frames} frames of up "
                     f"to {_largest(self.photo_sizes)}, the first left out)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "backend": self.backend,
            "seed": self.seed,
            "psnr": "RGB, 8-bit, data range 255, no crop, against the clean crop",
            "photos": {name: list(size) for name, size in self.photo_sizes.items()},
            "rows": [r.to_json() for r in self.rows],
            "summary": [s.to_json() for s in self.summary],
            "mean": self.mean,
            "ms_per_frame": self.ms_per_frame,
        }


# ------------------------------------------------------------------------------------------------ run


def run_demo(config: DemoConfig) -> DemoResult:
    """Degrade the sample photos, restore them with UM and ADS, score them, write the grids and JSON."""
    from tqdm import tqdm

    from adsrt.imageio import sample_photos
    from adsrt.runtime.restorer import Restorer, RestorerConfig, resolve_bundle

    config.check()
    bundle, label = resolve_bundle(config.bundle)
    if bundle.classifier is None:
        raise AdsrtError(f"{label}: this bundle has no degradation classifier, which the demo's ADS "
                         "restorer needs")
    out = prepare_output_folder(config.out)  # before any restore: a bad --out fails fast
    photos = {name: center_crop(image, *config.max_size)
              for name, image in sample_photos(config.photos).items()}
    specs = degradation_specs(bundle.degradations)

    um = Restorer(bundle, RestorerConfig(backend=config.backend, mode="um"), source=label)
    ads = Restorer(bundle, RestorerConfig(backend=config.backend, mode="swap"), source=label)

    rows: list[DemoRow] = []
    tiles: dict[str, list[tuple[DemoRow, np.ndarray, np.ndarray, np.ndarray]]] = {name: [] for name in photos}
    frame_ms: list[float] = []
    with tqdm(total=len(photos) * len(specs), desc="demo", unit="img", disable=not config.progress) as bar:
        for photo_name, clean in photos.items():
            for name, level, spec in specs:
                degraded = degrade_photo(clean, spec, config.seed, photo_name)
                restored_um = um.restore(degraded)
                restored_ads = ads.restore(degraded)
                frame_ms.append(ads.timings.total)
                probabilities = ads.last.probabilities or ads.classify(degraded)  # None only if c was forced
                row = score_row(photo_name, name, level, spec, probabilities, clean, degraded, restored_um,
                                restored_ads)
                rows.append(row)
                tiles[photo_name].append((row, degraded, restored_um, restored_ads))
                bar.update()

    result = DemoResult(
        rows=rows,
        summary=summarize_degradations(rows, specs),
        bundle=label,
        backend=ads.backend.describe(),
        ms_per_frame=_mean(frame_ms[1:] or frame_ms),  # the first frame pays one-time allocations
        seed=config.seed,
        photo_sizes={name: image.shape[:2] for name, image in photos.items()},
    )
    result.files = write_outputs(out, result, photos, tiles)
    return result


def prepare_output_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` if missing and check that files can be written in it; OutputError otherwise."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the demo output here ({exc.strerror or exc})") from exc
    return folder


def center_crop(image: np.ndarray, max_height: int, max_width: int) -> np.ndarray:
    """The centre of ``image``, at most ``max_height`` x ``max_width`` (smaller sides are kept whole)."""
    h, w = image.shape[:2]
    ch, cw = min(h, max_height), min(w, max_width)
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(image[top:top + ch, left:left + cw])


def degradation_specs(degradations: list[str] | tuple[str, ...]) -> list[tuple[str, float, str]]:
    """``(name, typical level, spec text)`` for each degradation, e.g. ``("noise", 25.0, "noise:25")``."""
    from adsrt.train.degradations import LEVELS

    specs = []
    for name in degradations:
        if name not in LEVELS:
            raise AdsrtError(f"the bundle's degradation {name!r} has no synthetic version to demo (known: "
                             f"{', '.join(LEVELS)})")
        level = LEVELS[name].default
        specs.append((name, level, f"{name}:{level:g}"))
    return specs


def degrade_photo(clean: np.ndarray, spec: str, seed: int, photo_name: str) -> np.ndarray:
    """``clean`` degraded by ``spec`` with a generator keyed by (seed, photo name, spec): reproducible."""
    from adsrt.train.degradations import degrade, keyed_rng, parse_specs

    return degrade(clean, parse_specs(spec), keyed_rng(seed, photo_name, spec))


def score_row(photo: str, degradation: str, level: float, spec: str, probabilities: dict[str, float],
              clean: np.ndarray, degraded: np.ndarray, restored_um: np.ndarray,
              restored_ads: np.ndarray) -> DemoRow:
    from adsrt.metrics import psnr

    guess = max(probabilities, key=probabilities.__getitem__)
    return DemoRow(
        photo=photo,
        degradation=degradation,
        level=level,
        spec=spec,
        guess=guess,
        guess_probability=float(probabilities[guess]),
        probabilities={k: float(v) for k, v in probabilities.items()},
        psnr_input=psnr(degraded, clean, data_range=255),
        psnr_um=psnr(restored_um, clean, data_range=255),
        psnr_ads=psnr(restored_ads, clean, data_range=255),
    )


def summarize_degradations(rows: list[DemoRow],
                            specs: list[tuple[str, float, str]]) -> list[DegradationSummary]:
    summary = []
    for name, level, _ in specs:
        mine = [r for r in rows if r.degradation == name]
        guess = Counter(r.guess for r in mine).most_common(1)[0][0]
        summary.append(DegradationSummary(
            degradation=name,
            level=level,
            guess=guess,
            probability=_mean(r.probabilities[guess] for r in mine),
            correct=sum(r.correct for r in mine),
            count=len(mine),
            psnr_input=_mean(r.psnr_input for r in mine),
            psnr_um=_mean(r.psnr_um for r in mine),
            psnr_ads=_mean(r.psnr_ads for r in mine),
        ))
    return summary


# -------------------------------------------------------------------------------------------- outputs


def write_outputs(out: Path, result: DemoResult, photos: dict[str, np.ndarray],
                  tiles: dict[str, list[tuple[DemoRow, np.ndarray, np.ndarray, np.ndarray]]]) -> list[Path]:
    from adsrt.fileio import write_json
    from adsrt.imageio import write_image

    files = []
    for photo_name, clean in photos.items():
        path = out / f"demo_{photo_name}.png"
        write_image(path, photo_grid(clean, tiles[photo_name]))
        files.append(path)
    path = out / JSON_NAME
    write_json(path, {**result.to_json(), "files": [p.name for p in files]})
    files.append(path)
    log.info("demo: %d grids and %s written to %s", len(photos), JSON_NAME, out)
    return files


def photo_grid(clean: np.ndarray,
               rows: list[tuple[DemoRow, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """A header naming :data:`COLUMNS`, then per degradation: degraded | UM | ADS | clean, labelled."""
    h, w = clean.shape[:2]
    grid = np.zeros((HEADER_HEIGHT + h * len(rows), w * len(COLUMNS), 3), dtype=np.uint8)
    for col, title in enumerate(COLUMNS):
        _put_centered(grid, title, col * w, w, HEADER_HEIGHT)
    for i, (row, degraded, restored_um, restored_ads) in enumerate(rows):
        labels = (
            [f"{row.spec}  {_db(row.psnr_input)}", f"guess {row.guess} {row.guess_probability:.0%}"],
            [f"UM  {_db(row.psnr_um)}"],
            [f"ADS  {_db(row.psnr_ads)}  ({row.gain:+.2f})"],
            ["clean"],
        )
        images = (degraded, restored_um, restored_ads, clean)
        for col, (image, label) in enumerate(zip(images, labels, strict=True)):
            top, left = HEADER_HEIGHT + i * h, col * w
            tile = grid[top:top + h, left:left + w]
            tile[...] = image
            _label(tile, label)
    return grid


def _label(tile: np.ndarray, lines: list[str]) -> None:
    """Write ``lines`` in white on a black band at the top left of ``tile`` (in place)."""
    width = max(cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0] for text in lines) + 8
    band = tile[: _LINE_HEIGHT * len(lines) + 4, : min(width, tile.shape[1])]
    band[...] = (band.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darkened, the picture still shows
    for i, text in enumerate(lines):
        cv2.putText(tile, text, (4, _LINE_HEIGHT * (i + 1) - 2), _FONT, _FONT_SCALE, _WHITE, 1, cv2.LINE_AA)


def _put_centered(grid: np.ndarray, text: str, left: int, width: int, height: int) -> None:
    (tw, th), _ = cv2.getTextSize(text, _FONT, 0.6, 1)
    origin = (left + (width - tw) // 2, (height + th) // 2)
    cv2.putText(grid, text, origin, _FONT, 0.6, _WHITE, 1, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------- helpers


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def _db(value: float) -> str:
    return "inf dB" if math.isinf(value) else f"{value:.2f} dB"


def _psnr_chain(psnr_input: float, psnr_um: float, psnr_ads: float) -> str:
    return f"{psnr_input:.2f} -> {psnr_um:.2f} -> {psnr_ads:.2f}"


def _largest(sizes: dict[str, tuple[int, int]]) -> str:
    h, w = max(sizes.values(), key=lambda s: s[0] * s[1])
    return f"{w}x{h}"
