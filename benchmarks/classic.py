"""Classic restoration baselines: what a practitioner reaches for without a network (issue 16).

These are references for ``bench_baselines.py``, not product code: each is a textbook method written with
well-kept libraries (OpenCV, scikit-image, the ``bm3d`` package), on RGB uint8 ``H x W x 3`` in and out,
with one strength parameter that the benchmark sweeps on training photos.

- noise: OpenCV's non-local means (``fastNlMeansDenoisingColored``, strength ``h``); CBM3D (Dabov et al.
  2007, the ``bm3d`` package) given the true sigma: an oracle, reported apart.
- blur: unsharp masking (amount); Wiener and Richardson-Lucy deconvolution (scikit-image) given the true
  kernel: oracles, the upper bound of a non-blind method.
- haze: the dark channel prior (He, Sun and Tang, CVPR 2009) with the transmission refined by a guided
  filter (He, Sun and Tang, ECCV 2010), haze kept ``1 - omega``.
- low light: CLAHE on the L channel of Lab; gamma; and a Retinex-style illumination correction (the
  illumination is the max over RGB, smoothed edge-aware by a guided filter, as LIME does; Guo et al. 2017).
- rain and snow: a median filter; a self-guided filter (edge-preserving smoothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Context:
    """What an oracle baseline is told about the degradation: the true noise sigma (0-255) or blur kernel."""

    sigma: float | None = None
    kernel: np.ndarray | None = None


@dataclass(frozen=True)
class Baseline:
    """A method, its parameter grid (swept on training photos) and whether it is given oracle information."""

    name: str
    run: Callable[[np.ndarray, float, Context], np.ndarray]
    grid: tuple[float, ...] = field(default=(0.0,))
    oracle: bool = False
    param: str = ""  # what the swept number means


def _f(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide (float32 HxW in [0, 1]) on a float32 HxW or HxWxC source."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, size, borderType=cv2.BORDER_REFLECT)

    g = guide if src.ndim == 2 else guide[..., None]
    mean_i, mean_p = box(guide), box(src)
    mean_i = mean_i if src.ndim == 2 else mean_i[..., None]
    corr_ip = box(g * src)
    var_i = box(guide * guide) - box(guide) ** 2
    var_i = var_i if src.ndim == 2 else var_i[..., None]
    a = (corr_ip - mean_i * mean_p) / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * g + box(b)


def _grey(x: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)


# ------------------------------------------------------------------------------------------------ noise


def nlm(image: np.ndarray, h: float, _: Context) -> np.ndarray:
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    out = cv2.fastNlMeansDenoisingColored(bgr, None, float(h), float(h), 7, 21)
    return np.ascontiguousarray(out[:, :, ::-1])


def cbm3d(image: np.ndarray, _: float, context: Context) -> np.ndarray:
    import bm3d

    return _u8(bm3d.bm3d_rgb(_f(image), context.sigma / 255.0))


# ------------------------------------------------------------------------------------------------- blur


def unsharp(image: np.ndarray, amount: float, _: Context) -> np.ndarray:
    x = _f(image)
    return _u8(x + amount * (x - cv2.GaussianBlur(x, (0, 0), 2.0)))


def _deconvolve(image: np.ndarray, kernel: np.ndarray, per_channel: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Deconvolve each channel of a reflect-padded copy and crop: the blur was applied with reflected
    borders, while Wiener assumes a periodic image and Richardson-Lucy a zero one (either puts ringing at the
    borders that costs more PSNR than the deconvolution gains on a 481 x 321 photo)."""
    pad = 2 * max(kernel.shape)
    x = cv2.copyMakeBorder(_f(image), pad, pad, pad, pad, cv2.BORDER_REFLECT)
    out = np.stack([per_channel(x[..., c]) for c in range(3)], -1)
    return _u8(out[pad:-pad, pad:-pad])


def wiener(image: np.ndarray, balance: float, context: Context) -> np.ndarray:
    from skimage.restoration import wiener as sk_wiener

    return _deconvolve(image, context.kernel, lambda ch: sk_wiener(ch, context.kernel, balance, clip=True))


