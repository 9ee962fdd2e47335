"""Datasets for training and evaluation.

- :class:`DegradedImageDataset`: clean photos from a folder, random crop + horizontal flip, degraded on
  the fly by one of the given degradation specs (the label is its index; with ``clean_fraction`` > 0,
  some samples stay clean and get the extra label ``len(specs)``, the classifier's clean/unknown class).
  With ``nuisance`` set, every input, clean ones included, then goes through mild camera processing
  (:func:`adsrt.train.camera.camera_nuisance`: resize, sharpening, sensor noise, JPEG), the classifier's
  training data: a class must not be told apart by "has JPEG blocks" or "is perfectly noise-free".
- :class:`PairedImageDataset`: a folder of degraded images and a folder of clean ones, matched by file
  stem, for evaluation on fixed pairs.

Every sample is a dict of float32 CHW tensors in [0, 1] (``input``, ``target``) plus ``label`` and
``level``. Samples are deterministic for a given (seed, epoch, index), also across DataLoader workers.
Images are decoded once, up front, so a bad file fails the constructor with its name instead of
crashing a training run hours later.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from adsrt.errors import DataError, ImageReadError
from adsrt.imageio import IMAGE_EXTENSIONS, list_images, read_image
from adsrt.train.camera import GAMMA, NuisanceConfig, camera_nuisance
from adsrt.train.degradations import DegradationSpec, degrade, parse_specs, sample_level

log = logging.getLogger(__name__)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 HxWx3 -> float32 3xHxW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def folder_images(folder: str | os.PathLike, label: str = "data") -> list[Path]:
    """The images of ``folder`` by name; DataError naming the folder (``label``: its role) when it is
    missing or holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {label} folder does not exist")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the {label} folder")
    return paths


def load_folder(folder: str | os.PathLike) -> tuple[list[Path], list[np.ndarray]]:
    """Decode every image of ``folder``; DataError for a missing/empty folder or an unreadable file."""
    paths = folder_images(folder)
    images = []
    for path in paths:
        try:
            images.append(read_image(path))
        except ImageReadError as exc:
            raise DataError(f"unreadable training image: {exc}") from exc
    return paths, images


