"""The runtime API: ``adsrt.load(...) -> Restorer``; ``restore``, ``classify`` and ``stream`` on images.

    import adsrt
    restorer = adsrt.load("model.safetensors")            # backend="auto", device="auto", mode="swap"
    clean = restorer.restore(rgb)                          # HxWx3 uint8 in, same shape out
    restorer.classify(rgb)                                 # {"noise": 0.91, "blur": 0.05, ..., "clean": 0.01}
    for out in restorer.stream(frames): ...                # video: c smoothed over time, reset at scene cuts
    restorer.timings                                       # ms per stage of the last frame

Images are numpy ``HxWx3 uint8`` arrays in the channel order of ``RestorerConfig.channel_order``
(RGB by default; ``"BGR"`` for OpenCV frames); the output has the same shape and order.

Per frame: decode (array -> tensor on the device, value range and channel order of the bundle's input
contract) -> classify (the degradation classifier, which views a large frame through a grid of windows at
its training scale, see :class:`adsrt.arch.DegradationClassifier`: ``p = softmax(logits / T)``,
``c = p[:k]``; the last class is clean/unknown) -> update (``c`` into the model: the fused in-place
update in swap mode, an input in branch mode) -> restore (whole frame, or overlapping blended tiles for
large frames, see :mod:`adsrt.runtime.tiling`) -> encode (tensor -> uint8 array). ``force`` skips the
classifier (a one-hot ``c``; ``"clean"`` gives ``c = 0``, the plain UM).

``mode="local"`` is for frames whose degradation varies across the image (rain on one side, a clean
sky on the other): the classifier scores a lattice of windows instead of the frame as a whole, and their
coefficients become a smooth map ``c(x, y)`` (:mod:`adsrt.runtime.coefficient_map`) that scales each
degradation's branch per pixel (:mod:`adsrt.runtime.branch`). In streams the window coefficients are
smoothed like ``c`` while the lattice keeps its shape. :meth:`Restorer.restore_with_map` takes a map
from the caller (an application's own segmentation, or an oracle).

Streams (:meth:`Restorer.stream`, :meth:`Restorer.step`) smooth ``c`` with an EMA
(``c_t = ema * c_{t-1} + (1 - ema) * p_t[:k]``) and restart it at a scene cut: when the mean absolute
difference of 32x32 grey thumbnails of consecutive frames exceeds ``scene_threshold`` (on [0, 1]).

A non-finite output frame (or non-finite ``c``) raises :class:`adsrt.errors.RestoreError`: the input
is 8-bit and always finite, so this means a broken model or backend, never a bad frame, and it is not
silently written out.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from adsrt.arch.classifier import MAX_TEMPERATURE, MIN_TEMPERATURE
from adsrt.bundle import Bundle, load_bundle
from adsrt.errors import AdsrtError, BundleError, InputError, RestoreError
from adsrt.runtime.backends import (
    MODES,
    PRECISIONS,
    Backend,
    CudaGraphFrame,
    create_backend,
    smooth_coefficients,
)
from adsrt.runtime.coefficient_map import MAP_STEP, CoefficientGrid, window_lattice
from adsrt.runtime.tiling import (
    activation_bytes_per_pixel,
    auto_tile,
    plan_tiles,
    release_freed_memory,
    tiled_restore,
    window_mosaic,
)

log = logging.getLogger(__name__)

__all__ = ["FrameInfo", "Restorer", "RestorerConfig", "Timings", "bundled_models", "load", "resolve_bundle"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # sdk/models, shipped as package data of adsrt
CLEAN = "clean"
THUMB_SIZE = 32


@dataclass
class RestorerConfig:
    """How a :class:`Restorer` runs. Every field has a default; :func:`load` takes them as keywords."""

    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | fp16 | bf16 (the last two on CUDA)
    mode: str = "swap"  # swap | branch | local (a coefficient map per frame) | um (UM only: a baseline)
    channel_order: str = "RGB"  # of the arrays passed in and returned
    force: str | None = None  # a degradation name (skip the classifier, c one-hot) or "clean" (c = 0)
    temperature: float | None = None  # softmax temperature of the classifier; None: the bundle's calibrated one
    ema: float = 0.8  # streams: weight of the previous c (0 = no smoothing; 0.8 ~ 5 frames at 30 fps)
    scene_threshold: float = 0.1  # streams: thumbnail mean abs difference that restarts the smoothing
    tile: int | None = None  # tile size in pixels; None = whole frames unless memory_limit_mb needs tiles
    tile_overlap: int = 32
    # Estimated memory of one frame: its uint8 buffers plus the activations of a forward pass (frames over it
    # are tiled; adsrt.runtime.tiling). 0 = no limit.
    memory_limit_mb: float = 4096.0
    graph: str | None = None  # onnxruntime/tensorrt: an exported ONNX file or engine to run (else exported and cached)
    cache_dir: str | None = None  # onnxruntime/tensorrt: cache of exported graphs and engines
    cuda_graph: bool = False  # CUDA: capture classify -> update -> restore per frame size and replay it
    sync_timings: bool = True  # CUDA: synchronise between stages so the stage timings are true

    def check(self) -> None:
        if self.mode not in MODES:
            raise AdsrtError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise AdsrtError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise AdsrtError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.temperature is not None and not (math.isfinite(self.temperature)
                                                 and MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise AdsrtError(f"temperature must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if not 0.0 <= self.ema < 1.0:
            raise AdsrtError(f"ema must be in [0, 1), got {self.ema}")
        if not self.scene_threshold > 0:
            raise AdsrtError(f"scene_threshold must be > 0, got {self.scene_threshold}")
        if self.tile is not None and self.tile < 16:
            raise AdsrtError(f"tile must be at least 16 pixels, got {self.tile}")
        if not (isinstance(self.tile_overlap, int) and self.tile_overlap >= 0):
            raise AdsrtError(f"tile_overlap must be an int >= 0, got {self.tile_overlap!r}")
        if self.tile is not None and 2 * self.tile_overlap >= self.tile:  # before the first frame, not at it
            raise AdsrtError(f"tile overlap {self.tile_overlap} must be less than half the tile size {self.tile}")
        if not (math.isfinite(self.memory_limit_mb) and self.memory_limit_mb >= 0):
            raise AdsrtError(f"memory_limit_mb must be a finite number >= 0, got {self.memory_limit_mb!r}")


@dataclass
class Timings:
    """Milliseconds per stage of one frame (see the module doc for the stages)."""

    decode: float = 0.0
    classify: float = 0.0
    update: float = 0.0
    restore: float = 0.0
    encode: float = 0.0

    @property
    def total(self) -> float:
        return self.decode + self.classify + self.update + self.restore + self.encode

    @property
    def ads(self) -> float:
        """What ADS adds to a UM frame: classify + update."""
        return self.classify + self.update

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


@dataclass
class FrameInfo:
    """What happened to the last frame: coefficients, class probabilities, scene cut, tiles, timings."""

    c: dict[str, float]  # local mode: the mean of the map over the frame's windows
    probabilities: dict[str, float] | None  # None when the classifier was skipped (force, um mode)
    scene_change: bool = False
    tiles: int = 1
    timings: Timings = field(default_factory=Timings)
    grid: CoefficientGrid | None = None  # local mode: the coefficients at the window centres (the map)


# ------------------------------------------------------------------------------------------- bundles


def bundled_models() -> dict[str, Path]:
    """Bundles shipped inside the package (``adsrt/models/<name>.safetensors``), by name."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.safetensors"))}


