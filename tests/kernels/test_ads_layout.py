"""The swap-mode layout: parameters are views of one arena, the CSR table is right and compact, and
bundle/model mismatches are refused before the model is touched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adsrt.ads import LayerDelta, unit_layouts
from adsrt.errors import AdsrtError
from adsrt.kernels.ads_layout import ALIGN_BYTES, build_ads_layout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layers", ["many", "transposed"])
def test_conv_weights_become_views_of_one_aligned_arena(layers, dtype, make_case):
    model, source = make_case(layers, 3, "kernel")
    x = torch.rand(1, model[0].in_channels, 9, 7)
    with torch.no_grad():
        expected = model.to(dtype)(x.to(dtype))
    layout = build_ads_layout(model, source)
    assert layout.arena.dtype == dtype and layout.arena.is_contiguous()
    lo, size = layout.arena.data_ptr(), layout.arena.element_size()
    hi = lo + layout.arena.numel() * size
    spans = []
    for name, module in layout.modules.items():
        w = module.weight
        assert isinstance(w, nn.Parameter) and w.dtype == dtype
        start = w.data_ptr()
        assert lo <= start and start + w.numel() * size <= hi, name
        assert (start - lo) % ALIGN_BYTES == 0, name
        spans.append((start, start + w.numel() * size))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))  # disjoint
    with torch.no_grad():
        torch.testing.assert_close(model(x.to(dtype)), expected, rtol=0, atol=0)  # same weights, same output
        layout.arena.zero_()  # and the arena *is* the weights
    assert all(not module.weight.any() for module in layout.modules.values())


def test_device_and_dtype_arguments_move_the_whole_model(make_case):
    model, source = make_case("many", 2, "kernel")
    layout = build_ads_layout(model, source, device="cpu", dtype=torch.float16)
    assert layout.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in model.parameters())  # biases follow the weights
    assert layout.is_bound()


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
@pytest.mark.parametrize("k", [1, 4])
def test_csr_table_lists_every_masked_value_once_per_degradation(granularity, k, make_case):
    model, source = make_case("many", k, granularity)
    layout = build_ads_layout(model, source)
    layouts = unit_layouts(model, granularity)
    expected_entries = sum(
        len(delta.units) * layouts[layer].unit_numel for per_layer in source.deltas.values() for layer, delta in per_layer.items()
    )
    assert layout.n_entries == expected_entries  # sum_d |M_d| values, nothing dense
    offsets, row_ptr, column = layout.offsets.long(), layout.row_ptr.long(), layout.column.long()
    assert torch.all(offsets[1:] > offsets[:-1])  # ascending and unique
    assert row_ptr[0] == 0 and row_ptr[-1] == layout.n_entries and torch.all(row_ptr[1:] > row_ptr[:-1])
    lengths = row_ptr[1:] - row_ptr[:-1]
    assert int(lengths.max()) == layout.max_row <= k
    rows = torch.repeat_interleave(torch.arange(layout.n_union), lengths)
    # the torch path's scatter index, precomputed at build time: the CSR row of every entry
    assert layout.entry_rows.dtype == torch.int64 and torch.equal(layout.entry_rows, rows)
    assert torch.all((column >= 0) & (column < k))
    same_row = rows[1:] == rows[:-1]
    assert torch.all(column[1:][same_row] > column[:-1][same_row])  # degradations ascend within a row
    # base holds the bundle's UM values (the model holds the UM at build time)
    assert torch.equal(layout.base, layout.arena[offsets].float())
    assert layout.table_bytes == 12 * layout.n_union + 8 * layout.n_entries + 4
    if k > 1:  # storage grows with sum_d |M_d|, which is less than k x the union
        assert layout.n_entries < k * layout.n_union


def _snapshot(model: nn.Module) -> list[tuple[int, int]]:
    return [(id(p), p.data_ptr()) for p in model.parameters()]


def _mismatches():
    """(name, how to break the source or model, expected message)."""

    def drop_um(model, source):
        del source.um_state[next(iter(source.um_state))]

    def other_width(model, source):
        name = next(n for n in source.um_state if n.endswith("weight"))
        source.um_state[name] = torch.zeros(9, *source.um_state[name].shape[1:])

    def foreign_layer(model, source):
        source.deltas["d0"]["nope.weight"] = LayerDelta(torch.tensor([0]), torch.zeros(1, 9))

    def other_granularity(model, source):
        source.granularity = "filter" if source.granularity == "kernel" else "kernel"

    def unknown_degradation(model, source):
        source.deltas["fog"] = {}

    def out_of_range(model, source):
        layer, delta = next(iter(source.deltas["d0"].items()))
        delta.units = delta.units.clone()
        delta.units[-1] = 10_000

    def duplicate_units(model, source):
        layer, delta = next(iter(source.deltas["d0"].items()))
        delta.units = torch.cat([delta.units, delta.units[:1]])
        delta.values = torch.cat([delta.values, delta.values[:1]])

    def non_finite(model, source):
        next(iter(source.deltas["d0"].values())).values[0, 0] = float("nan")

    def no_degradations(model, source):
        source.degradations, source.deltas = [], {}

    def shared_weight(model, source):
        model[1].weight = model[0].weight

    def float64(model, source):
        model.double()

    return [
        ("drop_um", drop_um, "has no weight"),
        ("other_width", other_width, "mismatch"),
        ("foreign_layer", foreign_layer, "no eligible convolution"),
        ("other_granularity", other_granularity, "mismatch"),
        ("unknown_degradation", unknown_degradation, "not in the bundle's list"),
        ("out_of_range", out_of_range, "out of range"),
        ("duplicate_units", duplicate_units, "unique"),
        ("non_finite", non_finite, "finite"),
        ("no_degradations", no_degradations, "no degradations"),
        ("shared_weight", shared_weight, "share one weight"),
        ("float64", float64, "arena dtype"),
    ]


@pytest.mark.parametrize("name, breaker, match", _mismatches(), ids=[m[0] for m in _mismatches()])
def test_mismatches_are_refused_and_the_model_is_untouched(name, breaker, match, make_case):
    model, source = make_case("one_odd_conv" if name != "shared_weight" else "many", 2, "kernel")
    if name == "shared_weight":
        model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3))
        source.um_state = {k: v.clone() for k, v in model.state_dict().items()}
        source.deltas = {"d0": {}, "d1": {}}
    breaker(model, source)
    before = _snapshot(model)
    with pytest.raises(AdsrtError, match=match):
        build_ads_layout(model, source)
    assert _snapshot(model) == before


def test_a_model_without_convolutions_is_refused(make_case):
    _, source = make_case("one_odd_conv", 2, "kernel")
    with pytest.raises(AdsrtError, match="no ADS-eligible"):
        build_ads_layout(nn.Sequential(nn.Linear(3, 3)), source)


def test_layout_of_a_real_bundle(make_bundle):
    bundle = make_bundle(q=0.03)
    model = bundle.build_um()
    layout = build_ads_layout(model, bundle)
    assert layout.degradations == ("noise", "blur", "rain") and layout.k == 3
    assert set(layout.slots) == set(unit_layouts(model, "kernel"))
    assert "masked values" in layout.describe()
    assert layout.update_bytes == layout.table_bytes + 4 * layout.n_union + 12
