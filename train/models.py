"""Backbones of adsrt: the NAFNet restorer, the degradation classifier, and their cost model.

Configs follow timm's style: frozen dataclasses with ``to_dict`` / ``from_dict`` (the dict goes into
the bundle's JSON header) and a plain dict of named configs, :data:`BACKBONES`. Nothing registers
itself by import and there is no YAML.

:class:`NAFNet` follows "Simple Baselines for Image Restoration" (Chen et al., ECCV 2022): intro conv
-> encoders (NAFBlocks, then a stride-2 2x2 conv that doubles the channels) -> middle blocks ->
decoders (1x1 conv + PixelShuffle(2), additive skip, NAFBlocks) -> ending conv, added to the input.
Differences from the reference code, all deliberate:

* :class:`LayerNorm2d` uses plain tensor ops instead of a custom ``autograd.Function``, so autograd
  differentiates it natively (FAIG-SD integrates gradients through it) and it exports to ONNX and
  TensorRT as ordinary ReduceMean / Sub / Pow / Sqrt / Div nodes.
* The pooling of the simplified channel attention is ``x.mean((2, 3))``, not ``AdaptiveAvgPool2d``:
  same numbers, and it exports as a ReduceMean for any input size.
* No dropout (the reference defaults it to 0 anyway).

The parameter names match the reference (``intro``, ``encoders.0.0.conv1``, ``encoders.0.0.sca.1``,
``downs.0``, ``middle_blks.0``, ``ups.0.0``, ``decoders.0.0``, ``ending``), so official NAFNet
checkpoints of the same shape load with ``load_state_dict``. The bundle names its tensors after these
modules, so they are part of the format: do not rename them.

Every convolution, 1x1 and depthwise included, is an ``nn.Conv2d`` module, because the ADS machinery
treats every Conv2d weight as eligible for per-degradation deltas (units are kernel slices ``W[o, i]``
or whole filters ``W[o]``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "ClassifierConfig",
    "DegradationClassifier",
    "LayerNorm2d",
    "ModelCost",
    "NAFBlock",
    "NAFNet",
    "NAFNetConfig",
    "SimpleGate",
    "build_backbone",
    "build_classifier",
    "count_params",
    "model_cost",
]


# --------------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; a JSON ``true`` must not silently become a width of 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_int_tuple(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, tuple):
        raise ValueError(f"{name} must be a tuple of ints, got {type(value).__name__} {value!r}")
    for i, v in enumerate(value):
        _check_int(f"{name}[{i}]", v, minimum)


def _config_from_dict(cls: type, d: Any) -> Any:
    """Build dataclass ``cls`` from a JSON-style dict: lists become tuples, unknown keys are errors.

    Missing keys take the field default, so a bundle written before a field (with a
    behaviour-preserving default) was added still loads; a missing required field is an error.
    Values are validated by the dataclass's ``__post_init__``.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{cls.__name__} is missing required keys {missing}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)


def _config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


