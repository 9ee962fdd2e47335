"""Fused ADS update (Triton kernel and torch path) against the dense torch reference of conftest.py.

Triton runs under TRITON_INTERPRET=1 on CPU tensors (CI) and on CUDA tensors where a GPU is visible;
shapes stay small because the interpreter is slow. Backends and devices come from the ``backend`` and
``device`` fixtures, which skip with the reason where a combination cannot run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from adsrt.ads import apply_ads
from adsrt.errors import AdsrtError
from adsrt.kernels import ads_update as ads_update_module
from adsrt.kernels.ads_layout import AdsLayout, build_ads_layout
from adsrt.kernels.ads_update import HAS_TRITON, ads_update, resolve_backend

INTERPRET = ads_update_module.triton_interpreted()  # how the kernels were compiled (at import)

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


def test_fp32_update_rounds_like_the_unfused_reference(backend, device, make_case, dense_reference):
    """Bit-equal in fp32: each product rounded, then summed in degradation order, as the reference does.
    The Triton kernel is launched with fused multiply-adds off (an FMA would round once, not twice).
    The torch path is exact on the CPU (a serial scatter-add in entry order), not on CUDA (atomics may
    sum a row in another order)."""
    model, source = make_case("many", 4, "kernel", seed=3)
    layout = build_ads_layout(model, source, device=device)
    c = [0.7311, -0.2093, 1.3, 0.0457]
    ads_update(layout, torch.tensor(c, device=device), backend=backend)
    exact = backend == "triton" or device.type == "cpu"
    assert_weights(layout, dense_reference(model, source, c), 0 if exact else 1e-6, 0 if exact else 1e-5)


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
    assert layout.n_union == 0 and layout.n_entries == 0 and layout.entry_rows.numel() == 0
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
        monkeypatch.setattr(ads_update_module, "_LAUNCH_BLOCKERS", {})
        if INTERPRET:
            assert resolve_backend(cpu, "triton") == "triton"
        else:  # the kernels were compiled for a GPU at import: the probe launch finds out
            with pytest.raises(AdsrtError, match="test launch failed"):
                resolve_backend(cpu, "triton")


@pytest.fixture
def fresh_probes(monkeypatch):
    """Empty launch-probe cache and fallback log, restored after the test."""
    monkeypatch.setattr(ads_update_module, "_LAUNCH_BLOCKERS", {})
    monkeypatch.setattr(ads_update_module, "_WARNED", set())


@pytest.fixture
def pretend_gpu(monkeypatch, fresh_probes):
    """resolve_backend's view of a CUDA 8.0+ GPU with Triton installed, not interpreted; returns the
    list of devices the launch probe was run on (the probe itself is left to the test)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(ads_update_module, "_triton_blocker", lambda device: None)
    return []


NO_COMPILER = "Failed to find C compiler. Please specify via CC environment variable.\nTraceback details"