def richardson_lucy(image: np.ndarray, iterations: float, context: Context) -> np.ndarray:
    from skimage.restoration import richardson_lucy as sk_rl

    return _deconvolve(image, context.kernel,
                       lambda ch: sk_rl(ch, context.kernel, num_iter=int(iterations), clip=True))


# ------------------------------------------------------------------------------------------------- haze


def dark_channel_prior(image: np.ndarray, omega: float, _: Context, *, patch: int = 15, t0: float = 0.1) -> np.ndarray:
    """He et al.: dark channel over ``patch`` px, airlight from its brightest 0.1%, t = 1 - omega * dark(I/A),
    refined by a guided filter (radius 60, eps 1e-4 as in the ECCV paper), J = (I - A) / max(t, t0) + A."""
    x = _f(image)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    dark = cv2.erode(x.min(axis=2), kernel)
    n = max(1, dark.size // 1000)
    brightest = np.argpartition(dark.ravel(), -n)[-n:]
    airlight = x.reshape(-1, 3)[brightest].max(axis=0).clip(1e-3, 1.0)
    t = 1.0 - omega * cv2.erode((x / airlight).min(axis=2), kernel)
    t = guided_filter(_grey(x), t.astype(np.float32), 60, 1e-4)
    return _u8((x - airlight) / np.maximum(t, t0)[..., None] + airlight)


# -------------------------------------------------------------------------------------------- low light


def clahe(image: np.ndarray, clip: float, _: Context) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def gamma(image: np.ndarray, g: float, _: Context) -> np.ndarray:
    return _u8(_f(image) ** (1.0 / g))


def illumination(image: np.ndarray, g: float, _: Context) -> np.ndarray:
    """Retinex-style: the illumination T is max(R, G, B) smoothed by a guided filter, the output I / T**g."""
    x = _f(image)
    t = guided_filter(_grey(x), x.max(axis=2), 15, 1e-3).clip(1e-2, 1.0)
    return _u8(x / (t**g)[..., None])


# --------------------------------------------------------------------------------------------- rain, snow


def median(image: np.ndarray, k: float, _: Context) -> np.ndarray:
    return cv2.medianBlur(image, int(k))


def guided_smooth(image: np.ndarray, eps: float, _: Context) -> np.ndarray:
    x = _f(image)
    return _u8(guided_filter(_grey(x), x, 4, eps))


BASELINES: dict[str, tuple[Baseline, ...]] = {
    "noise": (
        Baseline("nlm", nlm, (5.0, 8.0, 11.0, 14.0, 17.0, 20.0), param="h"),
        Baseline("cbm3d", cbm3d, oracle=True, param="true sigma"),
    ),
    "blur": (
        Baseline("unsharp", unsharp, (0.25, 0.5, 1.0, 1.5, 2.0), param="amount"),
        Baseline("wiener", wiener, (0.001, 0.003, 0.01, 0.03, 0.1), oracle=True, param="balance"),
        Baseline("richardson_lucy", richardson_lucy, (10, 20, 40, 80, 160), oracle=True, param="iterations"),
    ),
    "haze": (Baseline("dark_channel", dark_channel_prior, (0.3, 0.45, 0.6, 0.75, 0.9), param="omega"),),
    "lowlight": (
        Baseline("clahe", clahe, (1.0, 2.0, 4.0, 8.0, 16.0), param="clip limit"),
        Baseline("gamma", gamma, (1.5, 2.0, 2.5, 3.0, 3.5, 4.5), param="gamma"),
        Baseline("illumination", illumination, (0.4, 0.55, 0.7, 0.85, 1.0), param="gamma of T"),
    ),
    "rain": (
        Baseline("median", median, (3, 5, 7), param="kernel"),
        Baseline("guided", guided_smooth, (0.0001, 0.0003, 0.001, 0.004, 0.016), param="eps"),
    ),
    "snow": (
        Baseline("median", median, (3, 5, 7), param="kernel"),
        Baseline("guided", guided_smooth, (0.0001, 0.0003, 0.001, 0.004, 0.016), param="eps"),
    ),
}
