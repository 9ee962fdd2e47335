"""Branch mode equals the reference apply_ads (and swap mode) for random c, on every layer kind, both
granularities, a synthetic NAFNet bundle and a trained one; a batch may mix coefficients."""

from __future__ import annotations

import copy

import pytest
import torch

from adsrt.ads import apply_ads
from adsrt.bundle import load_bundle
from adsrt.errors import AdsrtError
from adsrt.kernels.ads_layout import build_ads_layout
from adsrt.kernels.ads_update import ads_update
from adsrt.runtime.branch import BranchConv, BranchModel, to_branch


def _reference(model, source, c, x):
    ref = copy.deepcopy(model)
    apply_ads(ref, source, c)
    with torch.no_grad():
        return ref(x)


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_branch_equals_apply_ads_on_every_layer_kind(odd_case, granularity):
    model, source = odd_case(granularity)
    x = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(1))
    branch = to_branch(copy.deepcopy(model), source)
    layers = list(branch.branch_layers().values())
    assert len(layers) == 8  # every layer has a delta for some degradation
    assert any(m.transposed for m in layers) and any(m.delta_groups > 1 for m in layers)
    assert any(m.base.padding_mode == "reflect" for m in layers)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        c = torch.randn(3, generator=gen)  # any real c, not only probabilities
        with torch.no_grad():
            out = branch(x, c)
        reference = _reference(model, source, c, x)
        # Outputs reach ~20 here: compare at fp32 rounding of that scale
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=2e-6 * float(reference.abs().max()))


def test_branch_keeps_weights_constant(odd_case):
    model, source = odd_case("kernel")
    branch = to_branch(model, source)
    before = {k: v.clone() for k, v in branch.state_dict().items()}
    with torch.no_grad():
        branch(torch.rand(1, 3, 8, 8), torch.tensor([0.5, 0.2, 0.3]))
    assert all(torch.equal(before[k], v) for k, v in branch.state_dict().items())
    um = {name: t for name, t in source.um_state.items()}
    for name, layer in branch.branch_layers().items():
        assert torch.equal(layer.base.weight, um[f"{name.removeprefix('model.')}.weight"])


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_branch_swap_and_reference_agree_on_nafnet(make_bundle, granularity):
    bundle = make_bundle(granularity=granularity)
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    branch = to_branch(bundle.build_um(), bundle)
    swap_model = bundle.build_um()
    layout = build_ads_layout(swap_model, bundle)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        c = torch.softmax(torch.randn(4, generator=gen), 0)[:3]
        reference = _reference(bundle.build_um(), bundle, c, x)
        ads_update(layout, c)
        with torch.no_grad():
            swapped, branched = swap_model(x), branch(x, c)
        torch.testing.assert_close(swapped, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(branched, reference, rtol=1e-5, atol=1e-5)
        assert (reference - bundle.build_um()(x)).abs().max() > 1e-3  # the deltas matter at this scale


def test_branch_on_the_trained_bundle(trained_bundle, clean_photo, noisy):
    from adsrt.train.data import to_tensor

    bundle = load_bundle(trained_bundle)
    x = to_tensor(noisy(clean_photo))[None]
    branch = to_branch(bundle.build_um(), bundle)
    for c in ([1.0, 0.0], [0.3, 0.6], [0.0, 0.0]):
        with torch.no_grad():
            out = branch(x, torch.tensor(c))
        torch.testing.assert_close(out, _reference(bundle.build_um(), bundle, c, x), rtol=1e-5, atol=1e-5)


def test_a_batch_mixes_coefficients_and_maps(make_bundle):
    bundle = make_bundle(granularity="filter")
    branch = to_branch(bundle.build_um(), bundle)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([[0.9, 0.05, 0.05], [0.0, 0.2, 0.7]])
    with torch.no_grad():
        batch = branch(x, c)
        singles = torch.cat([branch(x[i : i + 1], c[i]) for i in range(2)])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-6)
    assert (batch[0] - batch[1]).abs().max() > 0  # different frames, different coefficients
    with torch.no_grad():
        broadcast = branch(x, c[:1])  # [1, k] applies to the whole batch
    torch.testing.assert_close(broadcast[1:], branch(x[1:], c[0]), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # coefficient maps: one per frame, and one that varies across the frame
        per_frame = branch(x, c[:, :, None, None].expand(2, 3, 4, 6))
        torch.testing.assert_close(per_frame, batch, rtol=1e-5, atol=1e-6)
        ramp = torch.linspace(0, 1, 6).view(1, 1, 1, 6)
        varying = branch(x[:1], (1 - ramp) * c[0].view(1, 3, 1, 1) + ramp * c[1].view(1, 3, 1, 1))
        left, right = branch(x[:1], c[0]), branch(x[:1], c[1])
    # Between the two global outputs, nearer the left one on the left and the right one on the right.
    d_left, d_right = (varying - left).abs(), (varying - right).abs()
    assert d_left[..., :8].mean() < d_right[..., :8].mean() and d_right[..., -8:].mean() < d_left[..., -8:].mean()


def test_branch_moves_with_the_model(make_bundle):
    bundle = make_bundle()
    branch = to_branch(bundle.build_um(), bundle).to(torch.float64)
    layer = next(iter(branch.branch_layers().values()))
    assert isinstance(layer, BranchConv) and layer.delta_weight.dtype == torch.float64
    assert layer.row_channel.dtype == torch.int64  # index buffers are not cast
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    c = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    with torch.no_grad():
        out = branch(x, c)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), _reference(bundle.build_um(), bundle, c.float(), x.float()),
                               rtol=1e-5, atol=1e-5)


def test_bad_coefficients_are_refused(make_bundle):
    bundle = make_bundle()
    branch = to_branch(bundle.build_um(), bundle)
    assert isinstance(branch, BranchModel) and branch.k == 3
    x = torch.rand(2, 3, 16, 16)
    for c in (torch.zeros(2), torch.zeros(3, 3), torch.zeros(2, 3, 1), torch.zeros(2, 2, 4, 4)):
        with pytest.raises(AdsrtError, match="coefficients must have shape"):
            branch(x, c)
    layer = next(iter(branch.branch_layers().values()))
    with pytest.raises(AdsrtError, match="BranchModel.forward"):
        layer(torch.rand(1, layer.base.in_channels, 8, 8))


# ------------------------------------------------------------------------------------- coefficient maps


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_a_constant_map_equals_global_coefficients(odd_case, make_bundle, granularity):
    """Every layer kind, and NAFNet (padding to its multiple): a map of any size holding one c everywhere
    gives apply_ads with that c."""
    c = torch.tensor([0.7, -0.2, 0.4])
    for model, source, size in [(*odd_case(granularity), (13, 11)),
                                (make_bundle(granularity=granularity).build_um(), make_bundle(granularity=granularity),
                                 (37, 45))]:
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3))
        branch = to_branch(copy.deepcopy(model), source)
        reference = _reference(model, source, c, x)
        for map_size in [(1, 1), (3, 5), size]:
            cmap = c.view(1, 3, 1, 1).expand(1, 3, *map_size)
            with torch.no_grad():
                torch.testing.assert_close(branch(x, cmap), reference, rtol=1e-4, atol=1e-5)
