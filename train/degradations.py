"""Synthetic degradations for training and evaluating the all-in-one restorer.

Every degradation is a plain function ``fn(clean, level, rng, *, style=None) -> degraded`` (a :data:`DegradationFn`)
kept in the plain dict :data:`DEGRADATIONS`; :data:`LEVELS` holds, per name, the documented valid
range of ``level``, the range training samples from, a typical default and what the number means.

Image contract (all functions): RGB, shape ``H x W x 3``, either ``uint8`` in 0..255 or
``float32``/``float64`` in [0, 1]. The result has the same shape and dtype (uint8: round, then clip;
float: clip to [0, 1]). Internally everything runs in float32 [0, 1]. Randomness comes only from the
``numpy.random.Generator`` passed in, so one seed gives one output. The random draws a degradation
makes do not depend on the level (except draws made after lowlight's Poisson sampler, such as the noise
that follows it in a mix), nor on a pinned style, so with one seed a higher level
degrades the *same* streaks, flakes, depth map or kernel more strongly. Sizes are in pixels of the
image being degraded (as in the Rain100L / BSD68 style datasets), so degrading a crop matches
cropping a degraded image.

Families, styles and levels
---------------------------
Each degradation is a *family*: a physical model whose parameters are drawn from the range real capture
shows, so a classifier and a restorer trained on it learn the degradation rather than one generator's
signature. Every family keeps one ``level`` that means the same thing in every draw (the table below and
the README), so ``adsrt degrade`` and ``adsrt eval`` stay comparable; the rest is drawn from the rng.
Some families come in *styles* (:data:`STYLES`) drawn with fixed probabilities; a spec can pin one, e.g.
``noise/awgn:25`` for the textbook benchmark.

``noise``    level = sigma on the 0..255 scale (at mid-grey); valid [0, 100], train [5, 55], default 25.
             Styles: ``awgn`` (0.5) ``y = x + n``, ``n ~ N(0, sigma^2)`` per channel (noise/awgn:25 gives
             PSNR ~ 20.2 dB); ``shot`` (0.3) Poisson-Gaussian, variance ``a x + b`` with a random share
             of signal-dependent shot noise and sigma at x = 0.5; ``correlated`` (0.2) AWGN smoothed over
             0.4-0.9 px and renormalised to sigma (demosaiced or compressed sensor noise).
``blur``     ``y = k * x`` with reflected borders. level = blur strength in px; valid [0.5, 6], train
             [1, 4], default 2. Styles: ``gaussian`` (0.3) sigma = level; ``defocus`` (0.2) an
             anti-aliased disk of radius 2 * level (the disk's std is r / 2, so it matches the
             Gaussian); ``motion`` (0.25) a straight line of length 4 * level + 1 px at a uniform
             angle; ``shake`` (0.25) a random camera-shake trajectory (a random walk with inertia,
             Boracchi & Foi style) whose extent is 4 * level + 1 px.
``rain``     ``y = T (x + S) + (1 - T) A`` (the additive composite with veil). S holds up to three
             depth layers of streaks sharing one wind angle (within +-25 deg of vertical) with a random
             angular spread: far streaks fine (0.3-0.5 px), short and faint; middle ones; near ones wide
             (0.8-1.6 px), long and defocused; a capture scale (0.3-1) makes them all shorter, finer,
             fainter and denser, as in photos seen smaller than they were taken. T is the veil / accumulation of heavy rain, varying
             smoothly across the frame, A a near-grey airlight in [0.7, 1]; a quarter of the draws
             also have drops on the lens (discs that refract a blurred view). level = rain intensity:
             density, length and veil grow with it; valid [1, 5], train [1, 5], default 3.
``haze``     the scattering model ``y = x t + A (1 - t)``, ``t = exp(-beta d)``. The depth proxy d
             (:func:`haze_depth`) is built from image structure: a horizon ramp of random tilt and
             weight, the smoothed luminance (bright flat regions such as sky read as far), a texture
             cue (flat, detail-less regions read as far), patchy fog, then an edge-aware guided
             filter so the fog follows object boundaries. A is coloured (bluish to warm) and
             non-uniform (brighter towards a light source). level = beta; valid [0.2, 4], train
             [0.5, 2.5], default 1.5.
``snow``     a veil ``x (1 - v) + v A`` then flakes ``y (1 - F) + F``: three depth classes with sizes,
             softness (sharp crystals to defocused blobs), motion streaks along a common fall angle and
             densities drawn per image. level = snow intensity (flake density and veil); valid [1, 5],
             train [1, 5], default 3.
``lowlight`` under-exposure by ``level`` stops in linear light, through a camera: decode with gamma
             2.2, a white-balance cast, scale by ``2 ** -level`` (in 70% of the draws the bright parts
             of the scene, sky or lamps, lose only 0-40% of those stops: a night or backlit shot,
             dark ground under a lit sky), sometimes a few lamps, shot + read noise
             shaped by demosaicing and a colour-correction matrix (:func:`adsrt.train.camera.colour_noise`),
             a gamma or filmic tone curve (the filmic one lifts the shadows by up to a stop, as
             phone cameras do), in 60% of the draws a black-level toe that crushes the deepest
             shadows to black (the true black of real night shots, where read noise alone leaves a grey
             floor), in half a colour-saturation boost, then the camera's own denoise, sharpening and
             JPEG. The photon budget runs from high ISO (150 e-) to a tripod or a dim daylight scene
             (80,000 e-, almost noise-free: a dark photo need not be a noisy one). No gain is applied
             to make up for the exposure. valid [0.5, 6], train [1.5, 4.5], default 3.
``mix``      two different base degradations chosen by the rng, each at
             ``train_lo + level * (train_hi - train_lo)`` of its training range, applied in the
             physical order of :data:`MIX_ORDER` (scene effects haze, rain, snow; then the optics:
             blur; then the sensor: lowlight, noise last). level = relative strength in [0, 1]
             (0 = mildest training level, 1 = strongest); valid [0, 1], train [0, 1], default 0.5.

Specs are written ``name[/style][:level]`` and composed with ``+`` (applied left to right), e.g.
``"noise:25"``, ``"blur"`` (level sampled from the training range), ``"blur/defocus:2"`` or
``"haze:1.2+noise:15"``.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from adsrt.errors import DegradationError
from adsrt.train import camera

__all__ = [
    "BASE_DEGRADATIONS",
    "DEGRADATIONS",
    "LEVELS",
    "MIX_ORDER",
    "DegradationFn",
    "DegradationSpec",
    "LevelRange",
    "STYLES",
    "check_level",
    "defocus_kernel",
    "degrade",
    "generator_digest",
    "gaussian_kernel",
    "haze_composite",
    "haze_depth",
    "motion_kernel",
    "parse_specs",
    "plan_mix",
    "rain_composite",
    "sample_blur_kernel",
    "sample_level",
    "shake_kernel",
    "shake_path",
]

logger = logging.getLogger(__name__)

DegradationFn = Callable[..., np.ndarray]  # fn(image, level, rng, *, style=None) -> degraded

# Order in which mixed degradations are applied: what happens in the scene, then the lens, then the sensor.
MIX_ORDER: tuple[str, ...] = ("haze", "rain", "snow", "blur", "lowlight", "noise")
BASE_DEGRADATIONS: tuple[str, ...] = ("noise", "blur", "rain", "haze", "snow", "lowlight")

_BORDER = cv2.BORDER_REFLECT
_GAMMA = camera.GAMMA
# Float inputs a little outside [0, 1] (resampling overshoot) are clipped; far outside means 0..255 floats.
_FLOAT_TOLERANCE = 0.02


@dataclass(frozen=True)
class LevelRange:
    """The level convention of one degradation.

    ``[lo, hi]`` is the documented valid range (inclusive), ``[train_lo, train_hi]`` the range that
    training samples uniformly from, ``default`` a typical level and ``unit`` what the number means.
    """

    lo: float
    hi: float
    train_lo: float
    train_hi: float
    default: float
    unit: str
    lo_open: bool = False  # lo itself is not valid (noise: sigma 0 is no noise, not a noise level)

    def describe(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


LEVELS: dict[str, LevelRange] = {
    "noise": LevelRange(0.0, 100.0, 5.0, 55.0, 25.0, "noise sigma on the 0-255 scale (at mid-grey)", lo_open=True),
    "blur": LevelRange(
        0.5, 6.0, 1.0, 4.0, 2.0,
        "blur strength in px (Gaussian sigma, defocus radius 2*level, motion or shake extent 4*level+1)"
    ),
    "rain": LevelRange(1.0, 5.0, 1.0, 5.0, 3.0, "rain intensity 1-5 (streak density, length, veil)"),
    "haze": LevelRange(0.2, 4.0, 0.5, 2.5, 1.5, "scattering coefficient beta, t = exp(-beta * depth)"),
    "snow": LevelRange(1.0, 5.0, 1.0, 5.0, 3.0, "snow intensity 1-5 (flake density and veil)"),
    "lowlight": LevelRange(0.5, 6.0, 1.5, 4.5, 3.0, "stops of under-exposure (linear scale 2**-level)"),
    "mix": LevelRange(0.0, 1.0, 0.0, 1.0, 0.5, "relative strength 0-1 within each part's training range"),
}


# The styles of each family and how often a draw picks each (see the module doc); a spec may pin one.
STYLES: dict[str, dict[str, float]] = {
    "noise": {"awgn": 0.5, "shot": 0.3, "correlated": 0.2},
    "blur": {"gaussian": 0.3, "defocus": 0.2, "motion": 0.25, "shake": 0.25},
}


# --------------------------------------------------------------------------------------------------
# specs and levels


def _known() -> str:
    return ", ".join(LEVELS)


def check_level(name: str, level: float) -> float:
    """Return ``level`` as a float, or raise DegradationError for an unknown name or a bad level."""
    if name not in LEVELS:
        raise DegradationError(f"unknown degradation {name!r}; known: {_known()}")
    try:
        value = float(level)
    except (TypeError, ValueError) as exc:
        raise DegradationError(f"{name}: level {level!r} is not a number") from exc
    rng_ = LEVELS[name]
    below = value <= rng_.lo if rng_.lo_open else value < rng_.lo
    if not math.isfinite(value) or below or value > rng_.hi:
        raise DegradationError(f"{name}: level {level!r} is outside {rng_.describe()} ({rng_.unit})")
    return value


def keyed_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator drawn from ``seed`` and string keys (a file name, a spec), so an image degrades
    the same whether it is processed alone, in a folder, or in another order."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def sample_level(name: str, rng: np.random.Generator) -> float:
    """Draw a level uniformly from the training range of ``name``."""
    if name not in LEVELS:
        raise DegradationError(f"unknown degradation {name!r}; known: {_known()}")
    r = LEVELS[name]
    return float(rng.uniform(r.train_lo, r.train_hi))


@dataclass(frozen=True)
class DegradationSpec:
    """One degradation and its level; ``level=None`` means "sample from the training range", ``style=None``
    "draw the style" (:data:`STYLES`)."""

    name: str
    level: float | None = None
    style: str | None = None

    def __post_init__(self) -> None:
        # Validate eagerly so a bad spec fails where it is written, not deep inside a data loader.
        if self.name not in LEVELS:
            raise DegradationError(f"unknown degradation {self.name!r}; known: {_known()}")
        if self.level is not None:
            object.__setattr__(self, "level", check_level(self.name, self.level))
        check_style(self.name, self.style)

    def __str__(self) -> str:
        text = self.name if self.style is None else f"{self.name}/{self.style}"
        return text if self.level is None else f"{text}:{self.level:g}"


def check_style(name: str, style: str | None) -> None:
    """DegradationError unless ``style`` is None or one of the styles of ``name``."""
    if style is None:
        return
    known = STYLES.get(name, {})
    if style not in known:
        choices = f"its styles: {', '.join(known)}" if known else "it has no styles"
        raise DegradationError(f"{name}: unknown style {style!r} ({choices})")


def _pick_style(name: str, rng: np.random.Generator, style: str | None) -> str:
    """The style to use: ``style`` if given, else drawn. The draw is made either way, so pinning a style
    leaves the rest of the rng stream (streaks, kernels, noise) as it would have been."""
    styles = STYLES[name]
    u, acc = float(rng.random()), 0.0
    drawn = next(iter(styles))
    for candidate, p in styles.items():
        acc += p
        drawn = candidate
        if u < acc:
            break
    return style or drawn


def parse_specs(text: str) -> list[DegradationSpec]:
    """Parse ``"noise:25"``, ``"blur"``, ``"blur/defocus:2"`` or ``"noise:25+blur:2"`` into specs (applied
    left to right)."""
    if not isinstance(text, str) or not text.strip():
        raise DegradationError(
            f"empty degradation spec; write name[/style][:level][+...], names: {_known()}"
        )
    specs = []
    for part in text.split("+"):
        item = part.strip()
        name, sep, level_text = item.partition(":")
        name, slash, style_text = name.strip().lower().partition("/")
        name, style = name.strip(), (style_text.strip() if slash else None)
        if not name:
            raise DegradationError(f"empty degradation in {text!r}; known: {_known()}")
        if name not in LEVELS:
            raise DegradationError(f"unknown degradation {name!r} in {text!r}; known: {_known()}")
        check_style(name, style)
        if not sep:
            specs.append(DegradationSpec(name, style=style))
            continue
        try:
            level = float(level_text.strip())
        except ValueError as exc:
            raise DegradationError(
                f"{name}: level {level_text.strip()!r} in {text!r} is not a number"
            ) from exc
        specs.append(DegradationSpec(name, check_level(name, level), style))
    return specs


# --------------------------------------------------------------------------------------------------
# image conversion


def _to_float(image: np.ndarray) -> np.ndarray:
    """Validate the image contract and return a float32 [0, 1] copy."""
    if not isinstance(image, np.ndarray):
        raise DegradationError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise DegradationError(f"image must be RGB with shape HxWx3, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype in (np.float32, np.float64):
        x = image.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DegradationError("float image contains NaN or infinity")
        if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
            raise DegradationError(
                f"float image must be in [0, 1], got [{lo:g}, {hi:g}] (pass uint8 or divide by 255)"
            )
        return np.clip(x, 0.0, 1.0)
    raise DegradationError(f"image dtype must be uint8, float32 or float64, got {image.dtype}")


def _from_float(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float32 [0, 1]-ish back to the caller's dtype (uint8: round then clip)."""
    if dtype == np.uint8:
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return np.clip(x, 0.0, 1.0).astype(dtype)


