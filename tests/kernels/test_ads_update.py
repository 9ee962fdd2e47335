"""Fused ADS update (Triton kernel and torch path) against the dense torch reference of conftest.py.

Triton runs under TRITON_INTERPRET=1 on CPU tensors (CI) and on CUDA tensors where a GPU is visible;
shapes stay small because the interpreter is slow. Backends and devices come from the ``backend`` and
``device`` fixtures, which skip with the reason where a combination cannot run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from adsrt.ads import apply_ads
from adsrt.errors import AdsrtError
from adsrt.kernels import ads_update as ads_update_module
from adsrt.kernels.ads_layout import build_ads_layout
from adsrt.kernels.ads_update import HAS_TRITON, ads_update, resolve_backend

DTYPES = [
    pytest.param(torch.float32, 1e-6, 1e-5, id="fp32"),
    # fp32 sums in another order (or fused multiply-adds) may round to the neighbouring fp16/bf16 value
    pytest.param(torch.float16, 1e-3, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 1e-2, 1e-2, id="bf16"),
]


def weights_of(layout) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().cpu() for name, module in layout.modules.items()}


def assert_weights(layout, expected: dict[str, torch.Tensor], atol: float, rtol: float) -> None:
    got = weights_of(layout)
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        torch.testing.assert_close(got[name], want.to(layout.dtype), atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def coefficient_sequence(k: int, seed: int = 0) -> list[list[float]]:
    """Pure UM, pure first and last target, then a signed mix (a later c must not depend on earlier ones)."""
    one_hot = [[1.0 if i == j else 0.0 for i in range(k)] for j in (0, k - 1)]
    mixed = (0.8 * torch.randn(k, generator=torch.Generator().manual_seed(seed))).tolist()
    return [[0.0] * k, *one_hot, mixed]


# ------------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("granularity", ["kernel", "filter"])
@pytest.mark.parametrize("layers", ["one_odd_conv", "transposed", "many"])
def test_update_matches_dense_reference(
    layers, granularity, k, dtype, atol, rtol, backend, device, make_case, dense_reference, skip_unsupported
):
    skip_unsupported(backend, device, dtype)
    model, source = make_case(layers, k, granularity)
    layout = build_ads_layout(model, source, device=device, dtype=dtype)
    assert layout.max_row == k  # unit 0 of the first layer is in every mask: overlapping rows are exercised
    for c in coefficient_sequence(k):
        ads_update(layout, torch.tensor(c, device=device), backend=backend)
        assert_weights(layout, dense_reference(model, source, c), atol, rtol)


@pytest.mark.parametrize("k", range(1, 9))
def test_every_k_from_1_to_8(k, backend, device, make_case, dense_reference):
    model, source = make_case("many", k, "kernel", seed=k)
    layout = build_ads_layout(model, source, device=device)
    c = coefficient_sequence(k, seed=k)[-1]
    ads_update(layout, torch.tensor(c, device=device), backend=backend)
    assert_weights(layout, dense_reference(model, source, c), 1e-6, 1e-5)


def test_zeros_give_the_um_and_one_hot_the_target_exactly(backend, device, make_case, dense_reference):
    model, source = make_case("many", 3, "filter")
    layout = build_ads_layout(model, source, device=device)
    ads_update(layout, torch.tensor([0.4, -0.2, 0.9], device=device), backend=backend)  # something else first
    ads_update(layout, torch.zeros(3, device=device), backend=backend)
    assert_weights(layout, {name: source.um_state[name] for name in layout.modules}, 0, 0)
    for d in range(3):
        one_hot = [float(i == d) for i in range(3)]
        ads_update(layout, torch.tensor(one_hot, device=device), backend=backend)
        assert_weights(layout, dense_reference(model, source, one_hot), 0, 0)


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_model_output_equals_reference_apply_ads(make_bundle, granularity, backend, device):
    bundle = make_bundle(granularity=granularity, q=0.1)
    model, reference = bundle.build_um().to(device), bundle.build_um()
    layout = build_ads_layout(model, bundle)
    x = torch.rand(2, 3, 19, 23)
    with torch.no_grad():
        um_out = reference(x)
        for c in ([0.3, 0.6, 0.1], [0.0, 1.0, 0.0], [-0.2, 0.4, 1.3]):
            ads_update(layout, torch.tensor(c, device=device), backend=backend)
            apply_ads(reference, bundle, c)
            out = model(x.to(device)).cpu()
            torch.testing.assert_close(out, reference(x), atol=1e-5, rtol=1e-5)
            assert (out - um_out).abs().max() > 1e-4  # the update does reach the output


def test_no_masked_units_is_a_no_op_but_bad_c_is_still_refused(backend, device, make_case):
    model, source = make_case("one_odd_conv", 2, "kernel")
    source.deltas = {"d0": {}, "d1": {}}
    layout = build_ads_layout(model, source, device=device)
    assert layout.n_union == 0 and layout.n_entries == 0
    before = layout.arena.clone()
    ads_update(layout, torch.tensor([0.5, 0.5], device=device), backend=backend)
    assert torch.equal(layout.arena, before) and not layout.refused()
    ads_update(layout, torch.tensor([float("nan"), 0.5], device=device), backend=backend, validate=False)
    assert torch.equal(layout.arena, before) and layout.refused()  # the Triton grid keeps one program


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def bound_layout(make_case, device):
    model, source = make_case("many", 3, "kernel")
    return build_ads_layout(model, source, device=device)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize(
    "bad, match",
    [
        ([0.1, 0.2], "expected 3 coefficient"),
        ([0.1, 0.2, 0.3, 0.4], "expected 3 coefficient"),
        (torch.tensor([1, 0, 0]), "floating-point"),
        (torch.zeros(3, device="meta"), "is on meta"),
        ("abc", "float tensor or a sequence"),
    ],
)
def test_malformed_coefficients_are_refused_before_any_write(bad, match, validate, backend, bound_layout):
    before = bound_layout.arena.clone()
    with pytest.raises(AdsrtError, match=match):
        ads_update(bound_layout, bad, backend=backend, validate=validate)
    assert torch.equal(bound_layout.arena, before)


@pytest.mark.parametrize("bad", [[0.1, float("nan"), 0.2], [float("inf"), 0.0, 0.0], [0.0, 0.0, -float("inf")]])
def test_non_finite_coefficients_are_refused_and_weights_untouched(bad, backend, device, bound_layout):
    layout = bound_layout
    ads_update(layout, torch.tensor([0.2, 0.3, 0.5], device=device), backend=backend)
    before = layout.arena.clone()
    bad = torch.tensor(bad, device=device)
    with pytest.raises(AdsrtError, match="finite"):
        ads_update(layout, bad, backend=backend)  # validate=True: refused on the host
    assert torch.equal(layout.arena, before) and not layout.refused()
    ads_update(layout, bad, backend=backend, validate=False)  # the graph path: refused on the device
    assert torch.equal(layout.arena, before) and layout.refused()
    layout.clear_refused()
    ads_update(layout, torch.tensor([0.0, 1.0, 0.0], device=device), backend=backend, validate=False)
    assert not layout.refused() and not torch.equal(layout.arena, before)


@pytest.mark.parametrize("unbind", ["new_parameter", "model_to_double"])
def test_a_model_unbound_from_the_arena_is_detected(unbind, make_case):
    model, source = make_case("many", 3, "kernel")
    layout = build_ads_layout(model, source)
    assert layout.is_bound()
    if unbind == "new_parameter":
        model[2].weight = nn.Parameter(model[2].weight.detach().clone())
    else:
        model.double()
    assert not layout.is_bound()
    with pytest.raises(AdsrtError, match="no longer views"):
        ads_update(layout, [0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------------- backends


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend(cpu, "auto") == "torch"  # the interpreter is for tests, never picked for speed
    assert resolve_backend(cpu, "torch") == "torch"
    with pytest.raises(AdsrtError, match="backend must be one of"):
        resolve_backend(cpu, "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(AdsrtError, match="TRITON_INTERPRET=1" if HAS_TRITON else "not installed"):
        resolve_backend(cpu, "triton")
    if HAS_TRITON:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert resolve_backend(cpu, "triton") == "triton"


def test_torch_path_works_without_triton(monkeypatch, make_case, dense_reference):
    # A fresh copy of the module, imported as if triton were not installed (Jetson).
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("ads_update_without_triton", Path(ads_update_module.__file__))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.HAS_TRITON
    model, source = make_case("many", 2, "filter")
    layout = build_ads_layout(model, source)
    module.ads_update(layout, [0.5, -0.25])
    assert_weights(layout, dense_reference(model, source, [0.5, -0.25]), 1e-6, 1e-5)
    with pytest.raises(AdsrtError, match="not installed"):
        module.ads_update(layout, [0.5, 0.5], backend="triton")


def test_sync_free_torch_path_refuses_on_the_device(make_case, dense_reference):
    """The torch path's CUDA flavour (decisions by torch.where, no host sync), run here on CPU tensors."""
    update = ads_update_module._torch_update
    model, source = make_case("many", 3, "kernel")
    layout = build_ads_layout(model, source)
    update(layout, torch.tensor([0.2, 0.3, 0.5]), device_checks=True)
    assert_weights(layout, dense_reference(model, source, [0.2, 0.3, 0.5]), 1e-6, 1e-5)
    before = layout.arena.clone()
    update(layout, torch.tensor([float("nan"), 0.0, 0.0]), device_checks=True)
    assert torch.equal(layout.arena, before) and layout.refused()
    layout.clear_refused()


# ----------------------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_classifier_update_restorer_capture_in_one_cuda_graph(make_bundle):
    bundle = make_bundle(q=0.1)
    model, reference = bundle.build_um().cuda(), bundle.build_um()
    layout = build_ads_layout(model, bundle)
    logits = torch.zeros(4, device="cuda")
    x = torch.rand(1, 3, 32, 32, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()  # warm up (compile, allocate) off the capture, as graphs require
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                ads_update(layout, torch.softmax(logits, 0)[:3], validate=False)
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ads_update(layout, torch.softmax(logits, 0)[:3], validate=False)  # the runtime's classifier step
            out = model(x)
        for values in ([3.0, 0.0, -1.0, 0.0], [0.0, 0.0, 4.0, 1.0]):
            logits.copy_(torch.tensor(values))
            graph.replay()
            torch.cuda.synchronize()
            apply_ads(reference, bundle, torch.softmax(torch.tensor(values), 0)[:3])
            torch.testing.assert_close(out.cpu(), reference(x.cpu()), atol=1e-4, rtol=1e-4)
