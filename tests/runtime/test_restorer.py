"""The Restorer API on real photos: restoring improves PSNR, swap/branch/reference agree, classify and c are
the classifier's softmax, streams smooth c and restart at scene cuts, bad frames and broken models are
handled as documented, memory stays flat over a long stream."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

import adsrt
from adsrt.ads import apply_ads
from adsrt.bundle import load_bundle, save_bundle
from adsrt.errors import AdsrtError, BackendError, BundleError, InputError, RestoreError
from adsrt.runtime.backends import BACKENDS, CudaGraphFrame, available_backends, create_backend
from adsrt.runtime.restorer import Restorer, RestorerConfig, Timings
from adsrt.train.data import to_tensor

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    return peak_signal_noise_ratio(ref, img, data_range=255)


@pytest.mark.parametrize("mode", ["swap", "branch"])
def test_restore_improves_psnr_on_a_noisy_photo(trained_bundle, clean_photo, noisy, mode):
    restorer = adsrt.load(trained_bundle, mode=mode, device="cpu")
    degraded = noisy(clean_photo)
    restored = restorer.restore(degraded)
    assert restored.shape == degraded.shape and restored.dtype == np.uint8
    gain = psnr(restored, clean_photo) - psnr(degraded, clean_photo)
    assert gain > 2.0, f"restoring gained only {gain:.2f} dB"
    info = restorer.last
    assert set(info.c) == {"noise", "blur"} and info.probabilities is not None and info.tiles == 1


def test_output_is_the_reference_model_on_the_classifier_c(trained_bundle, clean_photo, noisy, to_image):
    """Independent reference: softmax of the bundle's classifier -> apply_ads on a fresh UM -> to_image."""
    bundle = load_bundle(trained_bundle)
    degraded = noisy(clean_photo)
    x = to_tensor(degraded)[None]
    with torch.no_grad():
        probs = torch.softmax(bundle.build_classifier()(x), dim=1)[0]
        model = apply_ads(bundle.build_um(), bundle, probs[:2])
        reference = to_image(model(x)[0])
    outputs = {}
    for mode in ("swap", "branch"):
        restorer = Restorer(bundle, RestorerConfig(mode=mode, device="cpu"))
        outputs[mode] = restorer.restore(degraded)
        expected_c = dict(zip(["noise", "blur"], probs[:2].tolist(), strict=True))
        expected_p = dict(zip(["noise", "blur", "clean"], probs.tolist(), strict=True))
        assert restorer.last.c == pytest.approx(expected_c, abs=1e-6)
        assert restorer.classify(degraded) == pytest.approx(expected_p, abs=1e-6)
    for mode, out in outputs.items():  # fp32 sums in another order may flip a rounding: at most 1 grey level
        diff = np.abs(out.astype(int) - reference.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, mode


@pytest.mark.slow  # ~35 s on 2 cores: backend auto is ONNX Runtime here, which exports the graphs first
def test_swap_and_branch_agree_on_a_synthetic_bundle_with_big_deltas(make_bundle, clean_photo):
    bundle = make_bundle(granularity="filter")
    outs = [Restorer(bundle, RestorerConfig(mode=m, device="cpu")).restore(clean_photo) for m in ("swap", "branch")]
    um = Restorer(bundle, RestorerConfig(mode="um", device="cpu")).restore(clean_photo)
    diff = np.abs(outs[0].astype(int) - outs[1].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.abs(outs[0].astype(int) - um.astype(int)).max() > 5  # the deltas change the output here


def test_bgr_in_bgr_out(trained_bundle, clean_photo, noisy):
    degraded = noisy(clean_photo)
    rgb = adsrt.load(trained_bundle, device="cpu").restore(degraded)
    bgr = adsrt.load(trained_bundle, device="cpu", channel_order="BGR").restore(np.ascontiguousarray(degraded[:, :, ::-1]))
    np.testing.assert_array_equal(bgr[:, :, ::-1], rgb)


def test_force_skips_the_classifier(trained_bundle, clean_photo, noisy):
    degraded = noisy(clean_photo)
    forced = adsrt.load(trained_bundle, backend="torch", device="cpu", force="noise")
    forced.restore(degraded)
    assert forced.last.c == {"noise": 1.0, "blur": 0.0} and forced.last.probabilities is None
    assert forced.timings.classify < 0.5  # no classifier ran (only the clock)
    clean_forced = adsrt.load(trained_bundle, backend="torch", device="cpu", force="clean").restore(degraded)
    um = adsrt.load(trained_bundle, backend="torch", device="cpu", mode="um").restore(degraded)
    np.testing.assert_array_equal(clean_forced, um)  # c = 0 is the UM
    with pytest.raises(AdsrtError, match="cannot force 'rain'"):
        adsrt.load(trained_bundle, device="cpu", force="rain")


def test_restore_force_overrides_the_classifier_for_one_call(trained_bundle, clean_photo, noisy):
    """``restore(image, force=...)`` (what eval's oracle uses) equals a restorer configured with that force,
    for that call only; bad names are refused in every mode."""
    degraded = noisy(clean_photo)
    restorer = adsrt.load(trained_bundle, backend="torch", device="cpu")
    auto = restorer.restore(degraded)
    p = restorer.last.probabilities
    for name in ("noise", "blur", "clean"):
        configured = adsrt.load(trained_bundle, backend="torch", device="cpu", force=name).restore(degraded)
        np.testing.assert_array_equal(restorer.restore(degraded, force=name), configured)
        assert restorer.last.probabilities is None
        assert restorer.last.c == {d: float(d == name) for d in ("noise", "blur")}
    np.testing.assert_array_equal(restorer.restore(degraded), auto)  # the classifier is back
    assert restorer.last.probabilities == pytest.approx(p)
    um = adsrt.load(trained_bundle, backend="torch", device="cpu", mode="um")
    np.testing.assert_array_equal(um.restore(degraded, force="noise"), um.restore(degraded))  # um: c is 0
    for r in (restorer, um):
        with pytest.raises(AdsrtError, match="cannot force 'rain'"):
            r.restore(degraded, force="rain")


def test_stream_smooths_c_and_restarts_at_a_scene_cut(trained_bundle, clean_photo, noisy):
    import cv2
    from skimage import data

    other = cv2.resize(data.astronaut(), clean_photo.shape[1::-1], interpolation=cv2.INTER_AREA)
    frames = [noisy(clean_photo, seed=i) for i in range(4)] + [noisy(other, seed=10 + i) for i in range(3)]
    ema = 0.6
    restorer = adsrt.load(trained_bundle, device="cpu", ema=ema)
    probs = [np.array(list(restorer.classify(f).values()))[:2] for f in frames]
    cs, cuts = [], []
    for out, frame in zip(restorer.stream(frames), frames, strict=True):
        assert out.shape == frame.shape
        cs.append(np.array(list(restorer.last.c.values())))
        cuts.append(restorer.last.scene_change)
    assert cuts == [False, False, False, False, True, False, False]
    expected = []
    for i, p in enumerate(probs):  # independent EMA with the documented restart
        expected.append(p if i in (0, 4) else ema * expected[-1] + (1 - ema) * p)
    np.testing.assert_allclose(np.array(cs), np.array(expected), atol=1e-5)
    # single images never smooth
    restorer.restore(frames[1])
    np.testing.assert_allclose(list(restorer.last.c.values()), probs[1], atol=1e-5)


def test_stream_skips_what_is_not_a_frame(trained_bundle, clean_photo, caplog):
    restorer = adsrt.load(trained_bundle, device="cpu")
    items = [clean_photo, None, clean_photo.astype(np.float32), clean_photo[:, :, :2], clean_photo]
    with caplog.at_level(logging.WARNING):
        outs = list(restorer.stream(items))
    assert len(outs) == 2 and restorer.skipped == 3
    assert "frame 1: not an HxWx3 uint8 image (NoneType); skipped" in caplog.text
    with pytest.raises(InputError, match="expected an HxWx3 uint8 image, got array float32"):
        restorer.restore(clean_photo.astype(np.float32))


def test_timings_cover_every_stage(trained_bundle, clean_photo):
    restorer = adsrt.load(trained_bundle, device="cpu")
    restorer.restore(clean_photo)
    t = restorer.timings
    assert isinstance(t, Timings) and all(getattr(t, s) > 0 for s in ("decode", "classify", "update", "restore", "encode"))
    assert t.total == pytest.approx(sum(t.as_dict()[s] for s in ("decode", "classify", "update", "restore", "encode")))
    assert t.ads == pytest.approx(t.classify + t.update)


def test_non_finite_output_is_an_error_not_a_frame(trained_bundle, clean_photo):
    restorer = adsrt.load(trained_bundle, backend="torch", device="cpu", mode="branch")
    with torch.no_grad():
        restorer.backend.model.encoders[0][0].norm1.bias.fill_(float("nan"))
    with pytest.raises(RestoreError, match="NaN or infinite"):
        restorer.restore(clean_photo)


def test_non_finite_classifier_output_is_an_error(trained_bundle, clean_photo):
    restorer = adsrt.load(trained_bundle, backend="torch", device="cpu")
    with torch.no_grad():
        restorer.backend.classifier.head.bias.fill_(float("inf"))
    with pytest.raises(RestoreError, match="non-finite"):
        restorer.restore(clean_photo)


def test_load_resolves_files_names_and_the_shipped_default(trained_bundle, tmp_path, monkeypatch):
    from adsrt.runtime.restorer import bundled_models

    assert "default" in bundled_models()  # adsrt/models/default.safetensors ships with the package
    default = adsrt.load(backend="torch", device="cpu")
    assert default.degradations == ["noise", "blur", "rain", "haze", "snow", "lowlight"]
    assert "default" in default.source
    with pytest.raises(BundleError, match="no such bundle file"):
        adsrt.load(tmp_path / "missing.safetensors")
    with pytest.raises(BundleError, match="neither a bundle file nor a bundled model"):
        adsrt.load("nightly")
    with pytest.raises(AdsrtError, match=r"unknown option\(s\) \['tiles'\]"):
        adsrt.load(trained_bundle, tiles=3)
    # "default" is whatever adsrt/models/default.safetensors holds; without it, a clear error.
    import adsrt.runtime.restorer as restorer_module

    monkeypatch.setattr(restorer_module, "MODELS_DIR", tmp_path / "none")
    with pytest.raises(BundleError, match="the bundled default model is missing"):
        adsrt.load()

    models = tmp_path / "models"
    models.mkdir()
    save_bundle(load_bundle(trained_bundle), models / "default.safetensors")
    monkeypatch.setattr(restorer_module, "MODELS_DIR", models)
    restorer = adsrt.load(device="cpu")
    assert restorer.degradations == ["noise", "blur"] and "default" in restorer.source
    assert isinstance(restorer, adsrt.Restorer)


def test_backend_registry_and_auto(trained_bundle, caplog, monkeypatch):
    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt"}
    reasons = available_backends()
    assert reasons["torch"] is None and reasons["onnxruntime"] is None  # the test machines install [export]
    bundle = load_bundle(trained_bundle)
    if reasons["tensorrt"] is not None and not torch.cuda.is_available():
        with caplog.at_level(logging.INFO):
            backend = create_backend(bundle, "auto", device="auto", mode="um")
        assert backend.name == "onnxruntime" and "backend auto -> onnxruntime" in caplog.text
        assert create_backend(bundle, "auto", device="cpu", mode="um").name == "onnxruntime"
        with pytest.raises(BackendError, match="the tensorrt backend is unavailable|tensorrt"):
            create_backend(bundle, "tensorrt")
    # without ONNX Runtime, auto falls back to torch on the CPU (never TensorRT: the frames are on the CPU)
    monkeypatch.setattr(BACKENDS["onnxruntime"], "unavailable_reason", lambda: "onnxruntime is not installed")
    with caplog.at_level(logging.INFO):
        assert create_backend(bundle, "auto", device="cpu").name == "torch"
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend(bundle, "openvino")
    with pytest.raises(BackendError, match="swap mode applies one c"):
        create_backend(bundle, "torch", device="cpu").update(torch.zeros(2, 2))
    with pytest.raises(BackendError, match="are for onnxruntime/tensorrt"):
        create_backend(bundle, "torch", device="cpu", graph="x.onnx")


@pytest.mark.parametrize(("request_", "expected"), [
    (dict(device="cuda"), "tensorrt"),
    (dict(device="cuda:1", precision="fp16"), "tensorrt"),
    (dict(device="cpu"), "onnxruntime"),
    (dict(device=torch.device("cpu")), "onnxruntime"),
    (dict(device=torch.device("cuda", 0)), "tensorrt"),
    (dict(device="cuda", precision="bf16"), "torch"),
    (dict(device="cuda", cuda_graph=True), "torch"),
    (dict(device="cuda", export_missing=True), "torch"),
    (dict(device="cuda", export_missing=True, graph="prebuilt.engine"), "tensorrt"),
])
def test_auto_picks_tensorrt_only_where_the_request_runs_on_it(monkeypatch, caplog, request_, expected):
    """The selection is pure logic: TensorRT is made available and the export probe replaced."""
    from adsrt.runtime import backends

    request_ = dict(request_)
    export_missing = request_.pop("export_missing", False)
    monkeypatch.setattr(backends.BACKENDS["tensorrt"], "unavailable_reason", lambda: None)
    monkeypatch.setattr(backends.BACKENDS["onnxruntime"], "unavailable_reason", lambda: None)
    monkeypatch.setattr(backends, "_export_reason", lambda: "onnxsim not installed" if export_missing else None)
    with caplog.at_level(logging.INFO, logger="adsrt.runtime.backends"):
        assert backends._auto_backend(**request_) == expected
    if expected != "tensorrt":
        assert "tensorrt: " in caplog.text  # the log says why TensorRT was passed over


def test_tensorrt_blocker_reasons():
    from adsrt.runtime.backends import tensorrt_blocker

    ok = dict(wants_cuda=True, precision="fp32", cuda_graph=False)
    assert tensorrt_blocker(None, **ok) is None
    assert tensorrt_blocker("no tensorrt", **ok) == "no tensorrt"
    assert "CPU" in tensorrt_blocker(None, **{**ok, "wants_cuda": False})
    assert "bf16" in tensorrt_blocker(None, **{**ok, "precision": "bf16"})
    assert "cuda_graph" in tensorrt_blocker(None, **{**ok, "cuda_graph": True})
    assert "onnxsim" in tensorrt_blocker(None, **ok, export_reason="onnxsim not installed")
    assert tensorrt_blocker(None, **ok, export_reason="onnxsim not installed", graph="a.engine") is None
    assert "local mode" in tensorrt_blocker(None, **ok, mode="local")
    assert tensorrt_blocker(None, **ok, mode="branch") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")
def test_cuda_only_options_are_refused_on_the_cpu(trained_bundle):
    with pytest.raises(BackendError, match="torch sees no CUDA device"):
        adsrt.load(trained_bundle, device="cuda")
    with pytest.raises(BackendError, match="precision fp16 runs on CUDA only"):
        adsrt.load(trained_bundle, backend="torch", device="cpu", precision="fp16")
    with pytest.raises(BackendError, match="unknown device"):
        adsrt.load(trained_bundle, device="gpu0")


def test_memory_stays_flat_over_a_long_stream(trained_bundle, clean_photo):
    from adsrt.bench.latency import rss_mb

    if rss_mb() is None:
        pytest.skip("needs /proc/self/status")
    restorer = adsrt.load(trained_bundle, device="cpu", mode="swap")
    frame = np.ascontiguousarray(clean_photo[:64, :64])

    def frames(n):
        for _ in range(n):
            yield frame

    for _ in restorer.stream(frames(50)):  # warm up allocator caches
        pass
    before = rss_mb()
    for _ in restorer.stream(frames(400)):
        pass
    assert rss_mb() - before < 8.0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("precision", "min_psnr"), [("fp32", 50.0), ("fp16", 40.0), ("bf16", 32.0)])
@pytest.mark.parametrize("mode", ["swap", "branch"])
def test_cuda_precisions_agree_with_the_cpu(trained_bundle, clean_photo, noisy, mode, precision, min_psnr):
    degraded = noisy(clean_photo)
    cpu = adsrt.load(trained_bundle, device="cpu", mode=mode).restore(degraded)
    cuda = adsrt.load(trained_bundle, device="cuda", mode=mode, precision=precision).restore(degraded)
    assert psnr(cuda, cpu) > min_psnr


@pytest.mark.gpu
@pytest.mark.tf32
@gpu
def test_cuda_fp32_with_tf32_on_agrees_with_the_cpu_at_tf32_tolerance(trained_bundle, clean_photo, noisy):
    """The default CUDA setting (TF32 convolutions): close to the CPU, not fp32-close (10 mantissa bits)."""
    assert torch.backends.cudnn.allow_tf32
    degraded = noisy(clean_photo)
    cpu = adsrt.load(trained_bundle, device="cpu").restore(degraded)
    cuda = adsrt.load(trained_bundle, device="cuda").restore(degraded)
    assert psnr(cuda, cpu) > 40.0


@pytest.mark.gpu  # no skip: the flags exist without CUDA, so the fixture (tests/conftest.py) is checked anywhere
def test_gpu_tests_run_with_tf32_off():
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.gpu
@pytest.mark.tf32
def test_the_tf32_marker_keeps_tf32_on():
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["swap", "branch"])
def test_cuda_graph_replay_equals_eager(trained_bundle, clean_photo, noisy, mode):
    frames = [noisy(clean_photo, seed=i) for i in range(5)]
    eager = adsrt.load(trained_bundle, device="cuda", mode=mode)
    graphed = adsrt.load(trained_bundle, device="cuda", mode=mode, cuda_graph=True)
    for a, b in zip(eager.stream(frames), graphed.stream(frames), strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert eager.last.c == pytest.approx(graphed.last.c, abs=1e-5)
    assert any(isinstance(g, CudaGraphFrame) for g in graphed._graphs.values())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (cuda:1 while cuda:0 is current)")
def test_cuda_graph_frames_on_the_second_device(trained_bundle, clean_photo, noisy):
    """Warm-up, capture and replay are guarded with the backend's device: cuda:1 works while cuda:0 is current."""
    degraded = noisy(clean_photo)
    eager = adsrt.load(trained_bundle, backend="torch", device="cuda:1").restore(degraded)
    graphed = adsrt.load(trained_bundle, backend="torch", device="cuda:1", cuda_graph=True)
    for _ in range(2):  # the second call replays
        out = graphed.restore(degraded)
    assert torch.cuda.current_device() == 0 and psnr(out, eager) > 50.0


# ------------------------------------------------------------------------------------------- local mode


def _windowed_bundle(make_bundle):
    from adsrt.arch import ClassifierConfig
    from adsrt.arch.classifier import build_classifier

    bundle = make_bundle(granularity="filter")
    bundle.classifier = ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2, window=48)
    bundle.classifier_state = build_classifier(bundle.classifier).state_dict()
    return bundle