def test_auto_falls_back_to_torch_once_and_logs_why_when_triton_cannot_launch(pretend_gpu, monkeypatch, caplog):
    def no_compiler(device):  # what Triton 3.9 raises at the first launch in a runtime-only image
        pretend_gpu.append(device)
        raise RuntimeError(NO_COMPILER)

    monkeypatch.setattr(ads_update_module, "_launch_empty", no_compiler)
    gpu0, gpu1 = torch.device("cuda", 0), torch.device("cuda", 1)
    with caplog.at_level(logging.WARNING, logger=ads_update_module.__name__):
        assert [resolve_backend(gpu0, "auto") for _ in range(3)] == ["torch"] * 3
        assert pretend_gpu == [gpu0]  # probed once, then cached
        with pytest.raises(AdsrtError, match="backend 'triton' unavailable: .*Failed to find C compiler"):
            resolve_backend(gpu0, "triton")  # forced: an error, never a silent fallback
        assert resolve_backend(gpu0, "torch") == "torch" and pretend_gpu == [gpu0]
        assert resolve_backend(gpu1, "auto") == "torch"  # each device is probed on its own
    assert pretend_gpu == [gpu0, gpu1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one line per device, not one per call
    assert "cuda:0" in warnings[0] and "torch path" in warnings[0]
    assert "RuntimeError: Failed to find C compiler. Please specify via CC" in warnings[0]
    assert "Traceback details" not in warnings[0] and "\n" not in warnings[0]  # the first line only


def test_auto_picks_triton_on_a_gpu_where_the_probe_launches(pretend_gpu, monkeypatch, caplog):
    monkeypatch.setattr(ads_update_module, "_launch_empty", pretend_gpu.append)
    gpu = torch.device("cuda", 0)
    with caplog.at_level(logging.WARNING, logger=ads_update_module.__name__):
        assert resolve_backend(gpu, "auto") == "triton" and resolve_backend(gpu, "triton") == "triton"
    assert pretend_gpu == [gpu] and not caplog.records


def test_auto_never_probes_where_triton_is_not_picked(monkeypatch, fresh_probes):
    probed = []
    monkeypatch.setattr(ads_update_module, "_launch_empty", probed.append)
    assert resolve_backend(torch.device("cpu"), "auto") == "torch"
    assert resolve_backend(torch.device("cuda", 0), "torch") == "torch"
    assert probed == []


@pytest.mark.skipif(not (HAS_TRITON and INTERPRET), reason="a real launch on CPU tensors needs TRITON_INTERPRET=1")
def test_the_real_probe_launches_under_the_interpreter(fresh_probes):
    assert ads_update_module._triton_launch_blocker(torch.device("cpu")) is None
    assert resolve_backend(torch.device("cpu"), "triton") == "triton"


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason="needs triton compiled for a GPU (no TRITON_INTERPRET)")
def test_the_real_probe_reports_a_launch_that_cannot_run(fresh_probes):
    # CPU tensors for a GPU-compiled kernel: no driver here, "cpu tensor?" on a GPU machine.
    blocker = ads_update_module._triton_launch_blocker(torch.device("cpu"))
    assert blocker is not None and blocker.startswith("a test launch failed (")
    assert ads_update_module._triton_launch_blocker(torch.device("cpu")) is blocker  # cached


# --------------------------------------------------------------------------------- launch guard and options


@pytest.fixture
def cuda_guards(monkeypatch):
    """Replaces torch.cuda.device by a recorder: the devices entered, and which ones are active now."""
    record = SimpleNamespace(entered=[], active=[])

    @contextlib.contextmanager
    def device(d):
        record.entered.append(torch.device(d))
        record.active.append(torch.device(d))
        yield
        record.active.pop()

    monkeypatch.setattr(torch.cuda, "device", device)
    return record


class RecordingKernel:
    """Stands in for a Triton kernel: records each launch's grid, arguments and active CUDA guards."""

    def __init__(self, guards):
        self.guards, self.launches = guards, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(SimpleNamespace(grid=grid, args=args, kwargs=kwargs, active=list(self.guards.active)))

        return launch


def test_device_guard_is_the_cuda_device_context_and_a_no_op_on_cpu(cuda_guards):
    with ads_update_module.device_guard(torch.device("cpu")):
        assert cuda_guards.active == []
    with ads_update_module.device_guard(torch.device("cuda", 1)):
        assert cuda_guards.active == [torch.device("cuda", 1)]
    assert cuda_guards.entered == [torch.device("cuda", 1)] and cuda_guards.active == []


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_launches_run_inside_the_layouts_device_guard_with_fp_fusion_off(cuda_guards, monkeypatch, make_case):
    kernel, empty = RecordingKernel(cuda_guards), RecordingKernel(cuda_guards)
    monkeypatch.setattr(ads_update_module, "_ads_update_kernel", kernel)
    monkeypatch.setattr(ads_update_module, "_empty_kernel", empty)
    model, source = make_case("many", 3, "kernel")
    layout = build_ads_layout(model, source)
    monkeypatch.setattr(AdsLayout, "device", property(lambda self: torch.device("cuda", 1)))  # a second GPU
    ads_update_module._launch_triton(layout, torch.tensor([0.1, 0.2, 0.3]))
    ads_update_module.empty_launch(torch.zeros(1))  # a CPU tensor: no guard
    (launch,), (floor,) = kernel.launches, empty.launches
    assert launch.active == [torch.device("cuda", 1)] and floor.active == []
    assert launch.kwargs["enable_fp_fusion"] is False and floor.kwargs["enable_fp_fusion"] is False
    assert launch.kwargs["num_warps"] == ads_update_module._NUM_WARPS


