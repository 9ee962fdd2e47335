"""The degradation classifier (DC): a small strided CNN whose softmax gives the ADS coefficients c."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adsrt.arch.config import HeaderConfig, check_int
from adsrt.errors import ConfigError, InputError

__all__ = ["ClassifierConfig", "ConvReLU", "DegradationClassifier", "build_classifier"]




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
    # Softmax temperature the runtime applies by default: c = softmax(logits / T)[:k]. Calibrated after
    # training (adsrt.train.calibrate): a soft c blends in the other degradations' deltas, which costs more
    # than the right delta gains (haze on the default model); T < 1 sharpens it.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_int("num_classes", self.num_classes, 1)
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        check_int("width", self.width, 1)
        check_int("depth", self.depth, 1)
        check_int("convs", self.convs, 1)
        check_int("window", self.window, 0)
        check_int("grid", self.grid, 1)
        # Each stage halves the resolution; the last stage must still see at least one pixel.
        check_int("input_size", self.input_size, 2**self.depth)


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
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        stages = []
        c_in = 3
        for i in range(config.depth):
            c_out = config.width * 2**i
            stages.append(ConvReLU(c_in, c_out, config.convs))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, config.num_classes)
        # True: no shape-dependent branch in views() (the exporter sets it; see views()).
        self.always_grid = False

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError(
                f"DegradationClassifier expects a [B, 3, H, W] tensor, got shape {tuple(x.shape)}"
            )
        views, n = self.views(x)
        s = self.config.input_size
        views = F.interpolate(views, size=(s, s), mode="bilinear", align_corners=False)
        features = self.stages(views).mean((2, 3))
        return self.head(features.reshape(n, x.shape[0], -1).mean(0))

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


def build_classifier(config: ClassifierConfig) -> DegradationClassifier:
    """Build a :class:`DegradationClassifier`."""
    if not isinstance(config, ClassifierConfig):
        raise ConfigError(f"build_classifier expects a ClassifierConfig, got {type(config).__name__}")
    return DegradationClassifier(config)