_Core = Callable[[np.ndarray, float, np.random.Generator, "str | None"], np.ndarray]


def _wrap(core: _Core, name: str) -> DegradationFn:
    """Turn a float32 -> float32 core into a public DegradationFn that checks input and keeps the dtype."""

    def fn(image: np.ndarray, level: float, rng: np.random.Generator, *, style: str | None = None) -> np.ndarray:
        level = check_level(name, level)
        check_style(name, style)
        return _from_float(core(_to_float(image), level, rng, style), image.dtype)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = core.__doc__
    return fn


def _low_freq_field(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: a cells x cells grid of uniforms upsampled bicubically."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _luminance(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# noise


def _noise(x: np.ndarray, sigma: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Sensor noise of standard deviation ``sigma / 255`` at mid-grey: AWGN, Poisson-Gaussian or correlated."""
    style = _pick_style("noise", rng, style)
    shot_share = float(rng.uniform(0.3, 0.9))  # of the variance at x = 0.5 (style "shot")
    corr = float(rng.uniform(0.4, 0.9))  # px (style "correlated")
    n = rng.standard_normal(x.shape, dtype=np.float32)
    s2 = (sigma / 255.0) ** 2
    if style == "shot":
        # var(x) = a x + b with a * 0.5 + b = sigma^2: the Gaussian limit of Poisson shot noise plus read noise.
        a, b = 2.0 * shot_share * s2, (1.0 - shot_share) * s2
        return x + n * np.sqrt(np.float32(a) * x + np.float32(b))
    if style == "correlated":
        n = camera.correlate(n, corr)
    return x + n * np.float32(sigma / 255.0)


# --------------------------------------------------------------------------------------------------
# blur


def gaussian_kernel(sigma: float) -> np.ndarray:
    """An isotropic 2-D Gaussian kernel (float32, sum 1) of size ``2 * ceil(3 sigma) + 1``."""
    if not math.isfinite(sigma) or sigma <= 0:
        raise DegradationError(f"Gaussian sigma must be positive, got {sigma!r}")
    radius = max(1, math.ceil(3.0 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def defocus_kernel(radius: float) -> np.ndarray:
    """An anti-aliased disk of ``radius`` px (float32, sum 1): an out-of-focus lens (pillbox PSF).

    Coverage is estimated on an 8 x 8 sub-pixel grid, so a disk of any fractional radius is smooth.
    """
    if not math.isfinite(radius) or radius <= 0:
        raise DegradationError(f"defocus radius must be positive, got {radius!r}")
    half = math.ceil(radius) + 1
    sub = (np.arange(8) + 0.5) / 8.0 - 0.5
    t = np.arange(-half, half + 1, dtype=np.float64)
    fine = (t[:, None] + sub[None, :]).ravel()
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2 <= radius**2).astype(np.float64)
    n = 2 * half + 1
    k = inside.reshape(n, 8, n, 8).mean(axis=(1, 3))
    return (k / k.sum()).astype(np.float32)


def _splat(xs: np.ndarray, ys: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly splat points (kernel coordinates, pixels) with weights into a size x size float64 grid."""
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    k = np.zeros((size, size), dtype=np.float64)
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), wgt * weights)
    return k


