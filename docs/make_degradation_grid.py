"""Render the degradation figures of the README.

``docs/degradations.png``: the spread of each family. The first row holds the clean scikit-image sample
photos (resized to the 481 x 321 scale of the training photos, centre crop); every other row is one
degradation at its typical level, one random draw per cell (the cell's seed), labelled with the style it
drew; the last row is the clean class as the classifier trains on it, after the camera nuisances (each
cell one draw: 20% of draws leave the photo as it is).

``docs/degradations_real.png`` (with ``--real DIR``): real rainy and low-light photos (``DIR/rain``,
``DIR/lowlight``, evenly spaced by name, not picked) above our synthetic ones on the scikit-image photos at
levels spanning the training range, whole frames at the same scale, so a reader can judge the match by eye.
The real photos are measurements: nothing is fitted to them.

    .venv/bin/python docs/make_degradation_grid.py [--real ../shared/data/real] [--size 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from adsrt.imageio import list_images, read_image
from adsrt.train.camera import camera_nuisance
from adsrt.train.degradations import LEVELS, STYLES, DegradationSpec, degrade, keyed_rng

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
KINDS = ("noise", "blur", "rain", "haze", "snow", "lowlight")
# Synthetic levels beside the real photos: the training range, mildest to strongest.
REAL_LEVELS = {"rain": (1.5, 2.5, 3.5, 4.5, 5.0), "lowlight": (1.5, 2.25, 3.0, 3.75, 4.5)}
SEED = 7
LABEL_HEIGHT = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX
SCALE = 321  # the short side of the training photos (BSDS500): sizes in px mean the same as in training


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as RGB uint8 with its short side at the training photos' 321 px."""
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    f = SCALE / min(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    return img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def fit(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to fit inside width x height and pad with white (whole frames of any aspect)."""
    h, w = img.shape[:2]
    f = min(width / w, height / h)
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    out = np.full((height, width, 3), 255, np.uint8)
    top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def label(cell: np.ndarray, text: str, height: int = LABEL_HEIGHT) -> np.ndarray:
    """Put ``text`` in a white band above ``cell``."""
    band = np.full((height, cell.shape[1], 3), 255, dtype=np.uint8)
    scale = 0.45 if len(text) < 28 else 0.36
    cv2.putText(band, text, (4, height - 7), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, cell], axis=0)


def drawn_style(name: str, clean: np.ndarray, level: float, seed: int) -> str | None:
    """The style a seed draws, found by pinning each: pinning the drawn one gives the same image."""
    free = degrade(clean, DegradationSpec(name, level), seed)
    for style in STYLES.get(name, ()):
        if np.array_equal(degrade(clean, DegradationSpec(name, level, style), seed), free):
            return style
    return None


def render_spread(size: int) -> np.ndarray:
    photos = [centre_square(load_photo(p)) for p in PHOTOS]
    rows = [np.concatenate([label(cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA), f"clean ({n})")
                            for p, n in zip(photos, PHOTOS, strict=True)], axis=1)]
    for r, name in enumerate(KINDS):
        level = LEVELS[name].default
        cells = []
        for c, clean in enumerate(photos):
            seed = SEED + 100 * r + c
            out = degrade(clean, DegradationSpec(name, level), seed)
            style = drawn_style(name, clean, level, seed)
            text = f"{name}{'/' + style if style else ''}:{level:g} (draw {c + 1})"
            cells.append(label(cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA), text))
        rows.append(np.concatenate(cells, axis=1))
    cells = []
    for c, clean in enumerate(photos):
        x = camera_nuisance(clean.astype(np.float32) / 255.0, keyed_rng(SEED, "nuisance", str(c)))
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        cells.append(label(cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA), "clean, as the classifier trains"))
    rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def render_real(real: Path, size: int) -> np.ndarray:
    width, height = size + size // 5, size  # cells for whole 3:2 frames
    blocks = []
    for name, levels in REAL_LEVELS.items():
        paths = list_images(real / name)
        if not paths:
            raise SystemExit(f"{real / name}: no images")
        picks = [paths[round(i * (len(paths) - 1) / (len(levels) - 1))] for i in range(len(levels))]
        top = [label(fit(read_image(p), width, height), f"real {name}: {p.name}") for p in picks]
        bottom = []
        for c, (photo, level) in enumerate(zip(PHOTOS, levels, strict=True)):
            out = degrade(load_photo(photo), DegradationSpec(name, level), SEED + c)
            bottom.append(label(fit(out, width, height), f"ours: {name}:{level:g} ({photo})"))
        blocks += [np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)]
    return np.concatenate(blocks, axis=0)


def write(path: Path, grid: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"could not write {path}")
    print(f"wrote {path} ({grid.shape[1]}x{grid.shape[0]}, {path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("degradations.png"))
    parser.add_argument("--real", type=Path, help="folder with rain/ and lowlight/ real photos (the second figure)")
    parser.add_argument("--real-out", type=Path, default=Path(__file__).with_name("degradations_real.png"))
    parser.add_argument("--size", type=int, default=200, help="cell size in px (default 200)")
    args = parser.parse_args()
    write(args.out, render_spread(args.size))
    if args.real:
        write(args.real_out, render_real(args.real, args.size))


if __name__ == "__main__":
    main()
