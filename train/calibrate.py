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

Before the temperature, :func:`calibrate_clean_prior` sets the classifier's prior for "clean". A classifier
trained on balanced classes calls too many clean frames degraded for a camera, whose frames are mostly
fine (the families candidate called 75% of clean CBSD68 photos clean), and every false alarm blends a
delta into a frame that needed none. The prior is an operating point, as a detector's threshold is: the
smallest logit bias b for "clean" with which ``clean_recall`` (default 90%) of the clean frames are called
clean, measured on whole frames of the classifier's *held-out training* photos (the split of
:func:`adsrt.train.trainer.split_datasets`), degraded and camera-processed as the classifier was trained
(half of them left clean). b is folded into the bias of the classifier's head for "clean", so every
backend (torch, ONNX, TensorRT, the tiled and windowed paths) applies it with no format change;
``metrics["clean_prior"]`` records it with the recalls before and after. Calibrating again measures the
prior already folded in, so it adds about nothing.
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

__all__ = ["CalibrateConfig", "calibrate_clean_prior", "calibrate_temperature", "fold_clean_bias", "prior_frames",
           "run_calibrate"]

CANDIDATES = (1.0, 0.5, 0.25, 0.1)
# The clean prior's search: logit biases from -4 to 8 in steps of 0.05 (a logit of 8 is a factor of ~3000 in
# the odds; a classifier that needs more than that to call clean frames clean is broken, not uncalibrated).
PRIOR_BIASES = tuple(round(-4.0 + 0.05 * i, 2) for i in range(241))


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
    # The clean prior (see the module doc): the share of held-out clean frames to call clean (None: leave the
    # prior as it is), over how many whole frames, and the classifier's data settings they are drawn with.
    clean_recall: float | None = 0.9
    prior_frames: int = 600
    dim_weather: float = 0.3  # the classifier's (Preset.dc_dim_weather)
    val_fraction: float = 0.1  # the classifier's held-out share of the photos (ClassifierTrainConfig)

    def __post_init__(self) -> None:
        if self.clean_recall is not None and not 0.0 < self.clean_recall < 1.0:
            raise AdsrtError(f"clean_recall must be in (0, 1), got {self.clean_recall}")
        if self.prior_frames < 1:
            raise AdsrtError(f"prior_frames must be >= 1, got {self.prior_frames}")


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