def _splat_line(length: float, angle_deg: float, profile: np.ndarray | None = None) -> np.ndarray:
    """Bilinearly splat a centred segment of ``length`` px at ``angle_deg`` into an odd square grid.

    Dense sub-pixel samples with bilinear weights give an anti-aliased line of any (fractional)
    length and angle. ``profile`` (optional, values in [0, 1] sampled along the line) tapers it.
    """
    size = math.ceil(length) + 2
    size += 1 - size % 2  # odd, so the kernel has a centre pixel and does not shift the image
    c = size // 2
    n = max(2, math.ceil(length * 4))
    s = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, n)
    a = math.radians(angle_deg)
    weights = (
        np.ones(n)
        if profile is None
        else np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(profile)), profile)
    )
    # Rows grow downwards, so a positive angle points up and to the right as seen on screen.
    return _splat(c + s * math.cos(a), c - s * math.sin(a), weights, size)


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """An anti-aliased linear motion kernel (float32, sum 1).

    ``length`` is the extent of the motion in px (>= 1; 1 is the identity), ``angle_deg`` its
    direction measured counter-clockwise from the horizontal as seen on screen (90 = vertical).
    """
    if not math.isfinite(length) or length < 1:
        raise DegradationError(f"motion length must be >= 1 px, got {length!r}")
    k = _splat_line(length, angle_deg)
    return (k / k.sum()).astype(np.float32)