def resolve_bundle(bundle: str | os.PathLike | Bundle) -> tuple[Bundle, str]:
    """A bundle and a label for it, from a :class:`Bundle`, a file path or a bundled model name."""
    if isinstance(bundle, Bundle):
        return bundle, "<in-memory bundle>"
    text = os.fspath(bundle)
    path = Path(text)
    if path.exists() or path.suffix == ".safetensors" or "/" in text or os.sep in text:
        return load_bundle(path), str(path)
    models = bundled_models()
    if text in models:
        return load_bundle(models[text]), f"{text} ({models[text]})"
    if text == "default":
        raise BundleError(
            f"the bundled default model is missing from this installation ({MODELS_DIR / 'default.safetensors'}); "
            "reinstall adsrt, or pass a bundle file: adsrt.load('model.safetensors'), --bundle model.safetensors"
        )
    raise BundleError(f"{text!r} is neither a bundle file nor a bundled model (bundled: {', '.join(models) or 'none'})")


def load(bundle: str | os.PathLike | Bundle = "default", *, backend: str = "auto", device: str = "auto",
         precision: str = "fp32", mode: str = "swap", **options: Any) -> Restorer:
    """A :class:`Restorer` for ``bundle`` (a file, a bundled model name, or a :class:`Bundle`).

    ``options`` are the other fields of :class:`RestorerConfig` (``channel_order``, ``force``, ``tile``,
    ``ema``, ...). Which backend ``"auto"`` chose is logged and in :meth:`Restorer.describe`.
    """
    known = {f.name for f in fields(RestorerConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AdsrtError(f"unknown option(s) {unknown}; known: {sorted(known)}")
    config = RestorerConfig(backend=backend, device=device, precision=precision, mode=mode, **options)
    resolved, label = resolve_bundle(bundle)
    return Restorer(resolved, config, source=label)


# ------------------------------------------------------------------------------------------ restorer


class Restorer:
    """Restores frames with one bundle on one backend; caches the model, layout and graphs it builds."""

    def __init__(self, bundle: Bundle, config: RestorerConfig | None = None, *, source: str = "<bundle>") -> None:
        self.config = config = config or RestorerConfig()
        config.check()
        self.bundle = bundle
        self.source = source
        self.degradations = list(bundle.degradations)
        self.k = len(self.degradations)
        self._forced: Tensor | None = None
        self._one_hots: dict[str, Tensor] = {}
        if config.force is not None:
            self._check_force(config.force)
        elif config.mode != "um" and bundle.classifier is None:
            raise AdsrtError("this bundle has no degradation classifier: force a degradation (force=/--force)")
        self.temperature = config.temperature
        if self.temperature is None:
            self.temperature = bundle.classifier.temperature if bundle.classifier is not None else 1.0
        self.backend: Backend = create_backend(bundle, config.backend, device=config.device,
                                               precision=config.precision, mode=config.mode,
                                               cuda_graph=config.cuda_graph, graph=config.graph,
                                               cache_dir=config.cache_dir)
        self.device = self.backend.device
        if config.mode == "um":
            if config.force is not None:
                log.warning("force=%s has no effect in um mode (the UM alone, c = 0)", config.force)
            self._forced = self._one_hot(CLEAN)
        elif config.force is not None:
            self._forced = self._one_hot(config.force)
        if config.mode == "local" and config.force is None and bundle.classifier.window < 1:
            raise AdsrtError("local mode needs a classifier trained on windows; this bundle's classifies whole frames")
        if config.mode == "local" and config.cuda_graph:
            log.warning("cuda_graph ignored in local mode (the coefficient map is made on the host per frame)")
        self._grid_state: CoefficientGrid | None = None  # local streams: the smoothed window coefficients
        lo, hi = bundle.input.value_range
        self._lo, self._scale = float(lo), float(hi - lo)
        self._flip = config.channel_order != bundle.input.channel_order
        self._multiple = bundle.input.pad_multiple
        self._bytes_per_pixel = activation_bytes_per_pixel(bundle.backbone, PRECISIONS[config.precision].itemsize)
        self._state = torch.zeros(self.k + 1, dtype=torch.float32, device=self.device)
        self._prev_thumb: np.ndarray | None = None
        self._graphs: dict[tuple, CudaGraphFrame] = {}
        if config.cuda_graph and self.device.type != "cuda":
            log.warning("cuda_graph ignored: the backend runs on %s", self.device)
        self.timings = Timings()
        self.last: FrameInfo | None = None
        self.skipped = 0  # frames stream() skipped (None or not an image)
        log.info("restorer: %s", self.describe())

    # ----------------------------------------------------------------------------------------- info

    @property
    def mode(self) -> str:
        return self.backend.mode

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def describe(self) -> str:
        c = self.config
        how = f"force {c.force}" if c.force else ("UM only" if c.mode == "um" else f"classifier (T={self.temperature:g})")
        return f"{self.backend.describe()}; bundle {self.source}; degradations {self.degradations}; c from {how}"

    # ------------------------------------------------------------------------------------------ API

    def restore(self, image: np.ndarray, *, force: str | None = None, c: dict[str, float] | None = None) -> np.ndarray:
        """Restore one image (no temporal state). HxWx3 uint8 in :attr:`config` channel order.

        ``force`` (a degradation name, or ``"clean"`` for c = 0) overrides :attr:`RestorerConfig.force`
        for this call only: the classifier is skipped and ``c`` is that one-hot (evaluation's oracle c).
        ``c`` (``{degradation: coefficient}``, each finite and in [0, 1], names left out 0) does the same
        with a coefficient vector of the caller's (evaluation's oracle for a mixture of degradations)."""
        if c is not None:
            if force is not None:
                raise AdsrtError("give force or c, not both")
            forced = self._coefficients(c)
            return self._run(image, temporal=False, forced=None if self.config.mode == "um" else forced)
        if force is None:
            return self._run(image, temporal=False)
        self._check_force(force)
        if self.config.mode == "um":  # the UM alone: c is 0 whatever is forced, as with RestorerConfig.force
            return self._run(image, temporal=False)
        return self._run(image, temporal=False, forced=self._one_hot(force))

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Restore the next frame of a stream: c is smoothed over frames and restarted at scene cuts."""
        return self._run(frame, temporal=True)

    def stream(self, frames: Iterable[np.ndarray | None]) -> Iterator[np.ndarray]:
        """Restore frames in order with temporal state (see :meth:`step`). ``None`` or non-image items
        (broken frames of a source) are skipped with a warning and counted in :attr:`skipped`."""
        self.reset()
        for index, frame in enumerate(frames):
            if not _is_frame(frame):
                self.skipped += 1
                log.warning("frame %d: not an HxWx3 uint8 image (%s); skipped", index, _what(frame))
                continue
            yield self.step(frame)

    def reset(self) -> None:
        """Forget the temporal state (smoothed c, previous frame) and the skip count."""
        self._state.zero_()
        self._grid_state = None
        self._prev_thumb = None
        self.skipped = 0

    def classify(self, image: np.ndarray) -> dict[str, float]:
        """Class probabilities of one image: ``{degradation: p, ..., "clean": p}`` (they sum to 1)."""
        if not self.backend.has_classifier:
            raise AdsrtError("this bundle has no degradation classifier")
        if not _is_frame(image):
            raise InputError(f"expected an HxWx3 uint8 image, got {_what(image)}")
        # Windows only (or a small resize): a large photo is never converted to floats whole.
        with torch.no_grad():
            logits = self.backend.classify(self._classifier_input(image, None))
            probs = torch.softmax(logits / self.temperature, dim=1)[0].cpu()
        if not bool(torch.isfinite(probs).all()):
            raise RestoreError("the classifier produced non-finite probabilities (broken bundle or backend?)")
        return dict(zip([*self.degradations, CLEAN], probs.tolist(), strict=True))

    # ------------------------------------------------------------------------------------ internals

    def _check_force(self, force: str) -> None:
        if force not in (*self.degradations, CLEAN):
            raise AdsrtError(f"cannot force {force!r}: this bundle knows {self.degradations} (or {CLEAN!r})")

    def _coefficients(self, c: dict[str, float]) -> Tensor:
        """``c`` ``[1, k]`` on the device from ``{degradation: coefficient}`` (validated; names left out are 0)."""
        if not isinstance(c, dict):
            raise AdsrtError(f"c must be a dict {{degradation: coefficient}}, got {type(c).__name__}")
        unknown = sorted(str(name) for name in c if name not in self.degradations)
        if unknown:
            raise AdsrtError(f"c names unknown degradations {unknown}: this bundle knows {self.degradations}")
        out = torch.zeros(1, self.k, dtype=torch.float32)
        for name, value in c.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not 0.0 <= value <= 1.0:  # NaN fails the range too
                raise AdsrtError(f"c[{name!r}] must be a finite number in [0, 1], got {value!r}")
            out[0, self.degradations.index(name)] = float(value)
        return out.to(self.device)

    def _one_hot(self, force: str) -> Tensor:
        """``c`` ``[1, k]`` on the device: one-hot for a degradation, zeros for ``"clean"`` (made once per name:
        eval forces one per image)."""
        if force not in self._one_hots:
            c = torch.zeros(1, self.k, dtype=torch.float32)
            if force in self.degradations:
                c[0, self.degradations.index(force)] = 1.0
            self._one_hots[force] = c.to(self.device)
        return self._one_hots[force]

    def _clock(self) -> float:
        if self.device.type == "cuda" and self.config.sync_timings:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _decode(self, image: np.ndarray) -> Tensor:
        if not _is_frame(image):
            raise InputError(f"expected an HxWx3 uint8 image, got {_what(image)}")
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None]
        if self._flip:
            x = x.flip(1)
        x = x.float().mul_(self._scale / 255.0)
        if self._lo:
            x.add_(self._lo)
        return x.to(self.backend.dtype).contiguous()

    def _encode(self, y: Tensor) -> np.ndarray:
        y = y.float()
        if self._flip:
            y = y.flip(1)
        if self._lo:
            y = y - self._lo
        y = y.mul(255.0 / self._scale).clamp_(0.0, 255.0).round_().to(torch.uint8)
        return np.ascontiguousarray(y[0].permute(1, 2, 0).cpu().numpy())

    def _scene_cut(self, image: np.ndarray) -> bool:
        thumb = cv2.resize(image, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        thumb = thumb.mean(axis=2) / 255.0
        prev, self._prev_thumb = self._prev_thumb, thumb
        if prev is None:
            return False
        return float(np.abs(thumb - prev).mean()) > self.config.scene_threshold

    def _tile_for(self, h: int, w: int) -> int | None:
        tile = self.config.tile
        if tile is not None:
            return tile if (h > tile or w > tile) else None
        return auto_tile(h, w, self._bytes_per_pixel, self.config.memory_limit_mb, self._multiple,
                         self.config.tile_overlap)

    def _classifier_input(self, image: np.ndarray, x: Tensor | None) -> Tensor:
        """What the classifier sees: the decoded frame ``x`` when there is one, else (a tiled frame, never
        decoded whole; :meth:`classify`) the mosaic of its windows, which gives the same logits
        (:func:`adsrt.runtime.tiling.window_mosaic`)."""
        if x is not None:
            return x
        dc = self.bundle.classifier
        if dc.window > 0:
            return self._decode(window_mosaic(image, dc.window, dc.grid))
        if self._tile_for(*image.shape[:2]) is None:  # small enough to convert whole
            return self._decode(image)
        # A classifier without windows (bundles before them) resizes the whole frame to input_size, bilinear
        # without antialias: OpenCV's INTER_LINEAR samples the same points, on the uint8 frame (to ~1e-4).
        return self._decode(cv2.resize(image, (dc.input_size, dc.input_size), interpolation=cv2.INTER_LINEAR))

    def _graph(self, shape: tuple[int, ...], temporal: bool) -> CudaGraphFrame:
        key = (shape, temporal)
        if key not in self._graphs:
            if len(self._graphs) >= 4:  # a stream of changing sizes should not pile up graphs
                self._graphs.pop(next(iter(self._graphs)))
            log.info("capturing a CUDA graph for frames of %s", shape)
            self._graphs[key] = CudaGraphFrame(
                self.backend, shape, temperature=self.temperature, ema=self.config.ema,
                state=self._state if temporal else None, forced_c=self._forced)
        return self._graphs[key]

    def restore_with_map(self, image: np.ndarray, grid: CoefficientGrid) -> np.ndarray:
        """Restore one image in ``local`` mode with the caller's coefficients ``grid`` instead of the
        classifier's (values ``[k, ...]`` at pixel centres of the frame; :class:`CoefficientGrid`)."""
        if self.config.mode != "local":
            raise AdsrtError(f"restore_with_map needs mode='local', not {self.config.mode!r}")
        if not isinstance(grid, CoefficientGrid):
            raise AdsrtError(f"restore_with_map takes a CoefficientGrid, not {type(grid).__name__}")
        if grid.values.min() < 0 or grid.values.max() > 1:
            raise AdsrtError("coefficient grid values must be in [0, 1]")
        if grid.k != self.k:
            raise AdsrtError(f"the coefficient grid has {grid.k} degradations; this bundle has {self.k}")
        return self._run(image, temporal=False, grid=grid)

    def _window_coefficients(self, image: np.ndarray, temporal: bool) -> tuple[CoefficientGrid, Tensor]:
        """Local mode: the classifier on a lattice of windows; the grid of their ``c`` and the mean
        probabilities ``[1, k + 1]``."""
        ys, xs, wh, ww = window_lattice(*image.shape[:2], self.bundle.classifier.window)
        crops = [image[y : y + wh, x : x + ww] for y in ys for x in xs]
        probs = []
        for i in range(0, len(crops), 64):  # batches of 64 windows bound the classifier's memory
            batch = crops[i : i + 64]
            x = self._decode(np.concatenate(batch, axis=0))  # [1, 3, n * wh, ww], one conversion
            x = x[0].view(3, len(batch), wh, ww).transpose(0, 1).contiguous()
            probs.append(torch.softmax(self.backend.classify(x) / self.temperature, dim=1))
        p = torch.cat(probs).float().cpu()  # [windows, k + 1]
        if not bool(torch.isfinite(p).all()):
            raise RestoreError("the classifier produced non-finite probabilities (broken bundle or backend?)")
        values = p[:, : self.k].T.reshape(self.k, len(ys), len(xs)).numpy()
        grid = CoefficientGrid.from_windows(values, ys, xs, wh, ww)
        if temporal:
            state = self._grid_state  # smoothed only while the windows stay where they were
            if state is not None and np.array_equal(state.ys, grid.ys) and np.array_equal(state.xs, grid.xs):
                grid.values = self.config.ema * state.values + (1.0 - self.config.ema) * grid.values
            self._grid_state = grid
        return grid, p.mean(0, keepdim=True)

    def _map(self, grid: CoefficientGrid, y0: int, x0: int, h: int, w: int) -> Tensor:
        """The coefficient map ``[1, k, h / MAP_STEP, w / MAP_STEP]`` of a region, on the device."""
        return torch.from_numpy(grid.region(y0, x0, h, w, MAP_STEP))[None].to(self.device)

    def _run(self, image: np.ndarray, *, temporal: bool, forced: Tensor | None = None,
             grid: CoefficientGrid | None = None) -> np.ndarray:
        cfg = self.config
        forced = self._forced if forced is None else forced
        t0 = self._clock()
        if not _is_frame(image):
            raise InputError(f"expected an HxWx3 uint8 image, got {_what(image)}")
        h, w = image.shape[:2]
        tile = self._tile_for(h, w)
        x = self._decode(image) if tile is None else None  # a tiled frame is converted tile by tile
        scene = temporal and self._scene_cut(image)
        if scene:
            self._state.zero_()
            self._grid_state = None
            log.debug("scene change: smoothing of c restarted")
        timings = Timings()
        t1 = self._clock()
        timings.decode = (t1 - t0) * 1e3
        probs = None
        with torch.no_grad():
            local = cfg.mode == "local"
            if cfg.cuda_graph and self.device.type == "cuda" and x is not None and forced is self._forced and not local:
                y, c, probs = self._graph(tuple(x.shape), temporal).run(x)
                t3 = self._clock()
                timings.restore = (t3 - t1) * 1e3  # one replay: classify, update and restore together
            else:
                before_tile = None
                if local:
                    if grid is None and forced is None:
                        grid, probs = self._window_coefficients(image, temporal)
                    elif grid is None:
                        grid = CoefficientGrid.constant(forced[0].cpu().numpy())
                    c = torch.from_numpy(grid.mean())[None]
                    t2 = self._clock()
                    if x is not None:
                        self.backend.update(self._map(grid, 0, 0, h, w))
                    else:  # each tile gets the part of the map that covers it

                        def before_tile(y0: int, x0: int, th: int, tw: int) -> None:
                            self.backend.update(self._map(grid, y0, x0, th, tw))
                elif forced is not None:
                    c = forced
                else:
                    logits = self.backend.classify(self._classifier_input(image, x))
                    probs = torch.softmax(logits / self.temperature, dim=1)
                    c = smooth_coefficients(probs, self._state if temporal else None, cfg.ema)
                if not local:
                    t2 = self._clock()
                    self.backend.update(c)
                t3 = self._clock()
                timings.classify, timings.update = (t2 - t1) * 1e3, (t3 - t2) * 1e3
                if x is not None:
                    y = self.backend.restore(x)
                else:  # restored and converted to uint8 strip by strip
                    y, tiles_finite = tiled_restore(self.backend.restore, image, tile, cfg.tile_overlap,
                                                    self._multiple, to_input=self._decode, to_output=self._encode,
                                                    before_tile=before_tile)
                    if self.device.type == "cpu":
                        release_freed_memory()
                t4 = self._clock()
                timings.restore = (t4 - t3) * 1e3
                t3 = t4
            if x is not None:
                finite = torch.isfinite(y).all()
                out = self._encode(y)  # downloads: the device work is done after this
            else:
                finite, out = tiles_finite, y
            c_host = c[0].float().cpu()
            probs_host = None if probs is None else probs[0].float().cpu()
        if not bool(torch.isfinite(c_host).all()):
            raise RestoreError(f"non-finite coefficients {c_host.tolist()} (broken classifier?); frame not written")
        if not bool(finite):
            raise RestoreError("the restored frame holds NaN or infinite values (broken bundle or backend?); "
                               "frame not written")
        timings.encode = (self._clock() - t3) * 1e3
        n_tiles = 1 if tile is None else plan_tiles(h, w, tile, cfg.tile_overlap, self._multiple).n_tiles
        self.timings = timings
        self.last = FrameInfo(
            c=dict(zip(self.degradations, c_host.tolist(), strict=True)),
            probabilities=None if probs_host is None else dict(zip([*self.degradations, CLEAN], probs_host.tolist(),
                                                                    strict=True)),
            scene_change=scene,
            tiles=n_tiles,
            timings=timings,
            grid=grid,
        )
        return out


def _is_frame(image: Any) -> bool:
    return isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 \
        and image.shape[0] > 0 and image.shape[1] > 0


def _what(obj: Any) -> str:
    if isinstance(obj, np.ndarray):
        return f"array {obj.dtype} {obj.shape}"
    return type(obj).__name__
