"""Synthetic degradations for training and evaluating the all-in-one restorer.

Every degradation is a plain function ``fn(clean, level, rng) -> degraded`` (a :data:`DegradationFn`)
kept in the plain dict :data:`DEGRADATIONS`; :data:`LEVELS` holds, per name, the documented valid
range of ``level``, the range training samples from, a typical default and what the number means.

Image contract (all functions): RGB, shape ``H x W x 3``, either ``uint8`` in 0..255 or
``float32``/``float64`` in [0, 1]. The result has the same shape and dtype (uint8: round, then clip;
float: clip to [0, 1]). Internally everything runs in float32 [0, 1]. Randomness comes only from the
``numpy.random.Generator`` passed in, so one seed gives one output. The random draws a degradation
makes do not depend on the level (except lowlight's Poisson sampler), so with one seed a higher level
degrades the *same* streaks, flakes, depth map or kernel more strongly. Sizes are in pixels of the
image being degraded (as in the Rain100L / BSD68 style datasets), so degrading a crop matches
cropping a degraded image.

Models and levels
-----------------
``noise``    additive white Gaussian noise, ``y = x + n``, ``n ~ N(0, (level/255)^2)`` per channel.
             level = sigma on the 0..255 scale; valid [0, 100], train [5, 55], default 25
             (15 / 25 / 50 are the usual benchmark settings; noise:25 gives PSNR ~ 20.2 dB).
``blur``     ``y = k * x`` with reflected borders; the rng picks (50/50) a Gaussian kernel with
             sigma = level, or a motion kernel: an anti-aliased straight line of length
             ``4 * level + 1`` px at a uniform random angle. level = blur strength in px;
             valid [0.5, 6], train [1, 4], default 2.
``rain``     the additive-composite rain model ``y = T * (x + S) + (1 - T) * A``: S is a streak
             layer (sparse random seeds smeared into thin, tapered, slanted lines sharing one angle
             within +-20 deg of vertical, three length classes, random brightness), T a veil
             transmission (about 0.95 at level 1 down to 0.78 at level 5, varying smoothly across
             the frame) and A a bright grey atmospheric light in [0.8, 1.0].
             level = rain intensity: streak density, length and veil grow with it;
             valid [1, 5], train [1, 5], default 3.
``haze``     the atmospheric scattering model ``y = x * t + A * (1 - t)``, ``t = exp(-beta * d)``.
             The depth proxy d (see :func:`haze_depth`) blends a vertical gradient (top of the frame
             is far), the heavily smoothed luminance (bright, flat regions such as sky read as far,
             dark foreground as near) and a random low-frequency field, normalized, raised to the
             power 1.5 (depth grows towards the horizon) and mapped to [near, 1], near in [0, 0.2].
             A is near-grey in [0.75, 1.0].
             level = beta (scattering coefficient per unit of d); valid [0.2, 4], train [0.5, 2.5],
             default 1.5.
``snow``     a whitish veil (``x (1 - v) + v A``) then a flake layer F composited as
             ``y (1 - F) + F``: three depth classes of soft round blobs (many small, fewer medium,
             few large and defocused), the small and medium ones slightly streaked along a common
             fall direction. level = snow intensity (flake density and veil); valid [1, 5],
             train [1, 5], default 3.
``lowlight`` under-exposure by ``level`` stops, simulated in the linear domain: decode with gamma 2.2,
             scale by ``2 ** -level``, draw shot noise (Poisson on a random photon budget of
             150..1500 electrons at full scale) plus Gaussian read noise (1..4 e-), clip and re-encode.
             No brightness is added back, so the result is a dark, noisy night shot whose mean
             falls monotonically with the level. valid [0.5, 6], train [1.5, 4.5], default 3.
``mix``      two different base degradations chosen by the rng, each at
             ``train_lo + level * (train_hi - train_lo)`` of its training range, applied in the
             physical order of :data:`MIX_ORDER` (scene effects haze, rain, snow; then the optics:
             blur; then the sensor: lowlight, noise last). level = relative strength in [0, 1]
             (0 = mildest training level, 1 = strongest); valid [0, 1], train [0, 1], default 0.5.

Specs are written ``name[:level]`` and composed with ``+`` (applied left to right), e.g.
``"noise:25"``, ``"blur"`` (level sampled from the training range) or ``"haze:1.2+noise:15"``.
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

__all__ = [
    "BASE_DEGRADATIONS",
    "DEGRADATIONS",
    "LEVELS",
    "MIX_ORDER",
    "DegradationFn",
    "DegradationSpec",
    "LevelRange",
    "check_level",
    "degrade",
    "gaussian_kernel",
    "haze_composite",
    "haze_depth",
    "motion_kernel",
    "parse_specs",
    "plan_mix",
    "rain_composite",
    "sample_blur_kernel",
    "sample_level",
]

logger = logging.getLogger(__name__)

DegradationFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

# Order in which mixed degradations are applied: what happens in the scene, then the lens, then the sensor.
MIX_ORDER: tuple[str, ...] = ("haze", "rain", "snow", "blur", "lowlight", "noise")
BASE_DEGRADATIONS: tuple[str, ...] = ("noise", "blur", "rain", "haze", "snow", "lowlight")

_BORDER = cv2.BORDER_REFLECT
_GAMMA = 2.2
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


LEVELS: dict[str, LevelRange] = {
    "noise": LevelRange(0.0, 100.0, 5.0, 55.0, 25.0, "Gaussian sigma on the 0-255 scale"),
    "blur": LevelRange(
        0.5, 6.0, 1.0, 4.0, 2.0, "blur strength in px (Gaussian sigma, or motion length 4*level+1)"
    ),
    "rain": LevelRange(1.0, 5.0, 1.0, 5.0, 3.0, "rain intensity 1-5 (streak density, length, veil)"),
    "haze": LevelRange(0.2, 4.0, 0.5, 2.5, 1.5, "scattering coefficient beta, t = exp(-beta * depth)"),
    "snow": LevelRange(1.0, 5.0, 1.0, 5.0, 3.0, "snow intensity 1-5 (flake density and veil)"),
    "lowlight": LevelRange(0.5, 6.0, 1.5, 4.5, 3.0, "stops of under-exposure (linear scale 2**-level)"),
    "mix": LevelRange(0.0, 1.0, 0.0, 1.0, 0.5, "relative strength 0-1 within each part's training range"),
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
    if not math.isfinite(value) or not rng_.lo <= value <= rng_.hi:
        raise DegradationError(f"{name}: level {level!r} is outside [{rng_.lo:g}, {rng_.hi:g}] ({rng_.unit})")
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
    """One degradation and its level; ``level=None`` means "sample from the training range"."""

    name: str
    level: float | None = None

    def __post_init__(self) -> None:
        # Validate eagerly so a bad spec fails where it is written, not deep inside a data loader.
        if self.name not in LEVELS:
            raise DegradationError(f"unknown degradation {self.name!r}; known: {_known()}")
        if self.level is not None:
            object.__setattr__(self, "level", check_level(self.name, self.level))

    def __str__(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level:g}"


def parse_specs(text: str) -> list[DegradationSpec]:
    """Parse ``"noise:25"``, ``"blur"`` or ``"noise:25+blur:2"`` into specs (applied left to right)."""
    if not isinstance(text, str) or not text.strip():
        raise DegradationError(
            f"empty degradation spec; write name[:level][+name[:level]...], names: {_known()}"
        )
    specs = []
    for part in text.split("+"):
        item = part.strip()
        name, sep, level_text = item.partition(":")
        name = name.strip().lower()
        if not name:
            raise DegradationError(f"empty degradation in {text!r}; known: {_known()}")
        if name not in LEVELS:
            raise DegradationError(f"unknown degradation {name!r} in {text!r}; known: {_known()}")
        if not sep:
            specs.append(DegradationSpec(name))
            continue
        try:
            level = float(level_text.strip())
        except ValueError as exc:
            raise DegradationError(
                f"{name}: level {level_text.strip()!r} in {text!r} is not a number"
            ) from exc
        specs.append(DegradationSpec(name, check_level(name, level)))
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


def _wrap(core: Callable[[np.ndarray, float, np.random.Generator], np.ndarray], name: str) -> DegradationFn:
    """Turn a float32 -> float32 core into a public DegradationFn that checks input and keeps the dtype."""

    def fn(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
        level = check_level(name, level)
        return _from_float(core(_to_float(image), level, rng), image.dtype)

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


def _noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise with standard deviation ``sigma / 255``."""
    return x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma / 255.0)


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
    # Rows grow downwards, so a positive angle points up and to the right as seen on screen.
    xs, ys = c + s * math.cos(a), c - s * math.sin(a)
    weights = (
        np.ones(n)
        if profile is None
        else np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(profile)), profile)
    )
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    k = np.zeros((size, size), dtype=np.float64)
    for dy, dx, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(k, (y0 + dy, x0 + dx), wgt * weights)
    return k


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """An anti-aliased linear motion kernel (float32, sum 1).

    ``length`` is the extent of the motion in px (>= 1; 1 is the identity), ``angle_deg`` its
    direction measured counter-clockwise from the horizontal as seen on screen (90 = vertical).
    """
    if not math.isfinite(length) or length < 1:
        raise DegradationError(f"motion length must be >= 1 px, got {length!r}")
    k = _splat_line(length, angle_deg)
    return (k / k.sum()).astype(np.float32)