_SHAKE_STEPS = 96


def shake_path(rng: np.random.Generator) -> np.ndarray:
    """A random camera-shake trajectory, ``[_SHAKE_STEPS, 2]`` (x, y), not yet scaled.

    A random walk with inertia (after Boracchi & Foi, "Modeling the performance of image restoration
    from motion blur", 2012): the velocity keeps most of its direction from one instant to the next,
    turns by random accelerations and now and then jerks, so paths range from nearly straight to curled.
    """
    inertia = float(rng.uniform(0.6, 0.95))
    jerk = rng.random(_SHAKE_STEPS) < float(rng.uniform(0.0, 0.1))
    acc = rng.standard_normal((_SHAKE_STEPS, 2)) * float(rng.uniform(0.2, 0.8))
    acc[jerk] *= 4.0
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    v = np.array([math.cos(angle), math.sin(angle)])
    points = np.empty((_SHAKE_STEPS, 2))
    p = np.zeros(2)
    for i in range(_SHAKE_STEPS):
        v = inertia * v + (1.0 - inertia) * acc[i]
        v /= max(float(np.linalg.norm(v)), 1e-9)  # constant speed: the camera dwells equally on every step
        p = p + v
        points[i] = p
    return points


def shake_kernel(path: np.ndarray, extent: float) -> np.ndarray:
    """The blur kernel of a shake ``path`` scaled so its longer bounding-box side spans ``extent`` px
    (float32, sum 1, centred on the path's mean so it does not shift the image on average)."""
    if not math.isfinite(extent) or extent < 1:
        raise DegradationError(f"shake extent must be >= 1 px, got {extent!r}")
    pts = np.asarray(path, dtype=np.float64)
    span = float((pts.max(0) - pts.min(0)).max())
    pts = (pts - pts.mean(0)) * ((extent - 1.0) / max(span, 1e-9))
    half = math.ceil(float(np.abs(pts).max())) + 1
    size = 2 * half + 1
    # Densify the polyline (4 samples per px) so the splat is a continuous stroke, not dots.
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, along[-1], max(2, math.ceil(along[-1] * 4)))
    xs, ys = np.interp(s, along, pts[:, 0]) + half, np.interp(s, along, pts[:, 1]) + half
    k = _splat(xs, ys, np.ones_like(xs), size)
    return (k / k.sum()).astype(np.float32)


def sample_blur_kernel(level: float, rng: np.random.Generator, style: str | None = None) -> tuple[np.ndarray, str]:
    """The kernel ``blur`` uses and its style (``gaussian``, ``defocus``, ``motion`` or ``shake``).

    Gaussian: sigma = level. Defocus: disk radius 2 * level. Motion: length ``4 * level + 1`` px at a
    uniform angle in [0, 180). Shake: a random trajectory of extent ``4 * level + 1`` px. Consumes the
    same draws as ``DEGRADATIONS["blur"]``, so a generator in the same state tells which kernel a blur
    call will use.
    """
    level = check_level("blur", level)
    check_style("blur", style)
    # Draw every choice every time so the rng stream (and thus the kernel) depends neither on the level
    # nor on a pinned style.
    kind = _pick_style("blur", rng, style)
    angle = float(rng.uniform(0.0, 180.0))
    path = shake_path(rng)
    logger.debug("blur: %s at level %.2f", kind, level)
    if kind == "motion":
        return motion_kernel(4.0 * level + 1.0, angle), kind
    if kind == "shake":
        return shake_kernel(path, 4.0 * level + 1.0), kind
    if kind == "defocus":
        return defocus_kernel(2.0 * level), kind
    return gaussian_kernel(level), kind


