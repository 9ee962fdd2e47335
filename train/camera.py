"""The camera between the scene and the file: sensor noise, white balance, tone curve and the camera's own
processing (denoise, sharpen, resize, JPEG), on float32 RGB images in [0, 1].

The degradation families (:mod:`adsrt.train.degradations`) use these for low light and noise, and
:func:`camera_nuisance` puts the mild version of the same pipeline on top of *every* training sample of
the classifier, "clean" included: real photos all went through some camera, so a classifier that may
read "has JPEG blocks" or "is perfectly noise-free" as a cue for a class learns our generator, not the
degradation.

Every function draws its randomness from the ``numpy.random.Generator`` it is given, and draws the same
numbers whatever the strength, so one seed gives one camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "GAMMA",
    "NuisanceConfig",
    "camera_nuisance",
    "colour_noise",
    "correlate",
    "jpeg",
    "sharpen",
    "tone_curve",
    "resample",
]

GAMMA = 2.2  # display gamma: encoded = linear ** (1 / GAMMA)


def tone_curve(linear: np.ndarray, kind: str, strength: float = 1.0) -> np.ndarray:
    """Encode linear light for display.

    ``gamma``: the plain 1/2.2 power. ``filmic``: the shoulder ``2x / (1 + x)`` (f(0) = 0, f(1) = 1,
    slope 2 in the shadows) before the gamma: like a phone camera's curve it lifts the shadows by up to a
    stop and rolls off the highlights; ``strength`` in [0, 1] blends it with the plain gamma. Input is
    clipped to [0, 1].
    """
    x = np.clip(linear, 0.0, 1.0)
    encoded = np.power(x, np.float32(1.0 / GAMMA))
    if kind == "gamma":
        return encoded
    if kind != "filmic":
        raise ValueError(f"unknown tone curve {kind!r}")
    filmic = np.power(2.0 * x / (1.0 + x), np.float32(1.0 / GAMMA))
    return (1.0 - strength) * encoded + strength * filmic


def colour_noise(
    linear: np.ndarray, full_scale: float, read_sigma: float, crosstalk: float, demosaic_sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Shot + read noise of a Bayer sensor, added to ``linear`` (HxWx3, [0, 1]), unclipped float32.

    Shot noise is Poisson on ``full_scale`` electrons at 1.0, read noise Gaussian ``read_sigma`` electrons.
    The noise is then shaped as a camera's processing shapes it: demosaicing interpolates each colour from
    neighbours, which correlates the noise over about a pixel (a Gaussian of ``demosaic_sigma`` px,
    renormalised so the per-pixel standard deviation stays), and the colour-correction matrix
    ``(1 + 2c) I - c`` (``c = crosstalk``; rows sum to 1, so grey stays grey) amplifies its chroma: the
    coloured blotches of night shots rather than the grey grain of AWGN.
    """
    # Read noise first: the Poisson sampler's number of draws depends on the signal (so on the level).
    read = rng.standard_normal(linear.shape, dtype=np.float32) * np.float32(read_sigma / full_scale)
    electrons = rng.poisson(np.clip(linear, 0.0, None).astype(np.float64) * full_scale).astype(np.float32)
    noise = (electrons - linear * np.float32(full_scale)) / np.float32(full_scale) + read
    if demosaic_sigma > 0.05:
        noise = correlate(noise, demosaic_sigma)
    # Diagonal 1 + 2c, off-diagonal -c: every row sums to 1, so grey stays grey and only chroma is amplified.
    ccm = (1.0 + 3.0 * crosstalk) * np.eye(3, dtype=np.float32) - np.float32(crosstalk)
    return linear + noise @ ccm.T


def correlate(noise: np.ndarray, sigma: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma`` px, with its per-pixel standard deviation kept."""
    g = cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma).astype(np.float32)
    # Filtering white noise by the 2-D kernel k = g g^T scales its variance by sum(k^2) = sum(g^2)^2,
    # so its standard deviation by sum(g^2): divide that back out.
    return cv2.sepFilter2D(noise, -1, g, g, borderType=cv2.BORDER_REFLECT) / np.float32(float((g**2).sum()))


def resample(x: np.ndarray, factor: float) -> np.ndarray:
    """Down-scale by ``factor`` (< 1, area) and back up (bilinear): a photo that was resized on its way."""
    h, w = x.shape[:2]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    if small == (w, h):
        return x
    return cv2.resize(cv2.resize(x, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)


def sharpen(x: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """Unsharp masking ``x + amount (x - G_sigma * x)``, unclipped."""
    return x + np.float32(amount) * (x - cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG at ``quality`` (OpenCV, 4:2:0 chroma), float32 [0, 1] in and out."""
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR array
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) * np.float32(1.0 / 255.0)


@dataclass(frozen=True)
class NuisanceConfig:
    """How often and how strongly :func:`camera_nuisance` applies each step (probabilities per sample)."""

    p_any: float = 0.8  # the rest of the samples come as they are
    p_resize: float = 0.3
    resize: tuple[float, float] = (0.7, 0.95)  # scale factor of the down-and-up resampling
    p_sharpen: float = 0.3
    sharpen: tuple[float, float] = (0.1, 0.6)  # unsharp amount (sigma 0.6-1.2 px)
    p_noise: float = 0.5
    noise: tuple[float, float] = (0.5, 3.0)  # sensor noise at mid-grey, sigma on the 0-255 scale
    p_jpeg: float = 0.6
    jpeg: tuple[int, int] = (30, 95)  # quality


def camera_nuisance(x: np.ndarray, rng: np.random.Generator, config: NuisanceConfig = NuisanceConfig()) -> np.ndarray:
    """Mild camera processing on a float32 image: resize, sharpen, sensor noise, JPEG, each with its
    probability (in that order, the order of a camera pipeline). The choices and strengths are drawn
    before any is used; the sensor noise field is drawn only when used, so call this last on a generator
    (as :class:`adsrt.train.data.DegradedImageDataset` does)."""
    c = config
    u = rng.random(5)
    factor, amount, sigma = rng.uniform(*c.resize), rng.uniform(*c.sharpen), rng.uniform(0.6, 1.2)
    noise_sigma = rng.uniform(*c.noise) / 255.0
    quality = int(rng.integers(c.jpeg[0], c.jpeg[1] + 1))
    if u[0] >= c.p_any:
        return x
    if u[1] < c.p_resize:
        x = resample(x, factor)
    if u[2] < c.p_sharpen:
        x = sharpen(x, amount, sigma)
    if u[3] < c.p_noise:
        # Signal-dependent like any sensor's (variance a x + b), sigma ``noise_sigma`` at mid-grey.
        var = np.float32(noise_sigma**2) * (0.5 + np.clip(x, 0.0, 1.0))
        x = x + np.sqrt(var) * rng.standard_normal(x.shape, dtype=np.float32)
    x = np.clip(x, 0.0, 1.0)
    if u[4] < c.p_jpeg:
        x = jpeg(x, quality)
    return x
