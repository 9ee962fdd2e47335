"""FAIG-SD scores against a brute-force computation, top-q masks, the ablation selectors, and deltas."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
import torch.nn.functional as F

from adsrt.ads import unit_layouts
from adsrt.arch import BACKBONES, build_backbone
from adsrt.errors import AdsrtError
from adsrt.train.checkpoint import save_weights
from adsrt.train.data import DegradedImageDataset
from adsrt.train.deltas import DeltasConfig, build_deltas, load_deltas
from adsrt.train.select import (
    ENCODER_PREFIXES,
    SelectConfig,
    faig_scores,
    load_selection,
    run_select,
    top_q_units,
)
from adsrt.train.trainer import fixed_batches

TINY = BACKBONES["nafnet-tiny"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        image = cv2.resize(getattr(data, name)(), (64, 48), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), image[:, :, ::-1])
    return folder


def _states(seed: int = 0, config=TINY) -> tuple[dict, dict]:
    """A UM (random init with every layer active) and a target a small random step away."""
    torch.manual_seed(seed)
    model = build_backbone(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    um = {k: v.clone() for k, v in model.state_dict().items()}
    target = {k: v + 0.02 * torch.randn_like(v) for k, v in um.items()}
    return um, target


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    um, target = _states()
    header = {"backbone": TINY.to_dict()}
    return (save_weights(folder / "um.safetensors", um, {**header, "kind": "um"}),
            save_weights(folder / "t.safetensors", target, {**header, "kind": "target", "degradations": ["noise"]}))


def _brute_force(um, target, batches, layer, index, steps) -> float:
    """Integrated gradient of one unit, with nothing shared with faig_scores: weights interpolated by
    hand, gradients from torch.autograd.grad of the loss on all images at once."""
    x = torch.cat([b["input"] for b in batches])
    y = torch.cat([b["target"] for b in batches])
    model = build_backbone(TINY)
    grad_sum = torch.zeros_like(um[layer])
    for t in range(steps):
        alpha = t / steps
        model.load_state_dict({k: alpha * um[k] + (1 - alpha) * target[k] for k in um})
        weight = dict(model.named_parameters())[layer]
        (g,) = torch.autograd.grad(F.l1_loss(model(x), y), weight)
        grad_sum += g
    element = ((target[layer] - um[layer]) * grad_sum / steps).abs()
    return float(element[index].sum())


def test_faig_scores_match_brute_force(photos):
    um, target = _states()
    dataset = DegradedImageDataset(photos, ["noise:25"], crop_size=32, samples_per_epoch=4, seed=3)
    batches = fixed_batches(dataset, batch_size=3)  # two uneven batches: the mean must weight them
    steps = 4
    for granularity in ("kernel", "filter"):
        scores = faig_scores(TINY, um, target, batches, granularity, path_steps=steps)
        layouts = unit_layouts(build_backbone(TINY), granularity)
        assert {k: v.shape[0] for k, v in scores.items()} == {k: lay.n_units for k, lay in layouts.items()}
        # a 1x1 conv, a depthwise 3x3 conv and the first full 3x3 conv
        for layer, o, i in (("encoders.0.0.conv1.weight", 5, 2), ("encoders.1.0.conv2.weight", 3, 0),
                            ("intro.weight", 2, 1)):
            layout = layouts[layer]
            if granularity == "kernel":
                unit, index = o * layout.in_channels + i, (o, i)
            else:
                unit, index = o, (o,)
            expected = _brute_force(um, target, batches, layer, index, steps)
            assert scores[layer][unit].item() == pytest.approx(expected, rel=1e-4, abs=1e-10)
            assert expected > 0


def test_top_q_holds_exactly_q_of_the_units():
    layouts = unit_layouts(build_backbone(TINY), "kernel")
    scores = {n: torch.rand(lay.n_units) for n, lay in layouts.items()}
    total = sum(lay.n_units for lay in layouts.values())
    for q in (0.01, 0.03, 0.05, 0.5):
        units = top_q_units(scores, q)
        assert sum(len(u) for u in units.values()) == round(q * total)
        chosen = torch.cat([scores[n][u] for n, u in units.items()])
        rest = torch.cat([s[~torch.isin(torch.arange(len(s)), units.get(n, torch.zeros(0, dtype=torch.long)))]
                          for n, s in scores.items()])
        assert chosen.min() >= rest.max()  # global ranking across layers
        for u in units.values():
            assert u.dtype == torch.int64 and bool((u[1:] > u[:-1]).all())
    # budget in parameters: the selected values fit in q of the eligible weight values
    numel = {n: lay.unit_numel for n, lay in layouts.items()}
    units = top_q_units(scores, 0.03, unit_numel=numel)
    assert 0 < sum(len(u) * numel[n] for n, u in units.items()) <= 0.03 * sum(lay.numel for lay in layouts.values())


@pytest.mark.parametrize("q", [0.0, -0.1, 0.51, 1.0])
def test_q_outside_the_range_is_refused(weights, tmp_path, q):
    um, target = weights
    with pytest.raises(AdsrtError, match=r"q must be in \(0, 0.5\]"):
        run_select(SelectConfig(um=str(um), target=str(target), degradation="noise", out=str(tmp_path / "m"),
                                selector="absdiff", q=q))


def test_target_of_another_architecture_is_refused(weights, tmp_path):
    um, _ = weights
    _, other = _states(config=BACKBONES["nafnet-small"])
    bad = save_weights(tmp_path / "small.safetensors", other, {"backbone": BACKBONES["nafnet-small"].to_dict()})
    with pytest.raises(AdsrtError, match="does not match the UM"):
        run_select(SelectConfig(um=str(um), target=str(bad), degradation="noise", out=str(tmp_path / "m"),
                                selector="absdiff"))


def test_selectors_differ_and_save_scores_and_masks(weights, photos, tmp_path):
    um, target = weights
    eligible = sum(lay.n_units for lay in unit_layouts(build_backbone(TINY), "kernel").values())
    masks = {}
    for selector in ("faig", "random", "encoder", "absdiff"):
        out = tmp_path / f"{selector}.safetensors"
        header = run_select(SelectConfig(um=str(um), target=str(target), degradation="noise", out=str(out),
                                         data=str(photos), selector=selector, q=0.03, path_steps=3, n_images=4,
                                         batch_size=4, crop_size=32, budget="units"))
        scores, units, saved = load_selection(out)
        assert saved["selector"] == selector and saved == header
        assert len(scores) == 36 and sum(len(u) for u in units.values()) == round(0.03 * eligible)
        masks[selector] = {(n, int(i)) for n, u in units.items() for i in u}
    assert all(n.startswith(ENCODER_PREFIXES) for n, _ in masks["encoder"])
    names = list(masks)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert masks[names[a]] != masks[names[b]], (names[a], names[b])
    with pytest.raises(AdsrtError, match="needs --data"):
        run_select(SelectConfig(um=str(um), target=str(target), degradation="noise", out=str(tmp_path / "x")))


def test_deltas_are_the_masked_difference_and_refining_touches_only_them(weights, photos, tmp_path):
    um_path, target_path = weights
    um, target = _states()
    masks = tmp_path / "masks.safetensors"
    run_select(SelectConfig(um=str(um_path), target=str(target_path), degradation="noise", out=str(masks),
                            selector="absdiff", q=0.05, granularity="filter"))
    plain = build_deltas(DeltasConfig(um=str(um_path), target=str(target_path), masks=str(masks),
                                      out=str(tmp_path / "d.safetensors")))
    deltas, header = load_deltas(tmp_path / "d.safetensors")
    assert header == plain and not header["refined"] and "val" not in header
    layouts = unit_layouts(build_backbone(TINY), "filter")
    for layer, d in deltas.items():
        expected = (target[layer] - um[layer]).reshape(-1)[layouts[layer].element_offsets(d.units)]
        torch.testing.assert_close(d.values, expected)
    assert header["masked_units"] == sum(len(d.units) for d in deltas.values())

    refined = build_deltas(DeltasConfig(um=str(um_path), target=str(target_path), masks=str(masks), data=str(photos),
                                        out=str(tmp_path / "r.safetensors"), refine_steps=3, batch_size=2,
                                        crop_size=32, val_samples=4, lr=1e-3))
    assert set(refined["val"]) >= {"input", "um", "ads", "im", "ads_refined", "ads_unrefined"}
    refined_deltas, _ = load_deltas(tmp_path / "r.safetensors")
    assert {n: d.units.tolist() for n, d in refined_deltas.items()} == {n: d.units.tolist() for n, d in deltas.items()}
    with pytest.raises(AdsrtError, match="needs --data"):
        build_deltas(DeltasConfig(um=str(um_path), target=str(target_path), masks=str(masks),
                                  out=str(tmp_path / "x.safetensors"), refine_steps=2))
