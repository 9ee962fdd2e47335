"""The NAFNet restorer (the backbone of the UM and of every ADS model).

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adsrt.arch.config import HeaderConfig, check_int, check_int_tuple, check_params
from adsrt.errors import ConfigError, InputError

__all__ = ["BACKBONES", "LayerNorm2d", "NAFBlock", "NAFNet", "NAFNetConfig", "SimpleGate", "build_backbone"]

# Upper bounds of a NAFNetConfig. A bundle header is untrusted and the loader builds the network it
# declares, so each number is bounded (far above real models) before any module exists; the parameter
# count is bounded too (adsrt.arch.config.MAX_PARAMS). Official NAFNets: width 32-64, at most 28 blocks
# in a level (GoPro: enc_blocks 1, 1, 1, 28), 12 middle blocks, 36 blocks in all, 4 levels, expansion 2.
MAX_IN_CHANNELS = 64  # RGB is 3; room for RAW or multispectral inputs
MAX_WIDTH = 1024  # channels of the first level (doubled per level)
MAX_EXPAND = 16  # dw_expand and ffn_expand (the reference uses 2)
MAX_LEVELS = 10  # entries of enc_blocks / dec_blocks, i.e. 2x downsamplings
MAX_PAD_MULTIPLE = 2**MAX_LEVELS  # the input is padded to a multiple of 2 ** levels
MAX_STAGE_BLOCKS = 64  # NAFBlocks of one level, or middle blocks
# NAFBlocks in all: each is a dozen modules, so this bounds the time to build even a meta-device skeleton.
MAX_TOTAL_BLOCKS = 256


def _block_params(c: int, dw_expand: int, ffn_expand: int) -> int:
    """Parameters of ``NAFBlock(c, dw_expand, ffn_expand)``, conv by conv (weights + biases)."""
    dw, ffn = c * dw_expand, c * ffn_expand
    return (
        (c * dw + dw)  # conv1, 1x1
        + (dw * 9 + dw)  # conv2, depthwise 3x3
        + (dw // 2 * c + c)  # conv3, 1x1 after SimpleGate
        + ((dw // 2) ** 2 + dw // 2)  # sca.1, 1x1
        + (c * ffn + ffn)  # conv4
        + (ffn // 2 * c + c)  # conv5
        + 6 * c  # norm1, norm2 (weight + bias), beta, gamma
    )


@dataclass(frozen=True)
class NAFNetConfig(HeaderConfig):
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
        check_int("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        check_int("width", self.width, 1, MAX_WIDTH)
        check_int_tuple("enc_blocks", self.enc_blocks, 0, MAX_STAGE_BLOCKS, max_len=MAX_LEVELS)
        check_int("middle_blocks", self.middle_blocks, 0, MAX_STAGE_BLOCKS)
        check_int_tuple("dec_blocks", self.dec_blocks, 0, MAX_STAGE_BLOCKS, max_len=MAX_LEVELS)
        check_int("dw_expand", self.dw_expand, 1, MAX_EXPAND)
        check_int("ffn_expand", self.ffn_expand, 1, MAX_EXPAND)
        if len(self.dec_blocks) != len(self.enc_blocks):
            raise ConfigError(
                f"enc_blocks and dec_blocks need one entry per level, got {len(self.enc_blocks)} "
                f"and {len(self.dec_blocks)}"
            )
        # SimpleGate halves the channels, so the expanded widths must be even.
        if (self.width * self.dw_expand) % 2 or (self.width * self.ffn_expand) % 2:
            raise ConfigError(
                f"width * dw_expand and width * ffn_expand must be even for SimpleGate, got width={self.width}, "
                f"dw_expand={self.dw_expand}, ffn_expand={self.ffn_expand}"
            )
        blocks = sum(self.enc_blocks) + self.middle_blocks + sum(self.dec_blocks)
        if blocks > MAX_TOTAL_BLOCKS:
            raise ConfigError(f"the backbone would have {blocks} NAFBlocks; at most {MAX_TOTAL_BLOCKS} are supported")
        check_params("the backbone", self.num_params())

    def num_params(self) -> int:
        """Parameters of :class:`NAFNet` with this config, computed without building it (the bundle
        loader bounds it before any module exists); equals ``count_params(NAFNet(config))``."""
        c = self.width
        n = self.in_channels * c * 9 + c  # intro, 3x3
        for blocks in self.enc_blocks:
            n += blocks * _block_params(c, self.dw_expand, self.ffn_expand)
            n += c * 2 * c * 4 + 2 * c  # down, 2x2 stride 2
            c *= 2
        n += self.middle_blocks * _block_params(c, self.dw_expand, self.ffn_expand)
        for blocks in self.dec_blocks:
            n += c * 2 * c  # up, 1x1 without bias (then PixelShuffle)
            c //= 2
            n += blocks * _block_params(c, self.dw_expand, self.ffn_expand)
        return n + self.width * self.in_channels * 9 + self.in_channels  # ending, 3x3

    @property
    def pad_multiple(self) -> int:
        """Input height and width are padded up to a multiple of this (one factor 2 per level)."""
        return 2 ** len(self.enc_blocks)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor, with per-channel affine weight and bias.

    Plain ops (no custom autograd Function) so autograd, ONNX and TensorRT all handle it; in training on a
    channels_last tensor, the equivalent fused ``F.layer_norm``.
    Biased variance and eps inside the square root, matching ``F.layer_norm`` and the reference.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # Training in NHWC (adsrt.train.compute): the channels are the last, contiguous dim, so one
            # fused layer_norm (forward and backward) replaces the nine ops below: 1.2-1.4x per training step
            # of nafnet-small on a CPU. The same function to float rounding; eval and export keep plain ops.
            c = x.shape[1]
            y = F.layer_norm(x.permute(0, 2, 3, 1), (c,), self.weight.view(c), self.bias.view(c), self.eps)
            return y.permute(0, 3, 1, 2)
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
            raise InputError(f"NAFNet expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
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
            raise ConfigError(f"unknown backbone {config!r}; known: {', '.join(sorted(BACKBONES))}")
        config = BACKBONES[config]
    if not isinstance(config, NAFNetConfig):
        raise ConfigError(f"build_backbone expects a NAFNetConfig or a name, got {type(config).__name__}")
    return NAFNet(config)

