"""The tensorrt backend (:mod:`adsrt.runtime.tensorrt_backend`).

Two groups:

- tests that run everywhere (no TensorRT, no GPU): the unavailable reason and a clean refusal without
  TensorRT, refit rows from the weight sizes of an engine;
- ``gpu`` tests that build real engines from a tiny synthetic bundle (``bundle``, tests/conftest.py) and
  compare them with the torch reference (:func:`adsrt.ads.apply_ads`); skipped, with the reason, where
  TensorRT or CUDA is missing.
"""

from __future__ import annotations

import pytest
import torch

from adsrt.errors import BackendError
from adsrt.export.tensorrt_build import build_engine
from adsrt.runtime.refit import swap_rows
from adsrt.runtime.tensorrt_backend import TensorRTBackend, refit_rows_from_sizes
from adsrt.runtime.tensorrt_engine import EngineConfig, has_fast_fp16, tensorrt_unavailable_reason

TRT_REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and CUDA: {TRT_REASON}")
DEGRADATIONS = ("noise", "blur", "rain")  # the ``bundle`` fixture's


# --------------------------------------------------------------------------------------------- availability


def test_unavailable_reason_is_explicit():
    assert TensorRTBackend.unavailable_reason() == TRT_REASON
    if TRT_REASON is not None:
        assert "tensorrt" in TRT_REASON.lower() or "cuda" in TRT_REASON.lower()


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT is available here")
def test_backend_and_build_refuse_cleanly_without_tensorrt(bundle, tmp_path):
    with pytest.raises(BackendError, match="cannot run here"):
        TensorRTBackend(bundle, cache_dir=tmp_path)
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="TensorRT is unavailable"):
        build_engine(onnx, EngineConfig())
    assert not (tmp_path / "engines").exists()


# ----------------------------------------------------------------------------------------------- refit rows


def test_refit_rows_from_engine_sizes(bundle):
    split = swap_rows(bundle, split_max=1.0)
    whole = swap_rows(bundle, split_max=0.0)
    default = swap_rows(bundle)
    assert set(split) == set(whole) == set(default)
    as_split = refit_rows_from_sizes(bundle, {r.name: r.numel for r in split.values()})
    assert all(not r.whole or r.numel == whole[layer].numel for layer, r in as_split.items())
    assert all(r.numel == split[layer].numel for layer, r in as_split.items())
    as_whole = refit_rows_from_sizes(bundle, {r.name: r.numel for r in whole.values()})
    assert all(r.shape == whole[layer].shape for layer, r in as_whole.items())
    # the default export splits some layers and keeps others whole: the sizes say which
    mixed = refit_rows_from_sizes(bundle, {r.name: r.numel for r in default.values()})
    assert {layer: r.shape for layer, r in mixed.items()} == {layer: r.shape for layer, r in default.items()}
    sizes = {r.name: r.numel for r in default.values()}
    first = next(iter(default.values())).name
    sizes[first] += 1
    del sizes[list(sizes)[-1]]
    with pytest.raises(BackendError, match="do not fit this bundle") as info:
        refit_rows_from_sizes(bundle, sizes)
    assert first in str(info.value) and "missing" in str(info.value)


# -------------------------------------------------------------------------------------- real TensorRT (GPU)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double().cpu() - b.double().cpu()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _reference(bundle, x: torch.Tensor, c) -> torch.Tensor:
    from adsrt.ads import apply_ads

    model = apply_ads(bundle.build_um(), bundle, c)
    with torch.no_grad():
        return model(x.cpu().float())


@pytest.fixture(scope="module")
def frames(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0  # 192 x 256 (multiples of 16)
    return x


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize(("precision", "min_psnr"), [("fp32", 50.0), ("fp16", 40.0)])
def test_swap_engine_matches_torch_and_refits(bundle, frames, trt_cache, precision, min_psnr, trt_profile):
    if precision == "fp16" and not has_fast_fp16(torch.cuda.get_device_capability()):
        pytest.skip("this GPU has no fast FP16")
    backend = TensorRTBackend(bundle, device="cuda", precision=precision, mode="swap", cache_dir=trt_cache,
                              engine_config=trt_profile)
    x = frames.cuda()
    outputs, refs = [], []
    for c in ([0.9, 0.05, 0.05], [0.0, 0.1, 0.9], [0.0, 0.0, 0.0]):
        backend.update(torch.tensor([c], device="cuda"))
        y = backend.restore(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        refs.append(_reference(bundle, frames, c))
        assert _psnr(y, refs[-1]) > min_psnr, c
        outputs.append(y.cpu())
    # each refit really changed the engine: every output is nearer its own c's reference than another's
    for i, j in ((0, 1), (1, 0), (2, 0)):
        assert _psnr(outputs[i], refs[i]) > _psnr(outputs[i], refs[j]) + 1.0, (i, j)
    # another frame size: the input shape and the output buffers follow
    small = x[:, :, :64, :96]
    assert backend.restore(small).shape == small.shape
    with pytest.raises(BackendError, match="outside the engine's shape profile"):
        backend.restore(torch.zeros(1, 3, 320, 320, device="cuda"))


@pytest.mark.gpu
@needs_tensorrt
def test_branch_engine_mixes_coefficients_per_frame(bundle, frames, trt_cache, trt_profile):
    backend = TensorRTBackend(bundle, device="cuda", mode="branch", cache_dir=trt_cache, engine_config=trt_profile)
    x = torch.cat([frames, frames.flip(-1)]).cuda()
    cs = [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]
    backend.update(torch.tensor(cs, device="cuda"))
    y = backend.restore(x)
    for i, c in enumerate(cs):
        assert _psnr(y[i : i + 1], _reference(bundle, x[i : i + 1], c)) > 50.0


@pytest.mark.gpu
@needs_tensorrt
def test_classifier_engine_matches_torch(bundle, frames, trt_cache, trt_profile):
    backend = TensorRTBackend(bundle, device="cuda", mode="branch", cache_dir=trt_cache, engine_config=trt_profile)
    logits = backend.classify(frames.cuda())
    with torch.no_grad():
        ref = bundle.build_classifier()(frames)
    assert logits.shape == (1, len(DEGRADATIONS) + 1)
    torch.testing.assert_close(logits.cpu(), ref, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@needs_tensorrt
def test_um_engine_and_lazy_classifier(bundle, frames, trt_cache, trt_profile):
    backend = TensorRTBackend(bundle, device="cuda", mode="um", cache_dir=trt_cache, engine_config=trt_profile)
    assert backend.classifier is None and backend.has_classifier  # built on the first classify()
    backend.update(torch.ones(1, len(DEGRADATIONS), device="cuda"))  # um: c is ignored
    y = backend.restore(frames.cuda())
    assert _psnr(y, _reference(bundle, frames, [0.0] * len(DEGRADATIONS))) > 50.0
    assert backend.classify(frames.cuda()).shape == (1, len(DEGRADATIONS) + 1)
    # a prebuilt engine file (with its cache sidecar) runs as engine=
    again = TensorRTBackend(bundle, device="cuda", mode="um", engine=backend.engine_paths["um"], cache_dir=trt_cache,
                            engine_config=trt_profile)
    assert _psnr(again.restore(frames.cuda()), y) > 80.0
    with pytest.raises(BackendError, match="does not fit"):
        TensorRTBackend(bundle, device="cuda", mode="branch", engine=backend.engine_paths["um"], cache_dir=trt_cache)