def prior_frames(data: str, degradations, *, frames: int, seed: int, dim_weather: float,
                 val_fraction: float) -> tuple[list[np.ndarray], list[int]]:
    """Whole frames of the held-out photos of ``data`` (uint8 RGB) and their labels (``len(degradations)``:
    clean), made as the classifier's training samples are: half left clean, the rest degraded at levels of
    each degradation's training range, dim weather, and camera nuisances on every frame."""
    from adsrt.train.camera import NuisanceConfig
    from adsrt.train.trainer import class_specs, split_datasets

    whole = 1 << 16  # crop sides are capped at the photo's: whole photos
    _, val = split_datasets(data, class_specs(degradations), crop_size=8, samples_per_epoch=1, val_samples=frames,
                            val_fraction=val_fraction, seed=seed + 211, clean_fraction=0.5, nuisance=NuisanceConfig(),
                            crop_range=(whole, whole), dim_weather=dim_weather)
    images, labels = [], []
    for i in range(len(val)):
        sample = val[i]
        images.append((sample["input"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        labels.append(int(sample["label"]))
    return images, labels


def calibrate_clean_prior(bundle, images: list[np.ndarray], labels: list[int], clean_recall: float = 0.9,
                          progress: bool = False) -> tuple[float, dict]:
    """The smallest logit bias b (of :data:`PRIOR_BIASES`) for "clean" with which ``clean_recall`` of the clean
    frames among ``images`` are called clean, and the report (see the module doc). The runtime's classifier
    path at T = 1 (:meth:`Restorer.classify`) scores each frame once; log-probabilities are logits up to a
    constant per frame, so a shifted argmax is the biased classifier's top-1."""
    from tqdm import tqdm

    if bundle.classifier is None:
        raise AdsrtError("this bundle has no classifier to calibrate")
    k = len(bundle.degradations)
    if k not in labels:
        raise AdsrtError("the clean prior needs clean frames among its frames")
    restorer = Restorer(bundle, RestorerConfig(backend="torch", device="cpu", temperature=1.0, memory_limit_mb=0),
                        source="calibrate")
    scores = np.array([list(restorer.classify(image).values())
                       for image in tqdm(images, desc="clean prior", unit="frame", disable=not progress)])
    logp, truth = np.log(np.maximum(scores, 1e-30)), np.asarray(labels)
    clean = truth == k

    def recalls(b: float) -> dict[str, float]:
        top = np.argmax(logp + b * (np.arange(k + 1) == k), axis=1)
        per = {name: float(np.mean(top[truth == i] == i)) for i, name in enumerate(bundle.degradations)
               if np.any(truth == i)}
        return {"clean": float(np.mean(top[clean] == k)), "degraded": float(np.mean(top[~clean] == truth[~clean]))
                if np.any(~clean) else float("nan"), "per_degradation": per}

    table = {b: recalls(b) for b in PRIOR_BIASES}
    reached = [b for b in PRIOR_BIASES if table[b]["clean"] >= clean_recall]
    bias = reached[0] if reached else PRIOR_BIASES[-1]
    if not reached:
        log.warning("clean prior: %.0f%% of clean frames called clean even at bias %g; keeping that",
                    100 * table[bias]["clean"], bias)
    report = {"bias": bias, "clean_recall_target": clean_recall, "frames": len(images), "clean_frames": int(clean.sum()),
              "before": recalls(0.0), "after": table[bias],
              "protocol": "whole frames of the classifier's held-out training photos, half clean, camera nuisances"}
    return bias, report


def fold_clean_bias(bundle, bias: float):
    """A copy of ``bundle`` whose classifier adds ``bias`` to the "clean" logit (the bias of its head)."""
    state = dict(bundle.classifier_state)
    head = state["head.bias"].clone()
    head[len(bundle.degradations)] += bias
    state["head.bias"] = head
    return dataclasses.replace(bundle, classifier_state=state)


def run_calibrate(cfg: CalibrateConfig) -> tuple[float, dict]:
    """Calibrate ``cfg.bundle`` on photos from ``cfg.data`` and save it (see the module doc)."""
    from adsrt.bundle import save_bundle
    from adsrt.imageio import list_images, read_image
    from adsrt.runtime.restorer import resolve_bundle

    bundle, label = resolve_bundle(cfg.bundle)
    out = cfg.out
    if out is None:  # refused before any work
        if label.startswith("default (") or not Path(str(cfg.bundle)).is_file():
            raise AdsrtError("give --out: a bundled model is not rewritten in place")
        out = cfg.bundle
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
    if cfg.clean_recall is not None:
        if bundle.classifier is None:
            raise AdsrtError("this bundle has no classifier to calibrate")
        images, labels = prior_frames(cfg.data, bundle.degradations, frames=cfg.prior_frames, seed=cfg.seed,
                                      dim_weather=cfg.dim_weather, val_fraction=cfg.val_fraction)
        bias, prior = calibrate_clean_prior(bundle, images, labels, cfg.clean_recall, cfg.progress)
        earlier = (bundle.metrics.get("clean_prior") or {}).get("total_bias", 0.0)
        prior = {**prior, "data": str(Path(cfg.data).resolve()), "seed": cfg.seed, "total_bias": round(earlier + bias, 4)}
        log.info("clean prior %s: bias %+g -> clean frames called clean %.1f%% (was %.1f%%), degraded frames right "
                 "%.1f%% (was %.1f%%)", label, bias, 100 * prior["after"]["clean"], 100 * prior["before"]["clean"],
                 100 * prior["after"]["degraded"], 100 * prior["before"]["degraded"])
        bundle = fold_clean_bias(bundle, bias)
        bundle.metrics = {**bundle.metrics, "clean_prior": prior}
    best, table = calibrate_temperature(bundle, photos, cfg.candidates, cfg.seed, cfg.progress)
    log.info("calibrate %s: mean ADS PSNR per T %s -> T = %g",
             label, {t: round(r["mean"], 2) for t, r in table.items()}, best)
    bundle.classifier = dataclasses.replace(bundle.classifier, temperature=best)
    bundle.metrics = {**bundle.metrics, "temperature_calibration": {
        "data": str(Path(cfg.data).resolve()), "images": len(photos), "crop": cfg.crop, "seed": cfg.seed,
        "levels": "drawn from each degradation's training range", "psnr": table, "temperature": best}}
    save_bundle(bundle, out)
    return best, table
