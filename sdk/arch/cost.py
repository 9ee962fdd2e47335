"""Parameters and multiply-accumulates of a network, counted by running it (forward hooks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adsrt.arch.classifier import ClassifierConfig
from adsrt.arch.config import check_int
from adsrt.arch.nafnet import NAFNetConfig
from adsrt.errors import ConfigError

__all__ = ["ModelCost", "count_params", "model_cost"]




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
    raise ConfigError("cannot infer the input channels of this model (no Conv2d); pass channels=")


def model_cost(model: nn.Module, height: int, width: int, channels: int | None = None) -> ModelCost:
    """Count parameters and MACs of ``model`` on a zero ``[1, channels, height, width]`` input.

    The model is run under ``torch.no_grad`` with forward hooks, so whatever actually runs is
    counted: for NAFNet that is the padded size (e.g. 480 -> 480, 482 -> 496 with 16), for the
    classifier the resized ``input_size``. ``channels`` defaults to the model's input channels.
    See :class:`ModelCost` for what is not counted.
    """
    check_int("height", height, 1)
    check_int("width", width, 1)
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