def sample_blur_kernel(level: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The kernel ``blur`` uses and its kind, ``"gaussian"`` or ``"motion"`` (chosen 50/50).

    Gaussian: sigma = level. Motion: length ``4 * level + 1`` px at a uniform angle in [0, 180).
    Consumes the same draws as ``DEGRADATIONS["blur"]``, so a generator in the same state tells
    which kernel a blur call will use.
    """
    level = check_level("blur", level)
    # Draw both choices every time so the rng stream (and thus the kernel) does not depend on the level.
    use_motion = bool(rng.random() < 0.5)
    angle = float(rng.uniform(0.0, 180.0))
    if use_motion:
        logger.debug("blur: motion length %.1f px at %.0f deg", 4.0 * level + 1.0, angle)
        return motion_kernel(4.0 * level + 1.0, angle), "motion"
    logger.debug("blur: Gaussian sigma %.2f px", level)
    return gaussian_kernel(level), "gaussian"


def _blur(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian (sigma = level) or linear motion (length 4*level+1, random angle) blur, 50/50."""
    kernel, _ = sample_blur_kernel(level, rng)
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
    """A thin streak: a line whose brightness tapers at both ends, softened across, peak 1."""
    # Flat middle and soft ends: real streaks are drops smeared over the exposure, fading in and out.
    profile = np.clip(np.sin(np.linspace(0.0, np.pi, 33)) * 1.6, 0.0, 1.0)
    k = _splat_line(length, angle_deg, profile).astype(np.float32)
    pad = math.ceil(2 * width)
    k = cv2.GaussianBlur(np.pad(k, pad), (0, 0), width)
    return k / k.max()


def _rain_layer(h: int, w: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Streak layer S (HxW, [0, 1]): sparse seeds smeared along one common slanted direction."""
    t = (level - 1.0) / 4.0  # 0 at level 1, 1 at level 5
    angle = 90.0 + float(rng.uniform(-20.0, 20.0))
    u = rng.random((h, w), dtype=np.float32)
    brightness = rng.uniform(0.15, 0.6, size=(h, w)).astype(np.float32)
    group = rng.integers(0, 3, size=(h, w))
    jitter = rng.uniform(-3.0, 3.0, size=3)
    density = 0.0015 + 0.0055 * t  # fraction of pixels that start a streak
    base_length = 12.0 + 20.0 * t
    seeds = np.where(u < density, brightness, 0.0).astype(np.float32)
    layer = np.zeros((h, w), dtype=np.float32)
    # Three length classes (near drops streak longer), each with a tiny angle jitter: not ruled lines.
    for g, scale in enumerate((0.5, 1.0, 1.6)):
        kernel = _streak_kernel(base_length * scale, angle + float(jitter[g]), width=0.45)
        layer += cv2.filter2D(
            np.where(group == g, seeds, 0.0).astype(np.float32), -1, kernel, borderType=_BORDER
        )
    return np.clip(layer, 0.0, 1.0)


def _rain(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks plus veil: ``T * (x + S) + (1 - T) * A``."""
    h, w = x.shape[:2]
    t = (level - 1.0) / 4.0
    streaks = _rain_layer(h, w, level, rng)
    # The veil is thicker in heavier rain and a little uneven across the frame.
    transmission = (0.95 - 0.17 * t) + 0.04 * (_low_freq_field(h, w, rng) - 0.5)
    airlight = float(rng.uniform(0.8, 1.0))
    return rain_composite(x, streaks, transmission, airlight)


# --------------------------------------------------------------------------------------------------
# haze


def haze_composite(
    clean: np.ndarray, depth: np.ndarray, beta: float, airlight: np.ndarray | float
) -> np.ndarray:
    """The scattering model ``clean * t + A * (1 - t)``, ``t = exp(-beta * depth)``, float32.

    ``clean`` is HxWx3 in [0, 1], ``depth`` HxW (or HxWx3), ``airlight`` a scalar or an RGB triple.
    """
    x = np.asarray(clean, dtype=np.float32)
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim == 2:
        d = d[..., None]
    t = np.exp(-np.float32(beta) * d)
    a = np.asarray(airlight, dtype=np.float32)
    return (x * t + a * (1.0 - t)).astype(np.float32)


def haze_depth(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible depth proxy in [0, 1] (1 = far) for a single photo, HxW float32.

    A blend of ``0.6 *`` a vertical gradient (the top of the frame is far), ``0.25 *`` the luminance
    smoothed at about 1/16 of the frame (bright, flat regions such as sky or a lit wall read as far,
    dark foreground objects as near) and ``0.15 *`` a random low-frequency field (patchy fog), then
    normalized to [0, 1], raised to the power 1.5 and mapped to ``[near, 1]`` with ``near`` uniform
    in [0, 0.2]: the farthest point always gets ``t = exp(-beta)``, the nearest almost none of the
    fog, so beta means the same on every photo.
    """
    x = _to_float(image)
    h, w = x.shape[:2]
    near = float(rng.uniform(0.0, 0.2))
    gradient = np.broadcast_to(np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None], (h, w))
    # Smooth on a tiny copy: cheap at any resolution and removes all texture from the luminance cue.
    sw, sh = max(2, round(16 * w / max(h, w))), max(2, round(16 * h / max(h, w)))
    small = cv2.resize(_luminance(x), (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5, borderType=_BORDER)
    lum = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    field = _low_freq_field(h, w, rng)
    d = 0.6 * gradient + 0.25 * lum + 0.15 * field
    lo, hi = float(d.min()), float(d.max())
    # The power makes depth grow faster towards the far end, as it does towards a horizon, so the
    # near half of the frame keeps its contrast and the fog visibly thickens with distance.
    d = ((d - lo) / max(hi - lo, 1e-6)) ** 1.5
    return (near + (1.0 - near) * d).astype(np.float32)


def _haze(x: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Fog: ``x * t + A * (1 - t)`` with ``t = exp(-beta * d)`` and d from :func:`haze_depth`."""
    depth = haze_depth(x, rng)
    airlight = float(rng.uniform(0.75, 1.0)) + rng.uniform(-0.02, 0.02, size=3)  # near-grey, slight tint
    return haze_composite(x, depth, beta, np.clip(airlight, 0.0, 1.0))


# --------------------------------------------------------------------------------------------------
# snow


def _flake_kernel(sigma: float, streak: float, angle_deg: float) -> np.ndarray:
    """A soft round flake smeared by ``streak`` px along the fall direction, peak 1.

    A Gaussian scaled by 1.6 and clipped at 1: a flat disc with a soft rim reads as a flake,
    a plain Gaussian as a faint dot.
    """
    blob = gaussian_kernel(sigma)
    blob = np.clip(1.6 * blob / blob.max(), 0.0, 1.0)
    if streak > 1.0:
        line = motion_kernel(streak, angle_deg)
        pad = line.shape[0] // 2
        blob = cv2.filter2D(np.pad(blob, pad), -1, line, borderType=cv2.BORDER_CONSTANT)
    return blob / blob.max()


def _snow_layer(h: int, w: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Flake opacity F (HxW, [0, 1]) from three depth classes: many small, some medium, few large."""
    t = (level - 1.0) / 4.0
    fall = 90.0 + float(rng.uniform(-30.0, 30.0))
    # (blob sigma px, seed density at level 1, at level 5, streak length px, brightness range)
    classes = (
        (0.7, 0.0012, 0.0060, float(rng.uniform(1.0, 5.0)), (0.5, 0.95)),
        (1.4, 0.0002, 0.0012, float(rng.uniform(1.0, 4.0)), (0.6, 1.0)),
        (3.0, 0.00002, 0.00015, 1.0, (0.4, 0.8)),
    )
    layer = np.zeros((h, w), dtype=np.float32)
    for sigma, d_lo, d_hi, streak, (b_lo, b_hi) in classes:
        u = rng.random((h, w), dtype=np.float32)
        brightness = rng.uniform(b_lo, b_hi, size=(h, w)).astype(np.float32)
        seeds = np.where(u < d_lo + (d_hi - d_lo) * t, brightness, 0.0).astype(np.float32)
        flakes = cv2.filter2D(seeds, -1, _flake_kernel(sigma, streak, fall), borderType=_BORDER)
        layer = np.maximum(layer, flakes)  # flakes occlude each other rather than adding up
    return np.clip(layer, 0.0, 1.0)


def _snow(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Whitish veil ``x (1 - v) + v A``, then flakes ``y (1 - F) + F``."""
    h, w = x.shape[:2]
    t = (level - 1.0) / 4.0
    flakes = _snow_layer(h, w, level, rng)[..., None]
    veil = 0.05 + 0.13 * t + float(rng.uniform(-0.02, 0.02))
    airlight = float(rng.uniform(0.85, 1.0))
    y = x * (1.0 - veil) + veil * airlight
    return y * (1.0 - flakes) + flakes


# --------------------------------------------------------------------------------------------------
# low light


def _lowlight(x: np.ndarray, stops: float, rng: np.random.Generator) -> np.ndarray:
    """Under-expose by ``stops`` in linear light with Poisson shot noise and Gaussian read noise."""
    # Photons per pixel at full scale for a normal exposure: small for a phone sensor at high ISO.
    full_scale = float(np.exp(rng.uniform(math.log(150.0), math.log(1500.0))))
    read_sigma = float(rng.uniform(1.0, 4.0))  # electrons
    read = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(read_sigma)
    linear = np.power(x, _GAMMA) * np.float32(2.0**-stops)
    electrons = rng.poisson(linear.astype(np.float64) * full_scale).astype(np.float32)
    y = np.clip((electrons + read) / np.float32(full_scale), 0.0, 1.0)
    return np.power(y, np.float32(1.0 / _GAMMA))


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


def _mix(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Two different base degradations at ``level`` of their training ranges, in physical order."""
    plan = plan_mix(level, rng)
    logger.debug("mix: %s", "+".join(map(str, plan)))
    for spec in plan:
        x = np.clip(_CORES[spec.name](x, float(spec.level), rng), 0.0, 1.0)
    return x


_CORES: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
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
        x = np.clip(_CORES[spec.name](x, level, rng), 0.0, 1.0)
    return _from_float(x, image.dtype)