@pytest.mark.skipif(not (HAS_TRITON and INTERPRET), reason="a real launch on CPU tensors needs TRITON_INTERPRET=1")
def test_a_real_launch_for_a_layout_on_a_second_gpu_enters_its_guard(cuda_guards, monkeypatch, make_case, dense_reference):
    model, source = make_case("many", 3, "filter")
    layout = build_ads_layout(model, source)
    monkeypatch.setattr(AdsLayout, "device", property(lambda self: torch.device("cuda", 1)))
    ads_update_module._launch_triton(layout, torch.tensor([0.5, -0.25, 1.0]))  # fp fusion option accepted
    assert cuda_guards.entered == [torch.device("cuda", 1)]
    monkeypatch.undo()
    assert_weights(layout, dense_reference(model, source, [0.5, -0.25, 1.0]), 1e-6, 1e-5)


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


class _AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_the_cuda_torch_path_is_made_of_capture_safe_ops(make_case, dense_reference):
    """What the torch path runs on CUDA (device-side checks), recorded op by op on CPU tensors: no sparse
    op (cuSPARSE is not reliably capturable), nothing that reads a value back to the host and nothing
    whose output size depends on the data."""
    model, source = make_case("many", 3, "kernel")
    layout = build_ads_layout(model, source)
    c = torch.tensor([0.3, -0.6, 0.8])
    with _AtenOps() as recorded:
        ads_update_module._torch_update(layout, c, device_checks=True)
    assert_weights(layout, dense_reference(model, source, c.tolist()), 0, 0)
    unsafe = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "repeat_interleave", "addmv"}
    assert not unsafe & set(recorded.ops) and not any("sparse" in op or "csr" in op for op in recorded.ops)
    assert {"index_select", "scatter_add_", "index_copy_"} <= set(recorded.ops), recorded.ops


# ----------------------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("which", ["triton", "torch"])  # the torch path: Jetson, where Triton is absent
def test_classifier_update_restorer_capture_in_one_cuda_graph(which, make_bundle):
    if which == "triton" and not HAS_TRITON:
        pytest.skip("needs triton")
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
                ads_update(layout, torch.softmax(logits, 0)[:3], backend=which, validate=False)
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ads_update(layout, torch.softmax(logits, 0)[:3], backend=which, validate=False)  # classifier step
            out = model(x)
        for values in ([3.0, 0.0, -1.0, 0.0], [0.0, 0.0, 4.0, 1.0]):
            logits.copy_(torch.tensor(values))
            graph.replay()
            torch.cuda.synchronize()
            apply_ads(reference, bundle, torch.softmax(torch.tensor(values), 0)[:3])
            torch.testing.assert_close(out.cpu(), reference(x.cpu()), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("which", ["triton", "torch"])
def test_a_layout_on_the_second_gpu_is_updated_there(which, make_case, dense_reference):
    if which == "triton" and not HAS_TRITON:
        pytest.skip("needs triton")
    model, source = make_case("many", 3, "kernel")
    layout = build_ads_layout(model, source, device="cuda:1")
    c = [0.2, -0.4, 0.9]
    with torch.cuda.device(0):  # the current device is not the layout's
        ads_update(layout, torch.tensor(c, device="cuda:1"), backend=which)
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0
    assert_weights(layout, dense_reference(model, source, c), 1e-6, 1e-5)
