"""Image quality metrics: PSNR and SSIM with an explicit data range, crop border and RGB-or-Y choice.

The functions follow BasicSR's metric functions: the caller states the data range (``1.0`` for
images in [0, 1], ``255.0`` for 8-bit values), how many border pixels to drop (``crop_border``) and
whether to score the BT.601 luma instead of RGB (``y_channel``). Everything is computed in float64
with numpy and OpenCV only; ``tests/test_metrics.py`` checks the results against scikit-image.

Two protocols score a (restored, reference) pair, see :func:`score_pair`:

``"adsrt"`` (ours)
    PSNR and SSIM on RGB in [0, 1] (uint8 divided by 255), no crop. SSIM is the one of Wang et
    al. 2004: an 11x11 Gaussian window with sigma 1.5, population covariance, K1 = 0.01,
    K2 = 0.03, averaged over the valid region of each channel and then over channels. The Gaussian
    window is what the SSIM paper defines and what BasicSR, MATLAB's ``ssim`` and most restoration
    papers since report, so our numbers are comparable with that literature. It equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=2)``.

``"peers"``
    The evaluation code of AirNet / PromptIR / IDR, the all-in-one restoration tables we compare
    with: both images to float in [0, 1], centre crop to a multiple of 16 (their ``crop_img``),
    ``peak_signal_noise_ratio(data_range=1)`` and ``structural_similarity(data_range=1,
    channel_axis=2)`` with scikit-image's *defaults*: a 7x7 uniform window and sample covariance
    (N - 1). That SSIM is not Wang et al.'s, and it reads a little differently from the Gaussian
    one, but it is what their tables hold; only numbers from the same protocol may be compared.

Every table states its protocol. Inputs are HxW or HxWxC arrays of the same shape, uint8/other
integers or floats; invalid inputs raise :class:`MetricError` (a ``ValueError``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from adsrt.errors import MetricError

__all__ = [
    "PROTOCOLS",
    "MetricError",
    "batch_psnr",
    "center_crop_multiple",
    "peers_psnr_ssim",
    "psnr",
    "rgb_to_y",
    "score_pair",
    "ssim",
]

PROTOCOLS = ("adsrt", "peers")

# Wang et al. 2004 constants; scikit-image and BasicSR use the same.
_K1 = 0.01
_K2 = 0.03

# Gaussian window: scikit-image truncates at 3.5 sigma so that sigma 1.5 gives the 11 taps of the
# SSIM paper; the radius formula is scipy.ndimage's, int(truncate * sigma + 0.5) = 5.
_GAUSS_SIGMA = 1.5
_GAUSS_RADIUS = int(3.5 * _GAUSS_SIGMA + 0.5)
_GAUSS_WIN = 2 * _GAUSS_RADIUS + 1


def _gaussian_kernel_1d() -> np.ndarray:
    # Built the way scipy.ndimage does (exp then normalise to sum 1) rather than with
    # cv2.getGaussianKernel, so the taps agree with scikit-image to the last bit.
    x = np.arange(-_GAUSS_RADIUS, _GAUSS_RADIUS + 1, dtype=np.float64)
    phi = np.exp(-0.5 / _GAUSS_SIGMA**2 * x**2)
    return phi / phi.sum()


_GAUSS_KERNEL = _gaussian_kernel_1d()

# scikit-image's default SSIM window (uniform, 7x7), used by the peers' evaluation code.
_UNIFORM_WIN = 7
_PEERS_MULTIPLE = 16

# ITU-R BT.601 luma for RGB in [0, 1] giving Y in [16, 235] on a 0..255 scale (studio range), the
# weights of BasicSR's rgb2ycbcr(y_only=True) and MATLAB's rgb2ycbcr.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0


# --------------------------------------------------------------------------------------------------
# input checks


def _as_float64(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype.kind not in "uif":
        raise MetricError(f"{name} must hold integers or floats, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise MetricError(f"{name} must be HxW or HxWxC, got shape {arr.shape}")
    out = arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "f" and not np.isfinite(out).all():
        raise MetricError(f"{name} holds NaN or infinite values")
    return out


def _check_data_range(data_range: float) -> float:
    r = float(data_range)
    if not (math.isfinite(r) and r > 0):
        raise MetricError(f"data_range must be a positive finite number, got {data_range!r}")
    return r


def _check_pair(img: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = _as_float64(img, "img")
    b = _as_float64(ref, "ref")
    if a.shape != b.shape:
        raise MetricError(f"images differ in shape: img {a.shape} vs ref {b.shape}")
    return a, b


def _check_integer_range(img: np.ndarray, ref: np.ndarray, data_range: float) -> None:
    # The common mistake is scoring uint8 images with data_range=1: the numbers come out plausible
    # but meaningless (PSNR near -40 dB). Integer values above data_range can only mean that.
    for name, arr in (("img", img), ("ref", ref)):
        arr = np.asarray(arr)
        if arr.dtype.kind in "ui" and arr.size and int(arr.max()) > data_range:
            raise MetricError(
                f"{name} is {arr.dtype} with values up to {int(arr.max())} but data_range={data_range:g}; "
                f"pass data_range=255 for 8-bit values or divide the images by 255"
            )


def _prepare(
    img: np.ndarray, ref: np.ndarray, data_range: float, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """Checks inputs and returns float64 HxWxC arrays (cropped, Y if asked) and the data range."""
    r = _check_data_range(data_range)
    _check_integer_range(img, ref, r)
    a, b = _check_pair(img, ref)
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise MetricError(f"crop_border must be a non-negative int, got {crop_border!r}")
    h, w = a.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise MetricError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        if a.ndim != 3 or a.shape[2] != 3:
            raise MetricError(f"y_channel=True needs HxWx3 RGB images, got shape {a.shape}")
        a = rgb_to_y(a, r)
        b = rgb_to_y(b, r)
    if a.ndim == 2:
        a = a[:, :, None]
        b = b[:, :, None]
    return a, b, r


# --------------------------------------------------------------------------------------------------
# public functions


def rgb_to_y(img: np.ndarray, data_range: float) -> np.ndarray:
    """BT.601 luma of an RGB image (last axis R, G, B) in the studio range, as float64.

    Like BasicSR's ``rgb2ycbcr(y_only=True)``: with RGB in [0, 1],
    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` lies in [16, 235] on a 0..255 scale; the result is
    returned on the input's scale, i.e. divided by 255 and multiplied by ``data_range`` (so
    ``data_range=255`` gives 16..235 and ``data_range=1`` gives 16/255..235/255). No rounding.
    """
    r = _check_data_range(data_range)
    arr = np.asarray(img)
    if arr.dtype.kind not in "uif":
        raise MetricError(f"img must hold integers or floats, got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise MetricError(f"rgb_to_y needs RGB in the last axis, got shape {arr.shape}")
    x = arr.astype(np.float64, copy=False)
    # Y/255 on a [0, 1] scale is (16 + w . (x / r)) / 255; scaled back by r that is (16 r + w . x) / 255.
    return (_Y_OFFSET * r + x @ _Y_WEIGHTS) / 255.0


def center_crop_multiple(img: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Centre-crops H and W down to multiples of ``multiple`` (a view, no copy).

    The offsets are the peers' ``crop_img``: ``(h % multiple) // 2`` rows off the top and the rest
    off the bottom (one more at the bottom when the excess is odd), likewise for columns.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise MetricError(f"multiple must be a positive int, got {multiple!r}")
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise MetricError(f"img must be HxW or HxWxC, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h < multiple or w < multiple:
        raise MetricError(f"a {h}x{w} image is smaller than the crop multiple {multiple}")
    dh, dw = h % multiple, w % multiple
    return arr[dh // 2 : h - dh + dh // 2, dw // 2 : w - dw + dw // 2]


def psnr(
    img: np.ndarray, ref: np.ndarray, *, data_range: float, crop_border: int = 0, y_channel: bool = False
) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; ``math.inf`` if equal.

    ``crop_border`` pixels are dropped on each side first; ``y_channel`` scores BT.601 luma
    (:func:`rgb_to_y`) instead of all channels. MSE is the mean over all pixels and channels.
    """
    a, b, r = _prepare(img, ref, data_range, crop_border, y_channel)
    mse = float(np.mean((b - a) ** 2, dtype=np.float64))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(r**2 / mse))


def batch_psnr(output, target, *, data_range: float = 1.0, clamp: bool = True):
    """PSNR in dB of each item of two torch tensors ``[B, ...]`` (float32 math, on their device, no sync).

    The tensor twin of :func:`psnr` for training and parity checks, where images are batches on a device:
    ``10 log10(data_range^2 / MSE)`` per item, the MSE over all its other dimensions. ``clamp`` clips
    ``output`` to ``[0, data_range]`` first, as saving it as an image would. Identical items give 100 dB
    (the MSE is floored at ``1e-10 data_range^2``), so a mean over a batch stays finite.
    """
    r = _check_data_range(data_range)
    if output.shape != target.shape or output.dim() < 1:
        raise MetricError(f"batch_psnr needs two [B, ...] tensors of one shape, got {tuple(output.shape)} "
                          f"and {tuple(target.shape)}")
    out = output.float()
    if clamp:
        out = out.clamp(0.0, r)
    mse = (out - target.float()).pow(2).flatten(1).mean(dim=1) if out.dim() > 1 else (out - target.float()).pow(2)
    return 10.0 * (r * r / mse.clamp_min(1e-10 * r * r)).log10()


def _gaussian_filter(x: np.ndarray) -> np.ndarray:
    # Separable 11-tap Gaussian in float64. BORDER_REFLECT is scipy's 'reflect' (d c b a | a b c d),
    # so even the discarded border agrees with scikit-image.
    return cv2.sepFilter2D(x, cv2.CV_64F, _GAUSS_KERNEL, _GAUSS_KERNEL, borderType=cv2.BORDER_REFLECT)


def _uniform_filter(x: np.ndarray) -> np.ndarray:
    return cv2.blur(x, (_UNIFORM_WIN, _UNIFORM_WIN), borderType=cv2.BORDER_REFLECT)


def _mean_ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float,
    filt: Callable[[np.ndarray], np.ndarray],
    win: int,
    cov_norm: float,
) -> float:
    """Mean SSIM of float64 HxWxC arrays: per channel over the valid region, then over channels."""
    h, w = a.shape[:2]
    if h < win or w < win:
        raise MetricError(f"SSIM needs images of at least {win}x{win} pixels, got {h}x{w}")
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    # Filtering lets pixels near the border see the mirrored image; only windows that lie wholly
    # inside count, as in scikit-image (crop (win - 1) // 2 from each side of the SSIM map).
    pad = (win - 1) // 2
    means = []
    for c in range(a.shape[2]):
        x = np.ascontiguousarray(a[:, :, c])
        y = np.ascontiguousarray(b[:, :, c])
        ux = filt(x)
        uy = filt(y)
        uxx = filt(x * x)
        uyy = filt(y * y)
        uxy = filt(x * y)
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        # Same grouping of terms as scikit-image, so the rounding agrees too.
        a1 = 2 * ux * uy + c1
        a2 = 2 * vxy + c2
        b1 = ux**2 + uy**2 + c1
        b2 = vx + vy + c2
        s = (a1 * a2) / (b1 * b2)
        means.append(s[pad : h - pad, pad : w - pad].mean(dtype=np.float64))
    return float(np.mean(means))


def ssim(
    img: np.ndarray, ref: np.ndarray, *, data_range: float, crop_border: int = 0, y_channel: bool = False
) -> float:
    """Structural similarity of Wang et al. 2004 (11x11 Gaussian window, sigma 1.5).

    Population covariance, K1 = 0.01, K2 = 0.03, mean over the valid region of each channel, then
    over channels; equal to scikit-image's ``structural_similarity`` with ``gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False`` and the same ``data_range``. Identical images give 1.0.
    """
    a, b, r = _prepare(img, ref, data_range, crop_border, y_channel)
    return _mean_ssim(a, b, r, _gaussian_filter, _GAUSS_WIN, cov_norm=1.0)


def _peers_float(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        out = _as_float64(arr, name) / 255.0
    elif arr.dtype.kind == "f":
        # The peers clip their network output (and the reference) to [0, 1] before scoring.
        out = np.clip(_as_float64(arr, name), 0.0, 1.0)
    else:
        raise MetricError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    return out


def peers_psnr_ssim(restored: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM the way AirNet / PromptIR / IDR evaluate (see the module docstring).

    uint8 inputs are divided by 255, float inputs clipped to [0, 1]; both are centre-cropped to a
    multiple of 16; PSNR with data range 1 and scikit-image's default SSIM (7x7 uniform window,
    sample covariance) per channel, averaged. The peers computed in float32; this is float64.
    """
    x = _peers_float(restored, "restored")
    y = _peers_float(reference, "reference")
    if x.shape != y.shape:
        raise MetricError(f"images differ in shape: restored {x.shape} vs reference {y.shape}")
    x = center_crop_multiple(x, _PEERS_MULTIPLE)
    y = center_crop_multiple(y, _PEERS_MULTIPLE)
    a, b, r = _prepare(x, y, 1.0, 0, False)
    p = psnr(a, b, data_range=r)
    n = _UNIFORM_WIN**2
    s = _mean_ssim(a, b, r, _uniform_filter, _UNIFORM_WIN, cov_norm=n / (n - 1))
    return p, s


def _unit_float(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype.kind == "f":
        return arr  # taken as already in [0, 1]; not clipped, so out-of-range outputs are penalised
    raise MetricError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def score_pair(restored: np.ndarray, reference: np.ndarray, protocol: str = "adsrt") -> tuple[float, float]:
    """(PSNR, SSIM) of a restored image against its reference under one of :data:`PROTOCOLS`.

    ``"adsrt"``: RGB in [0, 1] (uint8 divided by 255, floats as given), no crop, Gaussian SSIM.
    ``"peers"``: :func:`peers_psnr_ssim`.
    """
    if protocol == "adsrt":
        x = _unit_float(restored, "restored")
        y = _unit_float(reference, "reference")
        return psnr(x, y, data_range=1.0), ssim(x, y, data_range=1.0)
    if protocol == "peers":
        return peers_psnr_ssim(restored, reference)
    raise MetricError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
