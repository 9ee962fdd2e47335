"""Render docs/degradations.png: sample photos under every synthetic degradation of adsrt.

Rows are scikit-image sample photos (centre-cropped to a square, resized); columns are the clean
photo, each base degradation at a moderate and a strong level, and ``mix``. Every cell uses a fixed
seed, so the figure is reproducible.

    .venv/bin/python docs/make_degradation_grid.py [--out docs/degradations.png] [--size 168]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from adsrt.train.degradations import DegradationSpec, degrade, plan_mix, sample_blur_kernel

PHOTOS = ("astronaut", "coffee", "chelsea")
# (name, level) per column; None is the clean photo.
COLUMNS: tuple[tuple[str, float] | None, ...] = (
    None,
    ("noise", 25),
    ("noise", 50),
    ("blur", 2),
    ("blur", 4),
    ("rain", 2),
    ("rain", 5),
    ("haze", 1.0),
    ("haze", 2.5),
    ("snow", 2),
    ("snow", 5),
    ("lowlight", 3),
    ("lowlight", 4.5),
    ("mix", 0.5),
)
SEED = 7
# Show both blur kernels: the moderate column Gaussian, the strong one motion (the seed is searched).
BLUR_KIND = {2: "gaussian", 4: "motion"}
LABEL_HEIGHT = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX


def load_photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photo, centre-cropped to a square and resized to ``size`` px (RGB uint8)."""
    img = getattr(data, name)()
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return cv2.resize(img[top : top + s, left : left + s], (size, size), interpolation=cv2.INTER_AREA)


def label(cell: np.ndarray, text: str, height: int = LABEL_HEIGHT, scale: float = 0.45) -> np.ndarray:
    """Put ``text`` in a white band above ``cell``."""
    band = np.full((height, cell.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(band, text, (4, height - 7), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, cell], axis=0)


def render(size: int) -> np.ndarray:
    rows = []
    for r, photo in enumerate(PHOTOS):
        clean = load_photo(photo, size)
        cells = []
        for c, column in enumerate(COLUMNS):
            seed = SEED + 100 * r + c
            if column is None:
                cells.append(label(clean, f"clean ({photo})"))
                continue
            name, level = column
            spec = DegradationSpec(name, level)
            text = str(spec)
            if name == "blur":
                # Same seed, same first draws: sample_blur_kernel tells which kernel blur will use.
                while sample_blur_kernel(level, np.random.default_rng(seed))[1] != BLUR_KIND[level]:
                    seed += 1000
                text += f" ({BLUR_KIND[level]})"
            out = degrade(clean, [spec], seed)
            if name == "mix":
                # Same seed, same first draws: tells which two degradations this cell got.
                text = "mix: " + "+".join(str(s) for s in plan_mix(level, np.random.default_rng(seed)))
            cells.append(label(out, text, scale=0.45 if len(text) < 26 else 0.36))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("degradations.png"))
    parser.add_argument("--size", type=int, default=168, help="cell size in px (default 168)")
    args = parser.parse_args()
    grid = render(args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(
        str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    ):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
