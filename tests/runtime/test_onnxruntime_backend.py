"""The onnxruntime backend: the exported graphs behind adsrt.load / adsrt restore, against the torch backend
(the graph cache itself: tests/export/test_graph_cache.py; ``bundle_file``: tests/conftest.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

import adsrt
from adsrt.bench.latency import LatencyBenchConfig, run_latency_benchmark
from adsrt.cli import main
from adsrt.errors import BackendError
from adsrt.export.onnx_export import OnnxExportConfig, export_onnx

pytestmark = pytest.mark.slow


def _psnr_peak(a, b, peak: float) -> float:
    """PSNR of two arrays, by scikit-image (the independent reference)."""
    return peak_signal_noise_ratio(np.asarray(b, np.float64), np.asarray(a, np.float64), data_range=peak)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return _psnr_peak(a, b, 255.0)


@pytest.mark.parametrize("mode", ["swap", "branch", "local", "um"])
def test_restore_matches_the_torch_backend(bundle_file, cache, photo, mode):
    torch_out = adsrt.load(bundle_file, backend="torch", device="cpu", mode=mode)
    ort_out = adsrt.load(bundle_file, backend="onnxruntime", mode=mode, cache_dir=str(cache))
    assert ort_out.backend_name == "onnxruntime" and ort_out.device.type == "cpu"
    a, b = torch_out.restore(photo), ort_out.restore(photo)
    assert a.shape == b.shape == photo.shape and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # fp32 rounding can flip a uint8 level
    if mode != "um":
        assert ort_out.last.c == pytest.approx(torch_out.last.c, abs=1e-5)
        # and the deltas matter: the same frame with another forced c differs
        forced = adsrt.load(bundle_file, backend="onnxruntime", mode=mode, cache_dir=str(cache), force="rain")
        assert _psnr(forced.restore(photo), b) < 60


def test_swap_updates_follow_c_frame_by_frame(bundle_file, cache, photo):
    """Per-frame c through the fused update + overridden initializers equals the torch swap backend."""
    torch_backend = adsrt.load(bundle_file, backend="torch", device="cpu").backend
    ort_backend = adsrt.load(bundle_file, backend="onnxruntime", cache_dir=str(cache)).backend
    x = torch.from_numpy(photo[:64, :96]).permute(2, 0, 1).float()[None] / 255
    for c in ([1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]):
        c = torch.tensor([c])
        torch_backend.update(c)
        ort_backend.update(c)
        with torch.no_grad():
            ref = torch_backend.restore(x).numpy()
        assert _psnr_peak(ort_backend.restore(x).numpy(), ref, 1.0) > 50


def test_branch_mixes_c_within_a_batch(bundle_file, cache, photo):
    ort_backend = adsrt.load(bundle_file, backend="onnxruntime", mode="branch", cache_dir=str(cache)).backend
    torch_backend = adsrt.load(bundle_file, backend="torch", device="cpu", mode="branch").backend
    x = torch.from_numpy(photo[:48, :80]).permute(2, 0, 1).float()[None].repeat(2, 1, 1, 1) / 255
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ort_backend.update(c)
    torch_backend.update(c)
    with torch.no_grad():
        assert _psnr_peak(ort_backend.restore(x).numpy(), torch_backend.restore(x).numpy(), 1.0) > 50


def test_fp16_graphs_run_on_the_cpu(bundle_file, cache, photo):
    a = adsrt.load(bundle_file, backend="torch", device="cpu", force="noise").restore(photo)
    b = adsrt.load(bundle_file, backend="onnxruntime", precision="fp16", force="noise", cache_dir=str(cache)).restore(photo)
    assert _psnr(a, b) > 40


def test_a_user_graph_runs_or_is_refused_with_the_reason(bundle_file, tmp_path, make_bundle, photo):
    from adsrt.bundle import load_bundle

    bundle = load_bundle(bundle_file)
    split = export_onnx(bundle, tmp_path / "swap.onnx", OnnxExportConfig(mode="swap", split_max=1.0))  # every layer split
    a = adsrt.load(bundle_file, backend="torch", device="cpu", force="blur").restore(photo)
    b = adsrt.load(bundle_file, backend="onnxruntime", graph=str(split.path), force="blur").restore(photo)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    other = export_onnx(make_bundle(), tmp_path / "other.onnx", OnnxExportConfig(mode="um"))
    with pytest.raises(BackendError, match="does not fit.*bundle_digest"):
        adsrt.load(bundle_file, backend="onnxruntime", mode="um", graph=str(other.path))
    with pytest.raises(BackendError, match="adsrt.mode is 'swap', expected 'branch'"):
        adsrt.load(bundle_file, backend="onnxruntime", mode="branch", graph=str(split.path))
    with pytest.raises(BackendError, match="runs on the CPU|no CUDA device"):
        adsrt.load(bundle_file, backend="onnxruntime", device="cuda", mode="um")
    with pytest.raises(BackendError, match="runs \\['fp16', 'fp32'\\]"):
        adsrt.load(bundle_file, backend="onnxruntime", precision="bf16")


def test_cli_restore_image_and_video_with_onnxruntime(bundle_file, cache, photo, tmp_path, capsys):
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    for mode in ("branch", "swap"):
        out = tmp_path / f"out-{mode}.png"
        assert main(["-q", "restore", str(src), str(out), "--bundle", str(bundle_file), "--backend", "onnxruntime",
                     "--mode", mode, "--cache-dir", str(cache)]) == 0
        assert cv2.imread(str(out)).shape == photo.shape
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for i in range(6):
        writer.write(np.ascontiguousarray(cv2.cvtColor(photo[i : i + 64, :96], cv2.COLOR_RGB2BGR)))
    writer.release()
    out = tmp_path / "clip-out.avi"
    assert main(["-q", "restore", str(video), str(out), "--bundle", str(bundle_file), "--backend", "onnxruntime",
                 "--mode", "branch", "--cache-dir", str(cache)]) == 0
    assert "6 of 6 frames restored" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()


def test_latency_benchmark_has_onnxruntime_rows():
    result = run_latency_benchmark(LatencyBenchConfig(backbone="nafnet-tiny", device="cpu", backends=("onnxruntime",),
                                                      modes=("um", "branch"), sizes=("480p",), iters=1, min_iters=1,
                                                      progress=False))
    assert [(r.backend, r.mode) for r in result.rows] == [("onnxruntime", "um"), ("onnxruntime", "branch")]
    assert all(r.p50_ms > 0 for r in result.rows)