def split_holdout(data: str | os.PathLike, out: str | os.PathLike, heldout: int, *, seed: int = 0) -> dict:
    """Split the photos of ``data`` into ``out/train`` and ``out/heldout`` (``heldout`` photos, drawn by
    ``seed``), as symbolic links to the originals, and record the split in ``out/split.json``.

    Why: a quality report needs clean photos that no training stage has seen, and the evaluation folders
    are for development only; training on ``out/train`` keeps ``out/heldout`` unseen. The split depends
    only on the sorted file names and the seed, so it is the same on every machine. Rerunning with the same
    arguments is a no-op; ``out`` holding another split is refused (nothing is changed).
    """
    paths = folder_images(data)
    if not 1 <= heldout < len(paths):
        raise DataError(f"--heldout {heldout}: choose 1 to {len(paths) - 1} of the {len(paths)} photos of {data}")
    order = np.random.default_rng(seed).permutation(len(paths))
    held = sorted(paths[i].name for i in order[:heldout])
    held_set = set(held)
    record = {"source": str(Path(data).resolve()), "seed": seed, "heldout": held,
              "train": sorted(p.name for p in paths if p.name not in held_set)}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    manifest = out / "split.json"
    if manifest.is_file():
        try:
            existing = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest}: unreadable split record ({exc})") from exc
        if existing != record:
            raise DataError(f"{out} holds another split (source, seed or photos differ); choose another --out")
        return record
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; choose an empty or new folder")
    # Build next to the destination and rename, so an interrupted split leaves no half folder.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for part in ("train", "heldout"):
            (tmp / part).mkdir(parents=True)
            for name in record[part]:
                (tmp / part / name).symlink_to(Path(data).resolve() / name)
        (tmp / "split.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("split %s: %d for training, %d held out -> %s", data, len(record["train"]), heldout, out)
    return record


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` crop at a random position; smaller images are reflect-padded first."""
    h, w = image.shape[:2]
    if h < size or w < size:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top : top + size, left : left + size]


DIMMED_WEATHER = ("rain", "snow")  # the degradations :class:`DegradedImageDataset`'s ``dim_weather`` applies to


def dim_scene(image: np.ndarray, gamma: float, stops: float) -> np.ndarray:
    """A uint8 RGB frame at dusk or night: ``image ** gamma`` in display values (gamma > 1), then ``stops``
    less light (linear). The curve sinks shadows and mid-tones (0.5 -> 0.18 at gamma 2.5) and keeps the
    highlights (0.95 -> 0.88), so lamp-lit streaks and flakes stay bright on a dark scene and the
    weather's veil dims with it; the exposure darkens all of it."""
    x = np.power(image.astype(np.float32) / np.float32(255.0), np.float32(gamma)) * np.float32(2.0 ** (-stops / GAMMA))
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


class DegradedImageDataset(Dataset):
    """Random crops of clean photos, degraded on the fly, with the degradation's class label."""

    def __init__(
        self,
        folder: str | os.PathLike,
        specs: Sequence[str | DegradationSpec],
        *,
        crop_size: int = 128,
        samples_per_epoch: int | None = None,
        clean_fraction: float = 0.0,
        nuisance: NuisanceConfig | None = None,
        crop_range: tuple[int, int] | None = None,
        dim_weather: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not specs:
            raise DataError("no degradations given")
        self.specs: list[DegradationSpec] = [
            s if isinstance(s, DegradationSpec) else _single_spec(s) for s in specs
        ]
        if crop_size < 8:
            raise DataError(f"crop_size must be at least 8, got {crop_size}")
        if not 0.0 <= dim_weather <= 1.0:
            raise DataError(f"dim_weather must be in [0, 1], got {dim_weather}")
        if crop_range is not None and not 8 <= crop_range[0] <= crop_range[1]:
            raise DataError(f"crop_range must be (lo, hi) with 8 <= lo <= hi, got {crop_range}")
        if not 0.0 <= clean_fraction < 1.0:
            raise DataError(f"clean_fraction must be in [0, 1), got {clean_fraction}")
        self.paths, self.images = load_folder(folder)
        self.crop_size = crop_size
        # Whole-frame samples (adsrt.train.context): each side drawn in [lo, hi], at most the photo's, so
        # samples differ in size and shape (no batch collation; index them one at a time).
        self.crop_range = crop_range
        # Rain and snow fall at dusk and at night too: this share of their samples (and their targets) is
        # dimmed after the weather by a tone curve that keeps the highlights (dim_scene). Trained on daylight
        # weather only, the classifier called real rain at night "lowlight" with p = 1.0.
        self.dim_weather = dim_weather
        self.samples_per_epoch = samples_per_epoch or len(self.images)
        self.clean_fraction = clean_fraction
        self.nuisance = nuisance
        self.seed = seed
        self.epoch = 0
        log.info("%s: %d clean images, specs %s", folder, len(self.images), [str(s) for s in self.specs])

    @property
    def clean_label(self) -> int:
        return len(self.specs)

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops and degradations for another pass (call once per epoch, like DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Sample ``index`` of the current epoch, or of the given one for an ``(epoch, index)`` key (the
        training loops' batches, :mod:`adsrt.train.batches`)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self) or epoch < 0:
            raise IndexError(key)
        rng = np.random.default_rng([self.seed, epoch, index])
        image = self.images[index % len(self.images)]
        if self.crop_range is None:
            clean = random_crop(image, self.crop_size, rng)
        else:
            lo, hi = self.crop_range
            h, w = (int(rng.integers(min(lo, side), min(hi, side) + 1)) for side in image.shape[:2])
            top, left = int(rng.integers(0, image.shape[0] - h + 1)), int(rng.integers(0, image.shape[1] - w + 1))
            clean = image[top : top + h, left : left + w]
        if rng.random() < 0.5:
            clean = clean[:, ::-1]
        clean = np.ascontiguousarray(clean)
        if rng.random() < self.clean_fraction:
            label, level, degraded = self.clean_label, 0.0, clean
        else:
            label = int(rng.integers(len(self.specs)))
            spec = self.specs[label]
            if spec.level is None:
                spec = DegradationSpec(spec.name, sample_level(spec.name, rng), spec.style)
            level = float(spec.level)
            degraded = degrade(clean, spec, rng)
            if self.dim_weather and spec.name in DIMMED_WEATHER and rng.random() < self.dim_weather:
                gamma, stops = float(rng.uniform(1.6, 3.0)), float(rng.uniform(0.0, 1.5))
                clean, degraded = dim_scene(clean, gamma, stops), dim_scene(degraded, gamma, stops)
        if self.nuisance is not None:
            degraded = camera_nuisance(degraded.astype(np.float32) / np.float32(255.0), rng, self.nuisance)
            degraded = np.clip(np.rint(degraded * 255.0), 0, 255).astype(np.uint8)
        return {
            "input": to_tensor(degraded),
            "target": to_tensor(clean),
            "label": torch.tensor(label),
            "level": torch.tensor(level, dtype=torch.float32),
        }


def _single_spec(text: str) -> DegradationSpec:
    specs = parse_specs(text)
    if len(specs) != 1:
        raise DataError(f"{text!r}: one degradation per class (compose with 'mix' instead of '+')")
    return specs[0]


def find_pairs(degraded_dir: str | os.PathLike, clean_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Match degraded and clean images by file stem (so ``a.png`` pairs with ``a.jpg``).

    Raises DataError when either folder is empty, a stem is ambiguous, or any file lacks a partner.
    """
    sides = {}
    for label, folder in (("degraded", degraded_dir), ("clean", clean_dir)):
        by_stem: dict[str, Path] = {}
        for p in folder_images(folder, label):
            if p.stem in by_stem:
                raise DataError(f"{p.parent}: two images share the name {p.stem!r} ({by_stem[p.stem].name}, {p.name})")
            by_stem[p.stem] = p
        sides[label] = by_stem
    degraded, clean = sides["degraded"], sides["clean"]
    only_degraded = sorted(degraded.keys() - clean.keys())
    only_clean = sorted(clean.keys() - degraded.keys())
    if only_degraded or only_clean:
        raise DataError(
            f"unmatched pairs: {len(only_degraded)} degraded without clean {only_degraded[:5]}, "
            f"{len(only_clean)} clean without degraded {only_clean[:5]}"
        )
    return [(degraded[s], clean[s]) for s in sorted(degraded)]


class PairedImageDataset(Dataset):
    """Fixed (degraded, clean) pairs from two folders, matched by stem; whole images, no augmentation."""

    def __init__(self, degraded_dir: str | os.PathLike, clean_dir: str | os.PathLike, label: int = -1) -> None:
        self.pairs = find_pairs(degraded_dir, clean_dir)
        self.label = label
        # Decode everything up front: evaluation sets are small, and a bad pair fails here, by name.
        self.images: list[tuple[np.ndarray, np.ndarray]] = []
        for degraded_path, clean_path in self.pairs:
            d, c = self._read(degraded_path), self._read(clean_path)
            if d.shape != c.shape:
                raise DataError(f"size mismatch: {degraded_path.name} is {d.shape[:2]}, {clean_path.name} is {c.shape[:2]}")
            self.images.append((d, c))

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        try:
            return read_image(path)
        except ImageReadError as exc:
            raise DataError(str(exc)) from exc

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        degraded, clean = self.images[index]
        return {
            "input": to_tensor(degraded),
            "target": to_tensor(clean),
            "label": torch.tensor(self.label),
            "name": self.pairs[index][0].stem,
        }
