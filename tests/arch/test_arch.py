"""Tests of adsrt.arch: NAFNet, the degradation classifier, configs and the cost model."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adsrt.arch import (
    BACKBONES,
    ClassifierConfig,
    DegradationClassifier,
    ModelCost,
    NAFNet,
    NAFNetConfig,
    build_backbone,
    build_classifier,
    count_params,
    model_cost,
)
from adsrt.arch.nafnet import LayerNorm2d, NAFBlock
from adsrt.errors import ConfigError, InputError

TINY = NAFNetConfig(width=4, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))
CLF = ClassifierConfig(num_classes=5, input_size=32, width=4, depth=3)


def _randomize_layer_scales(model: nn.Module, seed: int = 0) -> None:
    """beta/gamma start at 0 (blocks are identities); make them non-zero so every branch is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NAFBlock):
                m.beta.copy_(torch.randn(m.beta.shape, generator=g) * 0.5)
                m.gamma.copy_(torch.randn(m.gamma.shape, generator=g) * 0.5)
            if isinstance(m, LayerNorm2d):
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.fixture
def tiny() -> NAFNet:
    torch.manual_seed(0)
    model = NAFNet(TINY).eval()
    _randomize_layer_scales(model)
    return model


# ----------------------------------------------------------------------------------------- NAFNet


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 16, 16), (1, 3, 1, 1), (1, 3, 5, 2)])
def test_nafnet_output_shape_any_size(tiny: NAFNet, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape)
    with torch.no_grad():
        y = tiny(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_nafnet_default_config_pads_to_16() -> None:
    model = NAFNet(NAFNetConfig(width=2)).eval()
    assert model.pad_multiple == 16
    with torch.no_grad():
        assert model(torch.rand(1, 3, 17, 3)).shape == (1, 3, 17, 3)


def test_nafnet_rejects_non_4d_input(tiny: NAFNet) -> None:
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        tiny(torch.rand(3, 8, 8))


def test_nafnet_residual_identity_with_zero_ending(tiny: NAFNet) -> None:
    with torch.no_grad():
        tiny.ending.weight.zero_()
        tiny.ending.bias.zero_()
        x = torch.rand(2, 3, 21, 19)
        assert torch.equal(tiny(x), x)


def test_fresh_nafblock_is_identity() -> None:
    block = NAFBlock(8)
    x = torch.randn(2, 8, 5, 7)
    assert torch.equal(block(x), x)


def test_nafnet_parameter_names_are_stable() -> None:
    # Bundle tensor names come from these; they also match the reference NAFNet checkpoints.
    names = set(dict(NAFNet(TINY).named_parameters()))
    for expected in [
        "intro.weight",
        "encoders.0.0.conv1.weight",
        "encoders.0.0.conv2.weight",
        "encoders.1.0.sca.1.weight",
        "encoders.0.0.norm1.weight",
        "encoders.0.0.beta",
        "downs.1.weight",
        "middle_blks.0.conv5.weight",
        "ups.0.0.weight",
        "decoders.1.0.gamma",
        "ending.bias",
    ]:
        assert expected in names, expected
    assert "ups.0.0.bias" not in names


def test_nafnet_convs_are_conv2d_modules() -> None:
    model = NAFNet(TINY)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # intro + ending + per level (down + up) + 6 per block.
    n_blocks = sum(TINY.enc_blocks) + TINY.middle_blocks + sum(TINY.dec_blocks)
    assert len(convs) == 2 + 2 * len(TINY.enc_blocks) + 6 * n_blocks
    depthwise = [m for m in convs if m.groups > 1]
    assert len(depthwise) == n_blocks
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_nafnet_gradient_steps_reduce_l1() -> None:
    torch.manual_seed(0)
    model = NAFNet(TINY).train()
    clean = torch.rand(2, 3, 16, 16)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = F.l1_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    # After the first step beta/gamma are non-zero, so gradients reach the norms and inner convs.
    model.zero_grad()
    F.l1_loss(model(noisy), clean).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoders[0][0].norm1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- LayerNorm2d


def test_layernorm2d_matches_functional_layer_norm() -> None:
    torch.manual_seed(0)
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(1, 6, 1, 1))
        ln.bias.copy_(torch.randn(1, 6, 1, 1))
    x = (torch.randn(2, 6, 7, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    ln = ln.double()
    x_ref = x.detach().clone().requires_grad_()
    ref = F.layer_norm(
        x_ref.permute(0, 2, 3, 1), (6,), ln.weight.detach().flatten(), ln.bias.detach().flatten(), eps=ln.eps
    ).permute(0, 3, 1, 2)
    out = ln(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # Native autograd gives the same input gradient as the fused reference.
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)


def test_layernorm2d_channels_last_training_path_is_the_same_function() -> None:
    # Training on channels_last takes the fused layer_norm path; the plain ops (eval, export) are the reference.
    torch.manual_seed(1)
    ln = LayerNorm2d(6).double()
    with torch.no_grad():
        ln.weight.copy_(torch.randn(1, 6, 1, 1))
        ln.bias.copy_(torch.randn(1, 6, 1, 1))
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64) * 2 - 1
    g = torch.randn_like(x)
    plain_x = x.clone().requires_grad_()
    plain = ln.eval()(plain_x)
    plain.backward(g)
    plain_wgrad = ln.weight.grad.clone()
    ln.weight.grad = None
    fused_x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    fused = ln.train()(fused_x)
    assert fused.is_contiguous(memory_format=torch.channels_last)  # the NHWC layout flows on
    fused.backward(g)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_x.grad, plain_x.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ln.weight.grad, plain_wgrad, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config", [TINY, NAFNetConfig(), *BACKBONES.values()])
def test_nafnet_config_round_trip(config: NAFNetConfig) -> None:
    d = config.to_dict()
    assert isinstance(d["enc_blocks"], list)
    assert NAFNetConfig.from_dict(json.loads(json.dumps(d))) == config


def test_nafnet_config_from_dict_defaults_missing_keys() -> None:
    assert NAFNetConfig.from_dict({"width": 8}) == NAFNetConfig(width=8)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"widht": 8}, "unknown"),
        ({"width": 0}, "width"),
        ({"width": 8.0}, "width"),
        ({"width": True}, "width"),
        ({"enc_blocks": [1, 1], "dec_blocks": [1]}, "one entry per level"),
        ({"enc_blocks": [1, -1], "dec_blocks": [1, 1]}, r"enc_blocks\[1\]"),
        ({"enc_blocks": "11"}, "enc_blocks"),
        ({"width": 3, "dw_expand": 1}, "even"),
    ],
)
def test_nafnet_config_from_dict_errors(d: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NAFNetConfig.from_dict(d)


def test_nafnet_config_from_dict_rejects_non_dict() -> None:
    with pytest.raises(ConfigError, match="dict"):
        NAFNetConfig.from_dict([("width", 8)])  # type: ignore[arg-type]


def test_classifier_config_round_trip_and_errors() -> None:
    assert ClassifierConfig.from_dict(CLF.to_dict()) == CLF
    with pytest.raises(ConfigError, match="missing"):
        ClassifierConfig.from_dict({"width": 8})
    with pytest.raises(ConfigError, match="unknown"):
        ClassifierConfig.from_dict({"num_classes": 3, "classes": 3})
    with pytest.raises(ConfigError, match="input_size"):
        ClassifierConfig(num_classes=3, input_size=8, depth=4)
    with pytest.raises(ConfigError, match="num_classes"):
        ClassifierConfig(num_classes=0)


# ---------------------------------------------------------------------------------------- builders


def test_build_backbone_by_name_and_config() -> None:
    assert build_backbone("nafnet-tiny").config == BACKBONES["nafnet-tiny"]
    assert build_backbone(TINY).config == TINY


def test_build_backbone_unknown_name_lists_names() -> None:
    with pytest.raises(ConfigError, match="nafnet-edge") as info:
        build_backbone("nafnet-huge")
    assert "nafnet-huge" in str(info.value)


def test_named_backbones_ordered_by_size() -> None:
    tiny, small, edge = (
        count_params(build_backbone(n)) for n in ("nafnet-tiny", "nafnet-small", "nafnet-edge")
    )
    assert tiny < small < edge
    assert tiny < 10_000
    assert 500_000 <= edge <= 1_500_000


def test_classifier_logits_shape() -> None:
    torch.manual_seed(0)
    clf = build_classifier(CLF).eval()
    assert isinstance(clf, DegradationClassifier)
    for shape in [(2, 3, 37, 53), (1, 3, 8, 8), (3, 3, 100, 20)]:
        with torch.no_grad():
            assert clf(torch.rand(shape)).shape == (shape[0], CLF.num_classes)


def test_windowed_classifier_is_the_mean_of_its_window_logits() -> None:
    """A frame larger than the training window is classified through a grid of windows at native scale."""
    torch.manual_seed(0)
    cfg = ClassifierConfig(num_classes=4, input_size=16, width=4, depth=2, window=24, grid=3)
    clf = build_classifier(cfg).eval()
    whole = build_classifier(ClassifierConfig(num_classes=4, input_size=16, width=4, depth=2)).eval()
    whole.load_state_dict(clf.state_dict())
    frame = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        # Windows at rows 0, 13, 26 and columns 0, 23, 46 (evenly spread, corners included).
        expected = torch.stack([whole(frame[:, :, y : y + 24, x : x + 24]) for y in (0, 13, 26) for x in (0, 23, 46)]).mean(0)
        assert torch.allclose(clf(frame), expected, atol=1e-6)
        crop = frame[:, :, :24, :24]  # a training crop is one view: identical to the whole-frame resize
        assert torch.allclose(clf(crop), whole(crop), atol=0)
        thin = frame[:, :, :20, :]  # lower than the window: windows are 20 x 24, one row of them
        expected = torch.stack([whole(thin[:, :, :, x : x + 24]) for x in (0, 23, 46)]).mean(0)
        assert torch.allclose(clf(thin), expected, atol=1e-6)
    one = build_classifier(ClassifierConfig(num_classes=4, input_size=16, width=4, depth=2, window=24, grid=1)).eval()
    one.load_state_dict(clf.state_dict())
    with torch.no_grad():
        assert torch.allclose(one(frame), whole(frame[:, :, 13:37, 23:47]), atol=0)  # the centre window


def test_classifier_stages_with_a_second_conv() -> None:
    """convs=2: each stage is strided conv + ReLU + conv + ReLU (checked against plain torch ops); with one
    conv the weight names are those of every bundle written before the field existed."""
    one = build_classifier(ClassifierConfig(num_classes=3, input_size=16, width=4, depth=2))
    assert sorted(one.state_dict()) == ["head.bias", "head.weight", "stages.0.conv.bias", "stages.0.conv.weight",
                                        "stages.1.conv.bias", "stages.1.conv.weight"]
    assert ClassifierConfig.from_dict({"num_classes": 3, "input_size": 16, "width": 4, "depth": 2}).convs == 1
    torch.manual_seed(0)
    cfg = ClassifierConfig(num_classes=3, input_size=16, width=4, depth=2, convs=2)
    two = build_classifier(cfg).eval()
    sd = two.state_dict()
    assert "stages.1.more.0.weight" in sd and sum(p.numel() for p in two.parameters()) > sum(
        p.numel() for p in one.parameters())
    x = torch.rand(2, 3, 16, 16)
    h = x
    for i in range(2):
        h = F.relu(F.conv2d(h, sd[f"stages.{i}.conv.weight"], sd[f"stages.{i}.conv.bias"], stride=2, padding=1))
        h = F.relu(F.conv2d(h, sd[f"stages.{i}.more.0.weight"], sd[f"stages.{i}.more.0.bias"], padding=1))
    expected = F.linear(h.mean((2, 3)), sd["head.weight"], sd["head.bias"])
    with torch.no_grad():
        torch.testing.assert_close(two(x), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="convs"):
        ClassifierConfig(num_classes=3, input_size=16, depth=2, convs=0)


def test_classifier_context_trunk_adds_logits_of_the_window_mosaic() -> None:
    """context_width > 0: the logits are the windows' plus a second trunk's on the windows side by side in
    their places, box-filtered by the grid and resized (plain torch ops as the reference); one window is
    repeated grid x grid times, as the exported graph's identical views are. A header without the field
    loads without a context, and a config without a context writes the header it always did."""
    old = {"num_classes": 3, "input_size": 16, "width": 4, "depth": 2, "window": 24}
    assert ClassifierConfig.from_dict(old).context_width == 0
    assert "context_width" not in ClassifierConfig.from_dict(old).to_dict()  # bundle digests unchanged
    torch.manual_seed(0)
    cfg = ClassifierConfig(num_classes=3, input_size=16, width=4, depth=2, convs=2, window=24, grid=2,
                           context_width=3)
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    clf = build_classifier(cfg).eval()
    sd = clf.state_dict()
    assert count_params(clf) == cfg.num_params()
    base = build_classifier(dataclasses.replace(cfg, context_width=0)).eval()
    base.load_state_dict({n: v for n, v in sd.items() if not n.startswith("context_")})

    def trunk(view):
        h = view
        for i in range(2):
            h = F.relu(F.conv2d(h, sd[f"context_stages.{i}.conv.weight"], sd[f"context_stages.{i}.conv.bias"],
                                stride=2, padding=1))
            h = F.relu(F.conv2d(h, sd[f"context_stages.{i}.more.0.weight"], sd[f"context_stages.{i}.more.0.bias"],
                                padding=1))
        return F.linear(h.mean((2, 3)), sd["context_head.weight"], sd["context_head.bias"])

    def thumb(mosaic):
        return F.interpolate(F.avg_pool2d(mosaic, 2), size=(16, 16), mode="bilinear", align_corners=False)

    frame = torch.rand(2, 3, 40, 50)
    # 2 x 2 windows of 24 px start at 0 and 16 (rows), 0 and 26 (columns).
    rows = [torch.cat([frame[:, :, y : y + 24, x : x + 24] for x in (0, 26)], 3) for y in (0, 16)]
    mosaic = torch.cat(rows, 2)
    window = frame[:, :, :24, :20]
    with torch.no_grad():
        torch.testing.assert_close(clf.context_input(frame), thumb(mosaic))
        torch.testing.assert_close(clf(frame), base(frame) + trunk(thumb(mosaic)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(clf(mosaic), clf(frame), atol=1e-6, rtol=1e-5)  # the runtime's window mosaic
        torch.testing.assert_close(clf(window), base(window) + trunk(thumb(window.repeat(1, 1, 2, 2))),
                                   atol=1e-6, rtol=1e-5)
        clf.always_grid = True  # the exporter's path: identical views of a small frame, the same logits
        torch.testing.assert_close(clf(window), base(window) + trunk(thumb(window.repeat(1, 1, 2, 2))),
                                   atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="context_width"):
        ClassifierConfig(num_classes=3, input_size=16, depth=2, context_width=-1)
    with pytest.raises(ConfigError, match="needs a classifier with windows"):
        ClassifierConfig(num_classes=3, input_size=16, depth=2, context_width=4)


def test_classifier_config_without_window_loads_as_whole_frame() -> None:
    old = {"num_classes": 4, "input_size": 32, "width": 4, "depth": 2}  # a bundle from before windows
    assert ClassifierConfig.from_dict(old).window == 0
    with pytest.raises(ConfigError, match="grid"):
        ClassifierConfig(num_classes=3, input_size=16, depth=2, window=32, grid=0)


# ------------------------------------------------------------------------------------------- costs


def test_count_params_matches_numel_sum() -> None:
    model = NAFNet(TINY)
    assert count_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("conv", "h", "w"),
    [
        (nn.Conv2d(3, 8, 3, padding=1), 17, 11),
        (nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 0)), 20, 13),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), 9, 9),
        (nn.Conv2d(8, 12, 1, groups=4), 5, 6),
    ],
)
def test_model_cost_single_conv(conv: nn.Conv2d, h: int, w: int) -> None:
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    h_out = (h + 2 * ph - kh) // sh + 1
    w_out = (w + 2 * pw - kw) // sw + 1
    expected = h_out * w_out * conv.out_channels * conv.in_channels // conv.groups * kh * kw
    cost = model_cost(conv, h, w)
    assert cost == ModelCost(params=count_params(conv), macs=expected, height=h, width=w)
    assert cost.flops == 2 * expected