def test_local_mode_with_a_constant_map_is_branch_mode(make_bundle, clean_photo):
    from adsrt.runtime.coefficient_map import CoefficientGrid

    bundle = _windowed_bundle(make_bundle)
    image = clean_photo[:90, :130]
    c = np.array([0.2, 0.5, 0.3])
    local = Restorer(bundle, RestorerConfig(backend="torch", mode="local"))
    out = local.restore_with_map(image, CoefficientGrid.constant(c))
    with torch.no_grad():  # the independent reference: the UM with the blended deltas written in
        ref = apply_ads(bundle.build_um(), bundle, torch.tensor(c, dtype=torch.float32))(to_tensor(image)[None])
    expected = (ref[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    forced = local.restore(image, force="blur")
    branch = Restorer(bundle, RestorerConfig(backend="torch", mode="branch", force="blur")).restore(image)
    assert np.abs(forced.astype(int) - branch.astype(int)).max() <= 1


def test_local_mode_classifies_windows_and_tiles_cut_the_map(make_bundle, clean_photo):
    bundle = _windowed_bundle(make_bundle)
    image = clean_photo[:120, :200]
    local = Restorer(bundle, RestorerConfig(backend="torch", mode="local", memory_limit_mb=0))
    whole = local.restore(image)
    assert abs(sum(local.last.c.values()) + local.last.probabilities["clean"] - 1) < 1e-5
    np.testing.assert_allclose(local.last.grid.mean(), list(local.last.c.values()), atol=1e-6)
    assert local.last.c == pytest.approx({d: local.last.probabilities[d] for d in local.degradations}, abs=1e-5)
    tiled = Restorer(bundle, RestorerConfig(backend="torch", mode="local", tile=64, tile_overlap=16)).restore(image)
    um_tiled = Restorer(bundle, RestorerConfig(backend="torch", mode="um", tile=64, tile_overlap=16)).restore(image)
    um = Restorer(bundle, RestorerConfig(backend="torch", mode="um", memory_limit_mb=0)).restore(image)
    # Tiling costs local mode no more than it costs the UM (NAFNet's context is the tile).
    assert psnr(tiled, whole) > psnr(um_tiled, um) - 1.0
    frames = list(local.stream([image, image]))
    assert len(frames) == 2 and local._grid_state is not None


def test_local_mode_refusals(make_bundle, clean_photo):
    from adsrt.runtime.coefficient_map import CoefficientGrid

    bundle = make_bundle()  # its classifier resizes whole frames (window 0)
    with pytest.raises(AdsrtError, match="windows"):
        Restorer(bundle, RestorerConfig(backend="torch", mode="local"))
    swap = Restorer(_windowed_bundle(make_bundle), RestorerConfig(backend="torch", mode="swap"))
    with pytest.raises(AdsrtError, match="mode='local'"):
        swap.restore_with_map(clean_photo, CoefficientGrid.constant(np.zeros(3)))
    local = Restorer(_windowed_bundle(make_bundle), RestorerConfig(backend="torch", mode="local"))
    with pytest.raises(AdsrtError, match="2 degradations"):
        local.restore_with_map(clean_photo, CoefficientGrid.constant(np.zeros(2)))
    with pytest.raises(AdsrtError, match=r"\[0, 1\]"):
        local.restore_with_map(clean_photo, CoefficientGrid.constant(np.array([0.5, 2.0, 0.0])))
    with pytest.raises(AdsrtError, match="CoefficientGrid"):
        local.restore_with_map(clean_photo, np.zeros((3, 1, 1)))


def test_a_context_classifier_gives_the_same_probabilities_on_every_path(photo):
    """classify() (the window mosaic, never the decoded frame), restore() whole and restore() tiled (the
    mosaic again) agree for a classifier with a context trunk."""
    from adsrt.arch import ClassifierConfig
    from adsrt.bundle import synthetic_bundle

    classifier = ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2, window=48, context_width=3)
    bundle = synthetic_bundle("nafnet-tiny", ("noise", "blur"), seed=2, classifier=classifier)
    torch.manual_seed(0)
    with torch.no_grad():  # a context trunk that matters: not the zero head training starts from
        for p in bundle.classifier_state.values():
            p.copy_(torch.randn_like(p) * 0.3)
    image = np.ascontiguousarray(photo[:150, :230])
    whole = adsrt.load(bundle, backend="torch", device="cpu", memory_limit_mb=0)
    classified = whole.classify(image)
    whole.restore(image)
    tiled = adsrt.load(bundle, backend="torch", device="cpu", tile=96, tile_overlap=24)
    tiled.restore(image)
    assert tiled.last.tiles > 1
    for p in (whole.last.probabilities, tiled.last.probabilities):
        assert p == pytest.approx(classified, abs=1e-5)
    assert max(classified.values()) < 0.999  # not saturated: a wrong context would show
