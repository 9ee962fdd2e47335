"""ADS data structures and the reference update, against a dense loop-over-units reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adsrt.ads import (
    UnitLayout,
    apply_ads,
    check_coefficients,
    eligible_convs,
    extract_delta,
    gather_units,
    unit_layouts,
)
from adsrt.errors import AdsrtError


def unit_slice(weight: torch.Tensor, layout: UnitLayout, unit: int) -> torch.Tensor:
    """The reference: a unit as plain indexing, written from the definitions, not from offsets."""
    if layout.granularity == "filter":
        return weight[:, unit] if layout.transposed else weight[unit]
    o, i = divmod(unit, layout.in_channels)
    return weight[i, o] if layout.transposed else weight[o, i]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("granularity", ["kernel", "filter"])
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (4, 1, 3, 3), (7, 6, 1, 1), (2, 3, 2, 2)])
def test_element_offsets_address_the_unit(shape, granularity, transposed):
    layout = UnitLayout("w", shape, transposed, granularity)
    weight = torch.arange(layout.numel, dtype=torch.float64).reshape(shape)
    units = torch.arange(layout.n_units)
    got = gather_units(weight, layout, units)
    assert got.shape == (layout.n_units, layout.unit_numel)
    for u in range(layout.n_units):
        assert torch.equal(got[u], unit_slice(weight, layout, u).reshape(-1)), u
    # every element belongs to exactly one unit
    assert sorted(layout.element_offsets(units).reshape(-1).tolist()) == list(range(layout.numel))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4)),
    granularity=st.sampled_from(["kernel", "filter"]),
    transposed=st.booleans(),
    data=st.data(),
)
def test_element_offsets_of_random_unit_subsets(shape, granularity, transposed, data):
    layout = UnitLayout("w", shape, transposed, granularity)
    units = data.draw(st.lists(st.integers(0, layout.n_units - 1), unique=True, max_size=layout.n_units))
    weight = torch.randn(shape)
    got = gather_units(weight, layout, torch.tensor(units, dtype=torch.int64))
    assert got.shape == (len(units), layout.unit_numel)
    for row, u in enumerate(units):
        assert torch.equal(got[row], unit_slice(weight, layout, u).reshape(-1))


def test_eligible_convs_cover_every_conv_and_nothing_else():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 4, 1),  # pointwise
        nn.ConvTranspose2d(4, 4, 2, stride=2),
        nn.GroupNorm(1, 4),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    assert list(eligible_convs(model)) == ["0.weight", "1.weight", "2.weight", "3.weight"]
    layouts = unit_layouts(model, "kernel")
    assert layouts["1.weight"].n_units == 8 and layouts["1.weight"].unit_numel == 9
    assert layouts["3.weight"].transposed and layouts["3.weight"].n_units == 16
    with pytest.raises(AdsrtError, match="grouped ConvTranspose2d"):
        eligible_convs(nn.ConvTranspose2d(4, 4, 2, groups=2))


def dense_reference(bundle, c: list[float]) -> dict[str, torch.Tensor]:
    """theta_um + sum_d c_d * delta_d * M_d, with dense per-layer delta and mask tensors."""
    layouts = bundle.unit_layouts()
    out = {name: bundle.um_state[name].clone() for name in layouts}
    for d_index, d in enumerate(bundle.degradations):
        for layer, delta in bundle.deltas[d].items():
            layout = layouts[layer]
            dense_delta = torch.zeros(layout.shape)
            mask = torch.zeros(layout.shape, dtype=torch.bool)
            for row, unit in enumerate(delta.units.tolist()):
                unit_slice(dense_delta, layout, unit).copy_(delta.values[row].reshape(unit_slice(dense_delta, layout, unit).shape))
                unit_slice(mask, layout, unit).fill_(True)
            out[layer] += c[d_index] * dense_delta * mask
    return out


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
@pytest.mark.parametrize("c", [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3], [0.7, -0.1, 0.9]])
def test_apply_ads_matches_dense_reference(make_bundle, granularity, c):
    bundle = make_bundle(granularity=granularity, q=0.1)
    model = bundle.build_um()
    apply_ads(model, bundle, c)
    expected = dense_reference(bundle, c)
    state = model.state_dict()
    for name, weight in expected.items():
        torch.testing.assert_close(state[name], weight, rtol=0, atol=1e-6)
    if c == [0.0, 0.0, 0.0]:  # pure UM
        for name, weight in bundle.um_state.items():
            assert torch.equal(state[name], weight)


def test_apply_ads_is_independent_of_history_and_changes_the_output(make_bundle):
    bundle = make_bundle(q=0.1)
    x = torch.rand(1, 3, 24, 20)
    fresh = bundle.build_um()
    with torch.no_grad():
        um_out = fresh(x)
        model = bundle.build_um()
        apply_ads(model, bundle, [0.0, 1.0, 0.0])
        apply_ads(model, bundle, [0.3, 0.0, 0.6])
        apply_ads(fresh, bundle, [0.3, 0.0, 0.6])
        torch.testing.assert_close(model(x), fresh(x), rtol=0, atol=0)
        assert (model(x) - um_out).abs().max() > 1e-4  # the deltas do reach the output


def test_one_hot_recovers_target_on_masked_units(make_bundle):
    bundle = make_bundle(q=0.1)
    layouts = bundle.unit_layouts()
    layer = next(iter(layouts))
    layout = layouts[layer]
    um_w = bundle.um_state[layer]
    target_w = um_w + torch.randn_like(um_w)
    units = torch.tensor([layout.n_units - 1, 0, 2, 2])  # unsorted, duplicate: extract sorts and dedups
    delta = extract_delta(layout, um_w, target_w, units)
    assert delta.units.tolist() == [0, 2, layout.n_units - 1]
    bundle.deltas = {"noise": {layer: delta}, "blur": {}, "rain": {}}
    model = bundle.build_um()
    apply_ads(model, bundle, [1.0, 0.0, 0.0])
    w = model.state_dict()[layer]
    masked = set(delta.units.tolist())
    for u in range(layout.n_units):
        want = target_w if u in masked else um_w
        torch.testing.assert_close(unit_slice(w, layout, u), unit_slice(want, layout, u))


@pytest.mark.parametrize("bad", [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [0.1, float("nan"), 0.2], [float("inf"), 0, 0]])
def test_bad_coefficients_are_refused_and_weights_untouched(make_bundle, bad):
    bundle = make_bundle()
    model = bundle.build_um()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdsrtError, match="coefficients"):
        apply_ads(model, bundle, bad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_model_bundle_mismatch_is_refused(make_bundle):
    bundle = make_bundle()
    with pytest.raises(AdsrtError, match="mismatch"):
        apply_ads(nn.Sequential(nn.Conv2d(3, 3, 3)), bundle, [0.0, 0.0, 0.0])


def test_check_coefficients_accepts_tensors():
    c = check_coefficients(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 2)
    assert c.dtype == torch.float32 and c.tolist() == [0.5, 0.5]