# --------------------------------------------------------------------------------------------------
# NAFNet
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NAFNetConfig:
    """Shape of a :class:`NAFNet`. Validated on construction (``ValueError`` on bad values).

    ``enc_blocks[i]`` / ``dec_blocks[i]`` are the NAFBlock counts per level (encoders from full
    resolution down, decoders from the bottom up, as in the reference code); both have one entry
    per 2x downsampling, so the input is padded to a multiple of ``2 ** len(enc_blocks)``.
    """

    in_channels: int = 3
    width: int = 16
    enc_blocks: tuple[int, ...] = (1, 1, 1, 1)
    middle_blocks: int = 1
    dec_blocks: tuple[int, ...] = (1, 1, 1, 1)
    dw_expand: int = 2
    ffn_expand: int = 2

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels, 1)
        _check_int("width", self.width, 1)
        _check_int_tuple("enc_blocks", self.enc_blocks, 0)
        _check_int("middle_blocks", self.middle_blocks, 0)
        _check_int_tuple("dec_blocks", self.dec_blocks, 0)
        _check_int("dw_expand", self.dw_expand, 1)
        _check_int("ffn_expand", self.ffn_expand, 1)
        if len(self.dec_blocks) != len(self.enc_blocks):
            raise ValueError(
                f"enc_blocks and dec_blocks need one entry per level, got {len(self.enc_blocks)} "
                f"and {len(self.dec_blocks)}"
            )
        # SimpleGate halves the channels, so the expanded widths must be even.
        if (self.width * self.dw_expand) % 2 or (self.width * self.ffn_expand) % 2:
            raise ValueError(
                f"width * dw_expand and width * ffn_expand must be even for SimpleGate, got width={self.width}, "
                f"dw_expand={self.dw_expand}, ffn_expand={self.ffn_expand}"
            )

    @property
    def pad_multiple(self) -> int:
        """Input height and width are padded up to a multiple of this (one factor 2 per level)."""
        return 2 ** len(self.enc_blocks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists) for the bundle header."""
        return _config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NAFNetConfig:
        """Inverse of :meth:`to_dict`; ``ValueError`` on unknown keys or bad values."""
        return _config_from_dict(cls, d)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor, with per-channel affine weight and bias.

    Plain ops only (no custom autograd Function) so autograd, ONNX and TensorRT all handle it.
    Biased variance and eps inside the square root, matching ``F.layer_norm`` and the reference.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(1, keepdim=True)
        xc = x - mu
        var = (xc * xc).mean(1, keepdim=True)
        return xc / torch.sqrt(var + self.eps) * self.weight + self.bias


class SimpleGate(nn.Module):
    """NAFNet's nonlinearity: split the channels in two halves and multiply them."""

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class GlobalAvgPool2d(nn.Module):
    """Mean over H and W, keeping dims; a ReduceMean in ONNX for any input size."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


class NAFBlock(nn.Module):
    """NAFNet block: LN -> 1x1 -> depthwise 3x3 -> SimpleGate -> SCA -> 1x1, then LN -> FFN (1x1, gate, 1x1).

    Both branches are scaled by per-channel ``beta`` / ``gamma`` initialised to 0, as in the
    reference, so a fresh block is the identity and deep stacks start stable.
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = channels * dw_expand
        ffn = channels * ffn_expand
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        # Simplified channel attention; Sequential keeps the reference's ``sca.1`` parameter name.
        self.sca = nn.Sequential(GlobalAvgPool2d(), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.norm1 = LayerNorm2d(channels)
        self.norm2 = LayerNorm2d(channels)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = self.sg(x)
        x = x * self.sca(x)
        y = inp + self.conv3(x) * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """U-shaped NAFNet restorer; ``forward(x[B, C, H, W]) -> x + residual`` of the same shape.

    Any ``H, W >= 1``: the input is zero-padded on the bottom/right to a multiple of
    ``config.pad_multiple`` (the reference's ``check_image_size``) and the output cropped back.
    Values are expected in [0, 1]; the output is not clamped (clamping would block gradients and
    is the caller's choice when converting to 8-bit).
    """

    def __init__(self, config: NAFNetConfig | None = None) -> None:
        super().__init__()
        config = NAFNetConfig() if config is None else config
        self.config = config
        c = config.width
        self.intro = nn.Conv2d(config.in_channels, c, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for n in config.enc_blocks:
            self.encoders.append(nn.Sequential(*(self._block(c) for _ in range(n))))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle_blks = nn.Sequential(*(self._block(c) for _ in range(config.middle_blocks)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in config.dec_blocks:
            # 1x1 conv to 2c channels, PixelShuffle(2) -> c/2 channels at twice the resolution.
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*(self._block(c) for _ in range(n))))
        self.ending = nn.Conv2d(config.width, config.in_channels, 3, padding=1)

    def _block(self, channels: int) -> NAFBlock:
        return NAFBlock(channels, self.config.dw_expand, self.config.ffn_expand)

    @property
    def pad_multiple(self) -> int:
        return self.config.pad_multiple

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"NAFNet expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2], x.shape[-1]
        m = self.config.pad_multiple
        # (m - h % m) % m stays symbolic under ONNX tracing, so dynamic H/W export a Pad node.
        inp = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
        y = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            y = encoder(y)
            skips.append(y)
            y = down(y)
        y = self.middle_blks(y)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            y = decoder(up(y) + skip)
        y = self.ending(y) + inp
        return y[:, :, :h, :w]


BACKBONES: dict[str, NAFNetConfig] = {
    # Tests and smoke runs: ~6k parameters, two levels, milliseconds per test-sized image on a CPU.
    "nafnet-tiny": NAFNetConfig(width=4, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
    # Quick experiments: the edge layout at half width (about 1/4 of its parameters and MACs).
    "nafnet-small": NAFNetConfig(width=8, enc_blocks=(1, 1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
    # Default edge model (= NAFNetConfig()): four levels, one block each. Width 16 keeps the
    # full-resolution levels cheap (MACs per pixel are roughly equal per level, since channels
    # double as pixels quarter), while the parameters sit mostly in the 1/8 and 1/16 levels.
    "nafnet-edge": NAFNetConfig(width=16, enc_blocks=(1, 1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
}


def build_backbone(config: NAFNetConfig | str) -> NAFNet:
    """Build a :class:`NAFNet` from a config or a name in :data:`BACKBONES`."""
    if isinstance(config, str):
        if config not in BACKBONES:
            raise ValueError(f"unknown backbone {config!r}; known: {', '.join(sorted(BACKBONES))}")
        config = BACKBONES[config]
    if not isinstance(config, NAFNetConfig):
        raise ValueError(f"build_backbone expects a NAFNetConfig or a name, got {type(config).__name__}")
    return NAFNet(config)


# --------------------------------------------------------------------------------------------------
# Degradation classifier
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierConfig:
    """Shape of a :class:`DegradationClassifier`. ``num_classes`` is k degradations + 1 ("clean").

    ``window`` is the size in frame pixels of the crops the classifier was trained on; a frame larger
    than that is classified on a ``grid`` x ``grid`` lattice of such windows (see the class). 0 means
    the whole frame is resized to ``input_size`` (bundles written before windows existed).
    """

    num_classes: int
    input_size: int = 128
    width: int = 16
    depth: int = 4
    window: int = 0
    grid: int = 3
    # Softmax temperature the runtime applies by default: c = softmax(logits / T)[:k]. Calibrated after
    # training (adsrt.train.calibrate): a soft c blends in the other degradations' deltas, which costs more
    # than the right delta gains (haze on the default model); T < 1 sharpens it.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_int("num_classes", self.num_classes, 1)
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        _check_int("width", self.width, 1)
        _check_int("depth", self.depth, 1)
        _check_int("window", self.window, 0)
        _check_int("grid", self.grid, 1)
        # Each stage halves the resolution; the last stage must still see at least one pixel.
        _check_int("input_size", self.input_size, 2**self.depth)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for the bundle header."""
        return _config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; ``ValueError`` on unknown or missing keys or bad values."""
        return _config_from_dict(cls, d)


class ConvReLU(nn.Module):
    """3x3 stride-2 conv + ReLU: one classifier stage (named so weights read ``stages.i.conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


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
            stages.append(ConvReLU(c_in, c_out))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, config.num_classes)
        # True: no shape-dependent branch in views() (the exporter sets it; see views()).
        self.always_grid = False

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
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
        raise ValueError(f"build_classifier expects a ClassifierConfig, got {type(config).__name__}")
    return DegradationClassifier(config)


# --------------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCost:
    """Parameters and multiply-accumulates of one forward pass on a ``1 x C x height x width`` input.

    ``macs`` counts Conv2d, ConvTranspose2d and Linear layers only. Elementwise ops, norms, gates,
    attention multiplies, pooling, padding, PixelShuffle and Resize are not counted: in NAFNet they
    are a few percent of the arithmetic, though on GPUs they cost memory bandwidth, so measure
    latency rather than inferring it from ``macs``.
    """

    params: int
    macs: int
    height: int
    width: int

    @property
    def flops(self) -> int:
        """Floating-point operations, counting one multiply-accumulate as two."""
        return 2 * self.macs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _infer_in_channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if isinstance(config, NAFNetConfig):
        return config.in_channels
    if isinstance(config, ClassifierConfig):
        return 3
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            return module.in_channels
    raise ValueError("cannot infer the input channels of this model (no Conv2d); pass channels=")


def model_cost(model: nn.Module, height: int, width: int, channels: int | None = None) -> ModelCost:
    """Count parameters and MACs of ``model`` on a zero ``[1, channels, height, width]`` input.

    The model is run under ``torch.no_grad`` with forward hooks, so whatever actually runs is
    counted: for NAFNet that is the padded size (e.g. 480 -> 480, 482 -> 496 with 16), for the
    classifier the resized ``input_size``. ``channels`` defaults to the model's input channels.
    See :class:`ModelCost` for what is not counted.
    """
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    if channels is None:
        channels = _infer_in_channels(model)
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.ConvTranspose2d):
            # Every input element is scattered through a (C_out / groups) x kh x kw kernel.
            kh, kw = module.kernel_size
            total += inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return ModelCost(params=count_params(model), macs=total, height=height, width=width)