def _blur(x: np.ndarray, level: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Gaussian, defocus, linear motion or camera-shake blur (see :func:`sample_blur_kernel`)."""
    kernel, _ = sample_blur_kernel(level, rng, style)
    return cv2.filter2D(x, -1, kernel, borderType=_BORDER)


# --------------------------------------------------------------------------------------------------
# rain


def rain_composite(
    clean: np.ndarray, streaks: np.ndarray, transmission: np.ndarray | float, airlight: np.ndarray | float
) -> np.ndarray:
    """The rain model ``T * (clean + S) + (1 - T) * A`` on float arrays, unclipped, float32.

    ``clean`` is HxWx3 in [0, 1]; ``streaks`` (S) and ``transmission`` (T) are HxW, HxWx3 or
    scalars (HxW maps are broadcast over the channels); ``airlight`` (A) is a scalar or an RGB triple.
    """
    x = np.asarray(clean, dtype=np.float32)
    s = np.asarray(streaks, dtype=np.float32)
    t = np.asarray(transmission, dtype=np.float32)
    a = np.asarray(airlight, dtype=np.float32)
    if s.ndim == 2:
        s = s[..., None]
    if t.ndim == 2:
        t = t[..., None]
    return (t * (x + s) + (1.0 - t) * a).astype(np.float32)


def _streak_kernel(length: float, angle_deg: float, width: float) -> np.ndarray:
    """A streak: a line whose brightness tapers at both ends, softened across by ``width`` px, peak 1."""
    # Flat middle and soft ends: real streaks are drops smeared over the exposure, fading in and out.
    profile = np.clip(np.sin(np.linspace(0.0, np.pi, 33)) * 1.6, 0.0, 1.0)
    k = _splat_line(length, angle_deg, profile).astype(np.float32)
    pad = math.ceil(2 * width)
    k = cv2.GaussianBlur(np.pad(k, pad), (0, 0), width)
    return k / k.max()


# The depth layers of rain, far to near: (probability the layer is present, streak width px, length px at
# level 1, seed density at level 1 and at level 5, brightness range, defocus sigma range px).
_RAIN_LAYERS = (
    (0.8, (0.3, 0.5), (12.0, 28.0), (0.003, 0.015), (0.06, 0.2), (0.0, 0.0)),
    (1.0, (0.4, 0.8), (25.0, 50.0), (0.001, 0.005), (0.12, 0.4), (0.0, 0.0)),
    (0.5, (0.8, 1.6), (45.0, 90.0), (0.0001, 0.0005), (0.08, 0.25), (0.8, 2.0)),
)


def _rain_layer(h: int, w: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Streak layer S (HxW, [0, 1]): up to three depth layers of streaks around one wind angle."""
    t = (level - 1.0) / 4.0  # 0 at level 1, 1 at level 5
    wind = 90.0 + float(rng.uniform(-25.0, 25.0))
    spread = float(rng.uniform(0.0, 8.0))  # deg: gusts and turbulence fan the streaks out
    density_scale = float(np.exp(rng.uniform(math.log(0.5), math.log(3.0))))
    # The scale the rain was captured at: most photos are seen smaller than the sensor took them, which
    # makes streaks shorter, thinner and fainter (web-sized photos show fine, faint, dense streaks).
    capture = float(np.exp(rng.uniform(math.log(0.3), 0.0)))
    stretch = (0.6 + 0.8 * t) * capture  # streaks lengthen with intensity: bigger, faster drops
    faint = float(rng.uniform(0.3, 1.0)) * (0.5 + 0.5 * capture)  # brightness factor
    layer = np.zeros((h, w), dtype=np.float32)
    for p_present, width_r, length_r, (d_lo, d_hi), bright_r, defocus_r in _RAIN_LAYERS:
        present = rng.random() < p_present
        width = max(0.3, float(rng.uniform(*width_r)) * math.sqrt(capture))
        length = max(3.0, float(rng.uniform(*length_r)) * stretch)
        defocus = float(rng.uniform(*defocus_r))
        angles = wind + spread * rng.standard_normal(3)
        u = rng.random((h, w), dtype=np.float32)
        brightness = rng.uniform(*bright_r, size=(h, w)).astype(np.float32) * np.float32(faint)
        group = rng.integers(0, 3, size=(h, w))
        if not present:
            continue
        # Shorter streaks at a smaller capture scale cover less each, and the frame holds more of them.
        density = (d_lo + (d_hi - d_lo) * t) * density_scale / capture
        seeds = np.where(u < density, brightness, 0.0).astype(np.float32)
        streaks = np.zeros((h, w), dtype=np.float32)
        for g in range(3):  # three angles drawn around the wind: not ruled parallel lines
            kernel = _streak_kernel(length, float(angles[g]), width)
            streaks += cv2.filter2D(np.where(group == g, seeds, 0.0).astype(np.float32), -1, kernel,
                                    borderType=_BORDER)
        if defocus > 0:  # near drops are out of focus
            streaks = cv2.GaussianBlur(streaks, (0, 0), defocus, borderType=_BORDER)
        layer += streaks
    return np.clip(layer, 0.0, 1.0)


_MAX_LENS_DROPS = 12


def _lens_drops(y: np.ndarray, level: float, draws: tuple[np.ndarray, np.ndarray, float], airlight: float) -> np.ndarray:
    """Drops on the lens: out-of-focus discs that refract a blurred, slightly brighter view of the scene.
    ``draws``: centres in [0, 1)^2, radii in px and a uniform for the count (drawn by the caller, always)."""
    h, w = y.shape[:2]
    t = (level - 1.0) / 4.0
    centres, radii, u = draws
    count = 1 + int(round((2.0 + 8.0 * t) * u))
    mask = np.zeros((h, w), dtype=np.float32)
    for (cx, cy), r in zip(centres[:count] * np.array([w, h]), radii[:count], strict=True):
        cv2.circle(mask, (int(cx), int(cy)), max(1, int(round(r))), 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
    seen = cv2.GaussianBlur(y, (0, 0), 3.0, borderType=_BORDER) * 0.85 + 0.15 * airlight
    return y * (1.0 - mask) + seen * mask


def _rain(x: np.ndarray, level: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Rain streaks in depth layers plus veil ``T (x + S) + (1 - T) A``, sometimes drops on the lens."""
    h, w = x.shape[:2]
    t = (level - 1.0) / 4.0
    streaks = _rain_layer(h, w, level, rng)
    # The veil: heavy rain's accumulation, thicker with intensity, uneven across the frame.
    heaviness = float(rng.uniform(0.5, 2.5))
    field = _low_freq_field(h, w, rng)
    transmission = np.clip(0.96 - 0.2 * t * heaviness + 0.08 * (0.3 + t) * (field - 0.5), 0.4, 1.0)
    airlight = float(rng.uniform(0.7, 1.0))
    tint = airlight + rng.uniform(-0.03, 0.03, size=3)
    drops = rng.random() < 0.25
    drop_draws = (rng.random((_MAX_LENS_DROPS, 2)), rng.uniform(2.0, 8.0, size=_MAX_LENS_DROPS), float(rng.random()))
    y = rain_composite(x, streaks, transmission, np.clip(tint, 0.0, 1.0))
    return _lens_drops(y, level, drop_draws, airlight) if drops else y


# --------------------------------------------------------------------------------------------------
# haze


def haze_composite(
    clean: np.ndarray, depth: np.ndarray, beta: float, airlight: np.ndarray | float
) -> np.ndarray:
    """The scattering model ``clean * t + A * (1 - t)``, ``t = exp(-beta * depth)``, float32.

    ``clean`` is HxWx3 in [0, 1], ``depth`` HxW (or HxWx3), ``airlight`` a scalar, an RGB triple or an
    HxWx3 map (non-uniform airlight).
    """
    x = np.asarray(clean, dtype=np.float32)
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim == 2:
        d = d[..., None]
    t = np.exp(-np.float32(beta) * d)
    a = np.asarray(airlight, dtype=np.float32)
    return (x * t + a * (1.0 - t)).astype(np.float32)


def _guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (grey guide): smooths ``p`` while keeping the edges of ``guide``."""
    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, (2 * radius + 1, 2 * radius + 1), borderType=_BORDER)

    mean_i, mean_p = box(guide), box(p)
    a = (box(guide * p) - mean_i * mean_p) / (box(guide * guide) - mean_i * mean_i + np.float32(eps))
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def _smooth_small(plane: np.ndarray, cells: int, sigma: float) -> np.ndarray:
    """``plane`` smoothed at about 1 / ``cells`` of the frame, computed on a tiny copy (cheap at any size)."""
    h, w = plane.shape
    sw, sh = max(2, round(cells * w / max(h, w))), max(2, round(cells * h / max(h, w)))
    small = cv2.resize(plane, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma, borderType=_BORDER)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, None)


def haze_depth(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible depth proxy in [0, 1] (1 = far) for a single photo, HxW float32, from its structure.

    A weighted sum (weights drawn per image) of: a horizon ramp (the top of the frame is far) tilted by
    up to 15 deg; the luminance smoothed at about 1/16 of the frame (bright, flat regions such as sky or
    a lit wall read as far, dark foreground objects as near); a texture cue (flat regions without
    detail read as far: distance washes out texture); and a random low-frequency field (patchy fog).
    The sum is normalized, raised to a power in [1.2, 2] (depth grows faster towards the horizon), made
    edge-aware by a guided filter with the image as guide (fog stops at an object's outline rather than
    bleeding over it), and mapped to ``[near, 1]`` with ``near`` uniform in [0, 0.2]: the farthest point
    always gets ``t = exp(-beta)``, the nearest almost none of the fog, so beta means the same on every photo.
    """
    x = _to_float(image)
    h, w = x.shape[:2]
    near = float(rng.uniform(0.0, 0.2))
    tilt = math.radians(float(rng.uniform(-15.0, 15.0)))
    w_ramp, w_lum, w_flat, w_field = (float(rng.uniform(lo, hi)) for lo, hi in
                                      ((0.4, 0.65), (0.1, 0.3), (0.05, 0.2), (0.05, 0.2)))
    power = float(rng.uniform(1.2, 2.0))
    field = _low_freq_field(h, w, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (1.0 - yy / max(h - 1, 1)) * math.cos(tilt) + (xx / max(w - 1, 1) - 0.5) * math.sin(tilt)
    lum = _luminance(x)
    smooth_lum = _smooth_small(lum, 16, 1.5)
    detail = _smooth_small(np.abs(cv2.Laplacian(lum, cv2.CV_32F, ksize=3)), 16, 1.0)
    flat = 1.0 - detail / max(float(detail.max()), 1e-6)
    d = w_ramp * ramp + w_lum * smooth_lum + w_flat * flat + w_field * field

    def normalize(a: np.ndarray) -> np.ndarray:
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / max(hi - lo, 1e-6)

    # The power makes depth grow faster towards the far end, as it does towards a horizon, so the near
    # half of the frame keeps its contrast and the fog visibly thickens with distance.
    d = normalize(d) ** power
    d = normalize(_guided_filter(lum, d.astype(np.float32), max(2, round(min(h, w) / 24)), 1e-3))
    return (near + (1.0 - near) * d).astype(np.float32)


def _haze(x: np.ndarray, beta: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Fog: ``x t + A (1 - t)``, ``t = exp(-beta d)``, d from :func:`haze_depth`, A coloured and uneven."""
    h, w = x.shape[:2]
    depth = haze_depth(x, rng)
    grey = float(rng.uniform(0.7, 1.0))
    # Bluish (clear-sky scattering) to warm (sodium lamps, low sun): blue against red, green in between.
    tint = float(rng.uniform(-0.08, 0.08)) * np.array([-1.0, 0.0, 1.0]) + rng.uniform(-0.02, 0.02, size=3)
    glow = float(rng.uniform(0.0, 0.2))  # uneven: a smooth +-10% field, brighter towards one side
    field = _low_freq_field(h, w, rng, cells=3)
    airlight = np.clip(grey * (1.0 + tint)[None, None, :] * (1.0 + glow * (field[..., None] - 0.5)), 0.0, 1.0)
    return haze_composite(x, depth, beta, airlight)


# --------------------------------------------------------------------------------------------------
# snow


def _flake_kernel(sigma: float, streak: float, angle_deg: float, sharpness: float) -> np.ndarray:
    """A round flake of ``sigma`` px smeared by ``streak`` px along the fall direction, peak 1.

    A Gaussian scaled by ``sharpness`` (>= 1) and clipped at 1: 1 is a soft defocused blob, about 2 a
    flat disc with a soft rim (a flake in focus), 3 a crisp crystal.
    """
    blob = gaussian_kernel(sigma)
    blob = np.clip(sharpness * blob / blob.max(), 0.0, 1.0)
    if streak > 1.0:
        line = motion_kernel(streak, angle_deg)
        pad = line.shape[0] // 2
        blob = cv2.filter2D(np.pad(blob, pad), -1, line, borderType=cv2.BORDER_CONSTANT)
    return blob / blob.max()


# Flake depth classes, far to near: (blob sigma px, seed density at level 1 and at level 5, streak length
# px, sharpness, brightness): each a range drawn per image.
_SNOW_CLASSES = (
    ((0.5, 0.9), (0.0012, 0.006), (1.0, 8.0), (1.2, 3.0), (0.5, 0.95)),
    ((1.1, 2.0), (0.0002, 0.0012), (1.0, 6.0), (1.2, 2.5), (0.6, 1.0)),
    ((2.5, 4.5), (0.00002, 0.00015), (1.0, 3.0), (1.0, 1.4), (0.35, 0.8)),
)


def _snow_layer(h: int, w: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Flake opacity F (HxW, [0, 1]) from three depth classes: many small, some medium, few large."""
    t = (level - 1.0) / 4.0
    fall = 90.0 + float(rng.uniform(-35.0, 35.0))
    density_scale = float(np.exp(rng.uniform(math.log(0.6), math.log(1.6))))
    layer = np.zeros((h, w), dtype=np.float32)
    for sigma_r, (d_lo, d_hi), streak_r, sharp_r, bright_r in _SNOW_CLASSES:
        sigma, streak, sharp = (float(rng.uniform(*r)) for r in (sigma_r, streak_r, sharp_r))
        u = rng.random((h, w), dtype=np.float32)
        brightness = rng.uniform(*bright_r, size=(h, w)).astype(np.float32)
        seeds = np.where(u < (d_lo + (d_hi - d_lo) * t) * density_scale, brightness, 0.0).astype(np.float32)
        flakes = cv2.filter2D(seeds, -1, _flake_kernel(sigma, streak, fall, sharp), borderType=_BORDER)
        layer = np.maximum(layer, flakes)  # flakes occlude each other rather than adding up
    return np.clip(layer, 0.0, 1.0)


def _snow(x: np.ndarray, level: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Whitish veil ``x (1 - v) + v A`` (uneven across the frame), then flakes ``y (1 - F) + F``."""
    h, w = x.shape[:2]
    t = (level - 1.0) / 4.0
    flakes = _snow_layer(h, w, level, rng)[..., None]
    veil = (0.05 + 0.13 * t + float(rng.uniform(-0.02, 0.02))) * (1.0 + 0.4 * (_low_freq_field(h, w, rng) - 0.5))
    veil = np.clip(veil, 0.0, 1.0)[..., None]
    airlight = float(rng.uniform(0.85, 1.0))
    y = x * (1.0 - veil) + veil * airlight
    return y * (1.0 - flakes) + flakes


# --------------------------------------------------------------------------------------------------
# low light

_MAX_LAMPS = 4


def _lowlight(x: np.ndarray, stops: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Under-expose by ``stops`` in linear light and develop through a random camera (see the module doc)."""
    h, w = x.shape[:2]
    # The camera: every draw is made up front, whatever the level, so one seed is one camera and scene.
    full_scale = float(np.exp(rng.uniform(math.log(150.0), math.log(80000.0))))  # electrons at 1.0: high ISO to a tripod
    read_sigma = float(rng.uniform(1.0, 5.0))  # electrons
    crosstalk, demosaic = float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.0, 0.8))
    cast = np.exp(rng.normal(0.0, 0.08, size=3)).astype(np.float32)  # white balance off: warm, cool, green
    cast /= float(cast[1])
    partial, keep, threshold = rng.random() < 0.7, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.35, 0.7))
    lamps, lamp_xy = rng.random() < 0.15, rng.random((_MAX_LAMPS, 2)) * np.array([w, h])
    lamp_size, lamp_power = rng.uniform(1.0, 3.0, _MAX_LAMPS), rng.uniform(0.5, 2.0, _MAX_LAMPS)
    curve, curve_strength = ("filmic" if rng.random() < 0.5 else "gamma"), float(rng.uniform(0.5, 1.0))
    toe, black = rng.random() < 0.6, float(rng.uniform(0.02, 0.15))
    vivid, saturation = rng.random() < 0.5, float(rng.uniform(1.0, 1.35))
    denoise, denoise_strength = rng.random() < 0.7, float(rng.uniform(0.3, 1.0))
    sharpened, sharp_amount = rng.random() < 0.4, float(rng.uniform(0.2, 0.8))
    compressed, quality = rng.random() < 0.5, int(rng.integers(60, 96))

    linear = np.power(x, np.float32(_GAMMA)) * cast
    exposure = np.full((h, w), np.float32(2.0**-stops))
    if partial:
        # A scene brighter than the sensor's range: the exposure is set for the bright parts (sky, lamps,
        # a lit window), which are under-exposed by only (1 - keep) of the stops; the rest falls into shadow.
        m = np.clip((_smooth_small(_luminance(x), 24, 1.0) - threshold) / (1.0 - threshold), 0.0, 1.0)
        exposure = np.power(np.float32(2.0), -stops * (1.0 - keep * m * m * (3.0 - 2.0 * m)))
    linear = linear * exposure[..., None]
    if lamps:  # light sources keep their brightness whatever the exposure: saturated cores, warm halos
        glow = np.zeros((h, w), dtype=np.float32)
        for (cx, cy), size, power in zip(lamp_xy, lamp_size, lamp_power, strict=True):
            glow[min(int(cy), h - 1), min(int(cx), w - 1)] += power * 40.0 * size * size
        glow = cv2.GaussianBlur(glow, (0, 0), float(lamp_size.mean()))
        linear = linear + glow[..., None] * np.array([1.0, 0.8, 0.55], dtype=np.float32)
    y = camera.colour_noise(linear, full_scale, read_sigma, crosstalk, demosaic, rng)
    y = camera.tone_curve(y, curve, curve_strength)
    if toe:  # the black level / contrast curve: the deepest shadows become true black
        y = np.clip((y - black) / (1.0 - black), 0.0, None)
    if vivid:  # the camera's colour boost, about the pixel's luminance
        lum = _luminance(y)[..., None]
        y = lum + saturation * (y - lum)
    if denoise:  # the camera's noise reduction: edge-preserving, leaves blotchy low-frequency noise
        smooth = cv2.bilateralFilter(y, 5, 0.08 + 0.1 * denoise_strength, 2.0)
        y = (1.0 - denoise_strength) * y + denoise_strength * smooth
    if sharpened:
        y = camera.sharpen(y, sharp_amount, 1.0)
    y = np.clip(y, 0.0, 1.0)
    return camera.jpeg(y, quality) if compressed else y


# --------------------------------------------------------------------------------------------------
# mix


def plan_mix(level: float, rng: np.random.Generator) -> list[DegradationSpec]:
    """The two degradations ``mix`` applies, in :data:`MIX_ORDER`, with their absolute levels.

    Consumes the same rng draws as the start of ``DEGRADATIONS["mix"]``, so calling it with a
    generator in the same state tells which two a mix call will apply.
    """
    level = check_level("mix", level)
    picked = rng.choice(len(BASE_DEGRADATIONS), size=2, replace=False)
    names = sorted((BASE_DEGRADATIONS[i] for i in picked), key=MIX_ORDER.index)
    specs = []
    for name in names:
        r = LEVELS[name]
        specs.append(DegradationSpec(name, r.train_lo + level * (r.train_hi - r.train_lo)))
    return specs


def _mix(x: np.ndarray, level: float, rng: np.random.Generator, style: str | None) -> np.ndarray:
    """Two different base degradations at ``level`` of their training ranges, in physical order."""
    plan = plan_mix(level, rng)
    logger.debug("mix: %s", "+".join(map(str, plan)))
    for spec in plan:
        x = np.clip(_CORES[spec.name](x, float(spec.level), rng, None), 0.0, 1.0)
    return x


_CORES: dict[str, _Core] = {
    "noise": _noise,
    "blur": _blur,
    "rain": _rain,
    "haze": _haze,
    "snow": _snow,
    "lowlight": _lowlight,
    "mix": _mix,
}

DEGRADATIONS: dict[str, DegradationFn] = {name: _wrap(core, name) for name, core in _CORES.items()}


# --------------------------------------------------------------------------------------------------
# entry point


def generator_digest() -> str:
    """12 hex digits of SHA-256 over the source of the generators (this module and :mod:`adsrt.train.camera`):
    cached evaluations key on it, so figures of one set of families are never served for another."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for module in (__file__, camera.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:12]


def degrade(
    image: np.ndarray,
    specs: str | DegradationSpec | Sequence[DegradationSpec],
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Apply ``specs`` to ``image`` in order and return an image of the same dtype and shape.

    ``specs`` is a spec string (``"noise:25+blur:2"``), one :class:`DegradationSpec` or a sequence
    of them; a spec without a level samples one from its training range. ``rng`` is a Generator, an
    int seed, or None for fresh OS entropy. Intermediate results stay in float32 so a composition is
    quantized only once.
    """
    if isinstance(specs, str):
        plan = parse_specs(specs)
    elif isinstance(specs, DegradationSpec):
        plan = [specs]
    else:
        plan = list(specs)
        for spec in plan:
            if not isinstance(spec, DegradationSpec):
                raise DegradationError(f"expected DegradationSpec items, got {type(spec).__name__}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    x = _to_float(image)
    for spec in plan:
        level = sample_level(spec.name, rng) if spec.level is None else check_level(spec.name, spec.level)
        x = np.clip(_CORES[spec.name](x, level, rng, spec.style), 0.0, 1.0)
    return _from_float(x, image.dtype)
