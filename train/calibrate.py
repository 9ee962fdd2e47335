"""Calibrate the softmax temperature of a bundle's classifier on training photos (never evaluation data).

The runtime blends ``c = softmax(logits / T)[:k]``. With T = 1 a classifier that is right on its top
guess can still be soft (on hazy photos the default model gave p(haze) ~0.6, the rest to blur and clean),
and blending the other degradations' deltas in at those weights cost more than the right delta gained:
ADS fell below the UM on haze although the true c gains +1.4 dB. A temperature T < 1 sharpens c.

:func:`calibrate_temperature` degrades a few training photos with every degradation of the bundle at
levels drawn from its training range, restores each with the runtime's
:class:`adsrt.runtime.restorer.Restorer` (torch backend) at each candidate T, and keeps the T with the
best mean PSNR over degradations (ties within 0.01 dB: the larger T). The Restorer is the frame path a
user runs (input contract, classifier windows, fused update, 8-bit output), so T is chosen for what
``adsrt restore`` produces. :func:`run_calibrate` writes it into the bundle
(``ClassifierConfig.temperature``) with the table in ``metrics["temperature_calibration"]``.
``adsrt train calibrate`` runs it; ``adsrt train all`` runs it as its last stage.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adsrt.errors import AdsrtError
from adsrt.metrics import psnr
from adsrt.runtime.restorer import Restorer, RestorerConfig

log = logging.getLogger(__name__)

__all__ = ["CalibrateConfig", "calibrate_temperature", "run_calibrate"]

CANDIDATES = (1.0, 0.5, 0.25, 0.1)


@dataclass
class CalibrateConfig:
    bundle: str  # file or bundled model name
    data: str  # training photos (a folder); never the evaluation set
    out: str | None = None  # None: rewrite the bundle file in place (atomically)
    candidates: tuple[float, ...] = CANDIDATES
    images: int = 16
    crop: int = 192  # centre crop of each photo (keeps it fast; the classifier sees 3x3 windows of it)
    seed: int = 0
    progress: bool = True


def calibrate_temperature(bundle, photos: list[np.ndarray], candidates=CANDIDATES, seed: int = 0,
                          progress: bool = False) -> tuple[float, dict[str, dict[str, float]]]:
    """The best temperature and the table ``{str(T): {degradation: mean PSNR, "mean": ...}}`` (see module doc)."""
    from tqdm import tqdm

    from adsrt.train.degradations import degrade, keyed_rng, parse_specs, sample_level

    if bundle.classifier is None:
        raise AdsrtError("this bundle has no classifier to calibrate")
    if not photos:
        raise AdsrtError("calibration needs at least one photo")
    if not candidates or any(not t > 0 for t in candidates):
        raise AdsrtError(f"temperature candidates must be > 0, got {candidates}")
    # One restorer per candidate, each with its temperature: the classifier runs once per T and image,
    # which costs little next to the restorer and keeps every candidate on the runtime's own path.
    restorers = {t: Restorer(bundle, RestorerConfig(backend="torch", device="cpu", temperature=t, memory_limit_mb=0),
                             source="calibrate") for t in candidates}
    scores = {t: {d: [] for d in bundle.degradations} for t in candidates}
    work = [(d, i) for d in bundle.degradations for i in range(len(photos))]
    with torch.inference_mode():
        for d, i in tqdm(work, desc="calibrate T", unit="img", disable=not progress):
            rng = keyed_rng(seed, "calibrate", d, str(i))
            spec = f"{d}:{sample_level(d, rng):.4g}"
            degraded = degrade(photos[i], parse_specs(spec), rng)
            for t, restorer in restorers.items():
                restored = restorer.restore(degraded)
                scores[t][d].append(min(psnr(restored, photos[i], data_range=255), 100.0))
    table = {}
    for t in candidates:
        row = {d: float(np.mean(v)) for d, v in scores[t].items()}
        row["mean"] = float(np.mean(list(row.values())))
        table[f"{t:g}"] = row
    best = max(candidates, key=lambda t: (round(table[f"{t:g}"]["mean"], 2), t))
    return best, table


def run_calibrate(cfg: CalibrateConfig) -> tuple[float, dict]:
    """Calibrate ``cfg.bundle`` on photos from ``cfg.data`` and save it (see the module doc)."""
    from adsrt.bundle import save_bundle
    from adsrt.imageio import list_images, read_image
    from adsrt.runtime.restorer import resolve_bundle

    bundle, label = resolve_bundle(cfg.bundle)
    paths = list_images(cfg.data)
    if not paths:
        raise AdsrtError(f"{cfg.data}: no images to calibrate on")
    if cfg.images < 1:
        raise AdsrtError(f"images must be >= 1, got {cfg.images}")
    step = max(1, len(paths) // cfg.images)
    photos = []
    for path in paths[::step][: cfg.images]:
        image = read_image(path)
        h, w = image.shape[:2]
        top, left = max(0, (h - cfg.crop) // 2), max(0, (w - cfg.crop) // 2)
        photos.append(np.ascontiguousarray(image[top : top + cfg.crop, left : left + cfg.crop]))
    best, table = calibrate_temperature(bundle, photos, cfg.candidates, cfg.seed, cfg.progress)
    log.info("calibrate %s: mean ADS PSNR per T %s -> T = %g",
             label, {t: round(r["mean"], 2) for t, r in table.items()}, best)
    bundle.classifier = dataclasses.replace(bundle.classifier, temperature=best)
    bundle.metrics = {**bundle.metrics, "temperature_calibration": {
        "data": str(Path(cfg.data).resolve()), "images": len(photos), "crop": cfg.crop, "seed": cfg.seed,
        "levels": "drawn from each degradation's training range", "psnr": table, "temperature": best}}
    out = cfg.out
    if out is None:
        if label.startswith("default (") or not Path(str(cfg.bundle)).is_file():
            raise AdsrtError("give --out: a bundled model is not rewritten in place")
        out = cfg.bundle
    save_bundle(bundle, out)
    return best, table