def test_model_cost_conv_transpose() -> None:
    deconv = nn.ConvTranspose2d(4, 6, 2, stride=2)
    assert model_cost(deconv, 5, 7).macs == 5 * 7 * 4 * 6 * 2 * 2


def test_model_cost_linear() -> None:
    # A Linear on NCHW applies over W: C * H rows of in_features -> out_features.
    lin = nn.Linear(10, 4)
    assert model_cost(lin, 3, 10, channels=2).macs == 2 * 3 * 10 * 4
    with pytest.raises(ConfigError, match="channels"):
        model_cost(lin, 3, 10)


def test_model_cost_classifier_is_frame_size_independent() -> None:
    clf = build_classifier(CLF)
    cost = model_cost(clf, 720, 1280)
    assert (cost.height, cost.width) == (720, 1280)
    assert cost.macs == model_cost(clf, 33, 17).macs
    # Hand count: stages of 3x3 stride-2 convs on input_size squared, then the head.
    expected, c_in, s = 0, 3, CLF.input_size
    for i in range(CLF.depth):
        c_out, s = CLF.width * 2**i, s // 2
        expected += s * s * c_out * c_in * 9
        c_in = c_out
    expected += c_in * CLF.num_classes
    assert cost.macs == expected


def test_model_cost_nafnet_counts_padded_size() -> None:
    model = NAFNet(TINY)
    m = TINY.pad_multiple
    assert model_cost(model, 4 * m - 1, 2 * m + 1).macs == model_cost(model, 4 * m, 3 * m).macs
    assert model_cost(model, 8, 8).height == 8


# -------------------------------------------------------------------------------------------- ONNX


def _export_and_compare(model: nn.Module, path: Path, sizes: list[tuple[int, int, int]]) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model.eval()
    with warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated; see the comment in the callers.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 32, 48),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch"}},
            opset_version=17,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, h, w in sizes:
        x = torch.rand(b, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        (out,) = session.run(None, {"x": x.numpy()})
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4


# torch 2.13 defaults to the dynamo exporter, which needs onnxscript (not a dependency of adsrt);
# the TorchScript exporter (dynamo=False) handles dynamic H/W here, including the Pad and crop.
def test_nafnet_onnx_dynamic_hw_matches_torch(tiny: NAFNet, tmp_path: Path) -> None:
    _export_and_compare(tiny, tmp_path / "nafnet.onnx", [(1, 37, 53), (2, 16, 24), (1, 1, 1)])


def test_classifier_onnx_dynamic_hw_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _export_and_compare(build_classifier(CLF), tmp_path / "clf.onnx", [(1, 37, 53), (2, 64, 64)])
