"""The degradation classifier (DC): a small strided CNN whose softmax gives the ADS coefficients c."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adsrt.arch.config import HeaderConfig, check_int, check_params, is_finite_number, short_repr
from adsrt.errors import ConfigError, InputError

__all__ = ["CONTEXT_PREFIXES", "ClassifierConfig", "ConvReLU", "DegradationClassifier", "build_classifier"]

# Upper bounds of a ClassifierConfig. A bundle header is untrusted: the loader builds the classifier it
# declares and the runtime runs it on every frame, so each number is bounded, far above the real ones
# (adsrt's presets: 7 classes, input_size 32-128, width 4-24, depth 2-4, 1-2 convs, 96-128 px windows, a
# 3x3 grid), and so are the parameters (adsrt.arch.config.MAX_PARAMS).
MAX_CLASSES = 1024  # k degradations + 1
MAX_INPUT_SIZE = 1024  # side of the square each view is resized to
MAX_WIDTH = 128  # channels of the first stage (doubled per stage)
MAX_DEPTH = 10  # stride-2 stages; input_size >= 2 ** depth, so 10 is all MAX_INPUT_SIZE allows
MAX_CONVS = 8  # 3x3 convolutions per stage
MAX_WINDOW = 2048  # frame pixels of a view's side
MAX_GRID = 16  # views per side of the lattice
# Pixels of the views the classifier crops (window ** 2 each), resizes (input_size ** 2 each) and
# convolves per frame: views (grid ** 2 with windows, else 1; twice that with a context trunk, whose
# mosaic copies them) times the larger side squared. Bounds the
# memory of the first frame (50 MB of float32 RGB; the first stage's activations stay under 1 GiB at
# MAX_WIDTH): a 16 x 16 grid of 128 px views, 3 x 3 of 682 px, or one of 2048 px reach it; the presets
# use 3 x 3 of 96 px (about 83k pixels).
MAX_VIEW_PIXELS = 2**22
# The softmax temperature's range (calibration picks one of 1, 0.5, 0.25, 0.1): the runtime divides
# float32 logits by it, and a tiny one (1e-300) overflows them to inf, so c becomes NaN at the first frame.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
CONTEXT_PREFIXES = ("context_stages.", "context_head.")  # the context trunk's weight names


@dataclass(frozen=True)
class ClassifierConfig(HeaderConfig):
    """Shape of a :class:`DegradationClassifier`. ``num_classes`` is k degradations + 1 ("clean").

    ``window`` is the size in frame pixels of the crops the classifier was trained on; a frame larger
    than that is classified on a ``grid`` x ``grid`` lattice of such windows (see the class). 0 means
    the whole frame is resized to ``input_size`` (bundles written before windows existed).
    """

    num_classes: int
    input_size: int = 128
    width: int = 16
    depth: int = 4
    # 3x3 convolutions per stage, the first strided. One (bundles before this field) sees each scale
    # through a single filter bank; a second, unstrided one combines them (oriented thin streaks against
    # flakes, noise against texture), which the real-photo transfer needed (adsrt.train.classifier).
    convs: int = 1
    window: int = 0
    grid: int = 3
    # Channels of the first stage of the context trunk; 0: none (bundles before it, and their header has no
    # such key: see to_dict). The mean of the windows' logits cannot weigh them against each other: the
    # sky windows of a backlit dusk scene look clean, and so do the flat parts of a rainy street. The
    # context trunk sees the windows together in their places (see the class) and adds its logits to the
    # windows' (adsrt.train.context trains it on whole frames, the windows frozen).
    context_width: int = 0
    # Softmax temperature the runtime applies by default: c = softmax(logits / T)[:k]. Calibrated after
    # training (adsrt.train.calibrate): a soft c blends in the other degradations' deltas, which costs more
    # than the right delta gains (haze on the default model); T < 1 sharpens it.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        if not (is_finite_number(self.temperature) and MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ConfigError(f"temperature must be a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
                              f"got {short_repr(self.temperature)}")
        check_int("width", self.width, 1, MAX_WIDTH)
        check_int("depth", self.depth, 1, MAX_DEPTH)  # before 2 ** depth below
        check_int("convs", self.convs, 1, MAX_CONVS)
        check_int("window", self.window, 0, MAX_WINDOW)
        check_int("grid", self.grid, 1, MAX_GRID)
        check_int("context_width", self.context_width, 0, MAX_WIDTH)
        if self.context_width and not self.window:
            raise ConfigError("a context trunk needs a classifier with windows (window > 0)")
        # Each stage halves the resolution; the last stage must still see at least one pixel.
        check_int("input_size", self.input_size, 2**self.depth, MAX_INPUT_SIZE)
        views = (self.grid**2 if self.window else 1) * (2 if self.context_width else 1)
        side = max(self.window, self.input_size)
        if views * side**2 > MAX_VIEW_PIXELS:
            raise ConfigError(
                f"the classifier would crop or resize {views} views of {side}x{side} pixels per frame (grid "
                f"{self.grid}, window {self.window}, input_size {self.input_size}); at most {MAX_VIEW_PIXELS:,} "
                "pixels are supported"
            )
        check_params("the classifier", self.num_params())

    def to_dict(self) -> dict:
        # Without a context trunk the header is the one written before the field existed, so the bundle
        # digest (exported graphs and engines are keyed on it) and older adsrt versions are unaffected.
        d = super().to_dict()
        if not self.context_width:
            del d["context_width"]
        return d

    def num_params(self) -> int:
        """Parameters of :class:`DegradationClassifier` with this config, computed without building it;
        equals ``count_params(DegradationClassifier(config))``."""
        n = 0
        for width in (self.width, self.context_width):
            if width == 0:
                continue
            c_in = 3
            for i in range(self.depth):
                c_out = width * 2**i
                n += c_in * c_out * 9 + c_out  # the strided 3x3 conv
                n += (self.convs - 1) * (c_out * c_out * 9 + c_out)  # the unstrided ones
                c_in = c_out
            n += c_in * self.num_classes + self.num_classes  # its head
        return n


class ConvReLU(nn.Module):
    """3x3 stride-2 conv + ReLU, then ``convs - 1`` unstrided 3x3 conv + ReLU: one classifier stage.

    Weights read ``stages.i.conv`` and ``stages.i.more.j`` (absent with one conv, so older bundles load).
    """

    def __init__(self, in_channels: int, out_channels: int, convs: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        if convs > 1:
            layers: list[nn.Module] = []
            for _ in range(convs - 1):
                layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
            self.more = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv(x))
        return self.more(x) if hasattr(self, "more") else x


class DegradationClassifier(nn.Module):
    """Small CNN that maps a frame to degradation logits ``[B, num_classes]`` (softmax is the caller's).

    Each view is resized to ``input_size`` squared (bilinear, ``align_corners=False``: an ONNX Resize
    that TensorRT supports; no antialias, which TensorRT's resize lacks), then ``depth`` conv-stride-2
    + ReLU stages doubling the width, a global mean and a linear head. No batch norm, so train and eval
    modes compute the same thing.

    Views: the classifier learns on ``window``-pixel crops, and noise, blur and rain streaks are
    features of that pixel scale: resizing a whole 481x321 photo to 64 px erased them (on CBSD68 a
    small bundle's classifier fell to 9% on blur and 22% on rain). So a frame larger than ``window``
    is seen through ``grid`` x ``grid`` windows of ``window`` pixels spread evenly over it (corners
    included), and the logits are the head of their mean feature, i.e. the mean of their logits. A
    frame no larger than the window (every training crop) is one view, as before; cost is at most
    ``grid**2`` small views whatever the frame size.

    Context (``context_width`` > 0): a second trunk of the same shape, ``context_width`` channels wide,
    sees the windows together, in their places in the frame: the ``grid`` x ``grid`` mosaic of the views,
    box-filtered by ``grid`` (a 3 x 3 grid of 96 px windows: one 96 px picture), and its head's logits are
    added to the windows'. It sees the layout (a bright sky over a dark street) at the same scale whatever
    the frame size, from exactly what the windows see, so the runtime's mosaic of a frame too large to
    decode (:func:`adsrt.runtime.tiling.window_mosaic`) still gives the frame's logits. It runs on every
    input, a single window included (trained on frames and single windows alike: adsrt.train.context).
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.stages, self.head = _trunk(config, config.width)
        if config.context_width:
            self.context_stages, self.context_head = _trunk(config, config.context_width)
        # True: no shape-dependent branch in views() (the exporter sets it; see views()).
        self.always_grid = False

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError(
                f"DegradationClassifier expects a [B, 3, H, W] tensor, got shape {tuple(x.shape)}"
            )
        views, n = self.views(x)
        logits = self._window_head(views, n, x.shape[0])
        if self.config.context_width:
            logits = logits + self.context_logits(self._context_view(views, n, x.shape[0]))
        return logits

    def to_input_size(self, x: Tensor) -> Tensor:
        """``x`` resized to ``input_size`` squared, as every view is (bilinear, no antialias: see the class)."""
        s = self.config.input_size
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)

    def _window_head(self, views: Tensor, n: int, batch: int) -> Tensor:
        features = self.stages(self.to_input_size(views)).mean((2, 3))
        return self.head(features.reshape(n, batch, -1).mean(0))

    def _context_view(self, views: Tensor, n: int, batch: int) -> Tensor:
        """The windows in their places, ``grid`` x ``grid`` side by side, box-filtered by ``grid`` and resized
        to ``input_size``. One view (a frame no larger than a window) is repeated ``grid`` x ``grid`` times,
        as the exported graph's identical views are, so every backend computes the same thing."""
        g = self.config.grid
        if n == 1:
            mosaic = views.repeat(1, 1, g, g)
        else:
            h, w = views.shape[-2:]
            mosaic = views.reshape(g, g, batch, 3, h, w).permute(2, 3, 0, 4, 1, 5).reshape(batch, 3, g * h, g * w)
        return self.to_input_size(F.avg_pool2d(mosaic, g) if g > 1 else mosaic)

    def window_logits(self, x: Tensor) -> Tensor:
        """The windows' part of the logits ``[B, num_classes]``: the head of their mean feature."""
        views, n = self.views(x)
        return self._window_head(views, n, x.shape[0])

    def context_input(self, x: Tensor) -> Tensor:
        """What the context trunk sees of frames ``x``: ``[B, 3, input_size, input_size]`` (see the class)."""
        views, n = self.views(x)
        return self._context_view(views, n, x.shape[0])

    def context_logits(self, view: Tensor) -> Tensor:
        """The context trunk's logits ``[B, num_classes]`` of a :meth:`context_input` view."""
        return self.context_head(self.context_stages(view).mean((2, 3)))

    def views(self, x: Tensor) -> tuple[Tensor, int]:
        """The windows the frame is classified on, stacked view-major: ``([n * B, 3, h, w], n)``.

        Window starts are ``i * (size - span) // (grid - 1)`` (integer arithmetic, so the same formula
        holds on symbolic shapes in an exported graph). With :attr:`always_grid` (set by the ONNX
        exporter) every frame takes the grid path, with no shape-dependent branch: a frame no larger
        than the window then yields ``grid**2`` identical views, whose mean is the single view's logits.
        """
        window, (height, width) = self.config.window, x.shape[-2:]
        if window == 0:
            return x, 1
        if not self.always_grid and height <= window and width <= window:
            return x, 1
        h, w = torch.sym_min(window, height), torch.sym_min(window, width)
        g = self.config.grid

        def starts(size, span) -> list:
            if g == 1:
                return [(size - span) // 2]
            return [i * (size - span) // (g - 1) for i in range(g)]

        crops = [x[:, :, y : y + h, x0 : x0 + w] for y in starts(height, h) for x0 in starts(width, w)]
        return torch.cat(crops, 0), len(crops)


def _trunk(config: ClassifierConfig, width: int) -> tuple[nn.Sequential, nn.Linear]:
    """``depth`` stages doubling ``width`` from RGB, and a linear head on their last width."""
    stages, c_in = [], 3
    for i in range(config.depth):
        c_out = width * 2**i
        stages.append(ConvReLU(c_in, c_out, config.convs))
        c_in = c_out
    return nn.Sequential(*stages), nn.Linear(c_in, config.num_classes)


def build_classifier(config: ClassifierConfig) -> DegradationClassifier:
    """Build a :class:`DegradationClassifier`."""
    if not isinstance(config, ClassifierConfig):
        raise ConfigError(f"build_classifier expects a ClassifierConfig, got {type(config).__name__}")
    return DegradationClassifier(config)

