"""ONNX export: every graph against an independent torch reference under ONNX Runtime, on real photos.

References: the UM from the bundle; ADS weights from :func:`adsrt.ads.apply_ads`; the classifier module.
Exports are slow (the dynamo exporter takes seconds per graph), so each graph is exported once per
module and shared.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from adsrt.ads import apply_ads
from adsrt.arch import CONTEXT_PREFIXES, ClassifierConfig
from adsrt.bundle import save_bundle, synthetic_bundle
from adsrt.cli import main
from adsrt.errors import AdsrtError, OutputError
from adsrt.export.onnx_export import OnnxExportConfig, export_onnx
from adsrt.export.parity import check_parity
from adsrt.export.tensorrt_ops import tensorrt_compatibility
from adsrt.imageio import write_image
from adsrt.runtime.onnx_graph import graph_metadata
from adsrt.runtime.refit import gather_refit_weights, refit_name, swap_rows

pytestmark = pytest.mark.slow

C1 = torch.tensor([[0.6, 0.3, 0.1]])
C2 = torch.tensor([[0.0, 0.2, 0.8]])


def _psnr(a, b, peak: float) -> float:
    """PSNR of two output arrays, by scikit-image (the independent reference)."""
    return peak_signal_noise_ratio(np.asarray(b, np.float64), np.asarray(a, np.float64), data_range=peak)


def _bundle(granularity: str = "kernel", q: float = 0.05):
    # Two convs per stage and a context trunk, as the bundled presets' classifiers have.
    classifier = ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2, convs=2, window=64, context_width=3)
    return synthetic_bundle("nafnet-tiny", ("noise", "blur", "rain"), q=q, granularity=granularity, seed=1,
                            delta_scale=0.1, perturb_um=0.05, classifier=classifier)


@pytest.fixture(scope="module")
def bundle():
    return _bundle()


@pytest.fixture(scope="module")
def images(photo):
    # the astronaut crop (192x256) and an odd-sized crop (padding to the multiple, classifier windows)
    return [photo, np.ascontiguousarray(photo[5:82, 17:118])]


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    cache: dict = {}

    def get(mode: str, precision: str = "fp32", fuse: bool = False, split_max: float = 0.5, which=None):
        b = which or bundle
        key = (id(b), mode, precision, fuse, split_max)
        if key not in cache:
            path = folder / f"{len(cache)}-{mode}-{precision}{'-fused' if fuse else ''}.onnx"
            cache[key] = export_onnx(b, path, OnnxExportConfig(mode=mode, precision=precision, fuse_classifier=fuse,
                                                               split_max=split_max))
        return cache[key]

    return get


def _x(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0


def _session(path, overridable: list[str] = ()) -> ort.InferenceSession:
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for name in overridable:  # the way a runtime overrides refittable weights
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, inits[name].data_type, list(inits[name].dims)))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _ads_model(bundle, c):
    return apply_ads(bundle.build_um(), bundle, c.reshape(-1)).eval()


# --------------------------------------------------------------------------------- parity with torch


def test_um_graph_matches_the_um(bundle, exported, images):
    precision, threshold = "fp32", 50.0
    result = exported("um", precision)
    session = _session(result.path)
    for image in images:
        x = _x(image)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            ref = bundle.build_um()(x).numpy()
        assert y.dtype == np.float32 and y.shape == ref.shape
        assert _psnr(y, ref, 1.0) > threshold


@pytest.mark.parametrize("precision, threshold", [("fp32", 50.0), ("fp16", 40.0)])
def test_swap_graph_with_refit_weights_matches_apply_ads(bundle, exported, images, precision, threshold):
    """Override the ads.<layer> initializers with the rows of apply_ads weights (what a refit writes):
    the graph must then compute the ADS model, for two different c."""
    result = exported("swap", precision)
    rows = swap_rows(bundle)
    assert set(result.refit_names.values()) == {r.name for r in rows.values()}
    assert any(not r.whole for r in rows.values()), "the test bundle should split some layers"
    session = _session(result.path, list(result.refit_names.values()))
    np_dtype = np.float16 if precision == "fp16" else np.float32
    outputs = []
    for c in (C1, C2):
        model = _ads_model(bundle, c)
        params = dict(model.named_parameters())
        feeds = {n: t.numpy().astype(np_dtype)
                 for n, t in gather_refit_weights({layer: params[layer].detach() for layer in rows}, rows).items()}
        x = _x(images[1])
        (y,) = session.run(None, {"x": x.numpy(), **feeds})
        with torch.no_grad():
            ref = model(x).numpy()
        assert _psnr(y, ref, 1.0) > threshold
        outputs.append(y)
    # the two c give visibly different outputs (so the refit weights are really used)
    assert _psnr(outputs[0], outputs[1], 1.0) < threshold - 5


def test_swap_graph_as_written_is_the_um(bundle, exported, images):
    session = _session(exported("swap").path)
    x = _x(images[0])
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert _psnr(y, bundle.build_um()(x).numpy(), 1.0) > 50


@pytest.mark.parametrize("precision, threshold", [("fp32", 50.0), ("fp16", 40.0)])
def test_branch_graph_takes_a_c_per_frame(bundle, exported, images, precision, threshold):
    session = _session(exported("branch", precision).path)
    x = _x(images[1])
    batch, cs = torch.cat([x, x.flip(3), x]), torch.cat([C1, C2, torch.zeros(1, 3)])
    (y,) = session.run(None, {"x": batch.numpy(), "c": cs.numpy()})
    with torch.no_grad():
        for i in range(3):
            ref = _ads_model(bundle, cs[i])(batch[i : i + 1]).numpy()
            assert _psnr(y[i : i + 1], ref, 1.0) > threshold


@pytest.mark.parametrize("precision, threshold", [("fp32", 50.0), ("fp16", 40.0)])
def test_local_graph_takes_a_coefficient_map(bundle, exported, images, precision, threshold):
    """A constant map of any size is apply_ads with that c (the independent reference); a varying map
    is the torch branch model with the same map (the map-mode ONNX equals torch)."""
    from adsrt.export.parity import ramp_map
    from adsrt.runtime.branch import to_branch

    session = _session(exported("local", precision).path)
    x = _x(images[1])
    branch = to_branch(bundle.build_um(), bundle)
    with torch.no_grad():
        reference = _ads_model(bundle, C1)(x).numpy()
        for size in [(1, 1), (4, 7), tuple(x.shape[-2:])]:
            (y,) = session.run(None, {"x": x.numpy(), "c": C1.view(1, 3, 1, 1).expand(1, 3, *size).numpy()})
            assert _psnr(y, reference, 1.0) > threshold, size
        cmap = ramp_map(C1, C2, 9, 12)
        (y,) = session.run(None, {"x": x.numpy(), "c": cmap.numpy()})
        assert _psnr(y, branch(x, cmap).numpy(), 1.0) > threshold
    report = check_parity(bundle, exported("local", precision).path, images)
    assert report.passed, report.describe()


def test_fused_graph_runs_the_classifier_inside(bundle, exported, images):
    session = _session(exported("branch", fuse=True).path)
    for image in images:
        x = _x(image)
        y, probs = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            p = torch.softmax(bundle.build_classifier()(x), dim=1)
            ref = _ads_model(bundle, p[0, :3])(x).numpy()
        np.testing.assert_allclose(probs, p.numpy(), atol=1e-5)
        assert _psnr(y, ref, 1.0) > 50


@pytest.mark.parametrize("context", [True, False])
def test_classifier_graph_matches_on_every_frame_size(bundle, exported, images, context):
    """Frames below, at and above the 64 px window (the exported graph has no shape branch), with and
    without a context trunk."""
    if not context:
        bundle = dataclasses.replace(bundle, classifier=dataclasses.replace(bundle.classifier, context_width=0),
                                     classifier_state={n: v for n, v in bundle.classifier_state.items()
                                                       if not n.startswith(CONTEXT_PREFIXES)})
    session = _session(exported("classifier", which=bundle).path)
    classifier = bundle.build_classifier()
    frames = [images[0], images[1], images[0][:64, :64], images[0][:40, :50], images[0][:64, :200]]
    for image in frames:
        x = _x(image)
        (logits,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, classifier(x).numpy(), atol=1e-5)


def test_dynamic_batch_and_sizes(bundle, exported, photo):
    session = _session(exported("um").path)
    um = bundle.build_um()
    for shape in [(1, 16, 16), (3, 40, 72), (2, 97, 131)]:
        x = torch.rand(shape[0], 3, shape[1], shape[2], generator=torch.Generator().manual_seed(sum(shape)))
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            assert _psnr(y, um(x).numpy(), 1.0) > 50


def test_filter_granularity_and_split_choices(exported, images):
    """Filter masks (few rows per layer) and every split setting: all layers whole, all split."""
    b = _bundle("filter", q=0.05)
    for split_max in (0.0, 1.0):
        result = exported("swap", split_max=split_max, which=b)
        rows = swap_rows(b, split_max=split_max)
        assert all(r.whole for r in rows.values()) == (split_max == 0.0)
        assert not any(r.whole for r in rows.values()) or split_max == 0.0
        report = check_parity(b, result.path, images[:1])
        assert report.passed and report.psnr > 50, report.describe()
    report = check_parity(b, exported("branch", which=b).path, images[:1])
    assert report.passed, report.describe()


# ----------------------------------------------------------------------------- names, metadata, TensorRT


def test_refit_names_metadata_and_conv_inputs(bundle, exported):
    result = exported("swap")
    model = onnx.load(str(result.path))
    meta = graph_metadata(model)
    assert meta["adsrt.mode"] == "swap" and meta["adsrt.bundle_digest"] == bundle.digest()
    assert json.loads(meta["adsrt.degradations"]) == ["noise", "blur", "rain"]
    refit = json.loads(meta["adsrt.refit"])
    assert refit == {layer: refit_name(layer) for layer in swap_rows(bundle)}
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    for layer, r in swap_rows(bundle).items():
        assert inits[refit[layer]] == r.shape and refit[layer] in conv_weights


def test_every_graph_passes_the_tensorrt_parser_check(exported):
    for args in [("um",), ("swap",), ("branch",), ("local",), ("classifier",), ("swap", "fp16"),
                 ("branch", "fp32", True)]:
        model = onnx.load(str(exported(*args).path))
        assert tensorrt_compatibility(model) == [], args


def test_the_tensorrt_check_catches_unsupported_graphs():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Resize", ["x", "", "s"], ["r"], mode="linear", antialias=1),
        helper.make_node("NonMaxSuppression", ["r"], ["n"]),
        helper.make_node("Pad", ["n", "p"], ["q"], mode="wrap"),
        helper.make_node("Custom", ["q"], ["y"], domain="my.ops"),
    ]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
             helper.make_tensor("p", TensorProto.DOUBLE, [1], [0.0])]
    graph = helper.make_graph(nodes, "bad", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("my.ops", 1)])
    problems = "\n".join(tensorrt_compatibility(model))
    for expected in ("opset 21", "custom operator domains", "antialias=1", "NonMaxSuppression",
                     "mode=wrap", "my.ops::Custom", "initializer p: data type 11"):
        assert expected in problems


# ---------------------------------------------------------------------------------------- bad input


def test_bad_export_requests(bundle, make_bundle, tmp_path):
    with pytest.raises(AdsrtError, match="needs --mode branch"):
        OnnxExportConfig(mode="swap", fuse_classifier=True).check()
    with pytest.raises(AdsrtError, match="precision"):
        OnnxExportConfig(precision="int8").check()
    with pytest.raises(OutputError, match="does not exist"):
        export_onnx(bundle, tmp_path / "missing" / "m.onnx", OnnxExportConfig(mode="um"))
    no_dc = make_bundle(with_classifier=False)
    with pytest.raises(AdsrtError, match="no degradation classifier"):
        export_onnx(no_dc, tmp_path / "c.onnx", OnnxExportConfig(mode="classifier"))
    no_deltas = make_bundle()
    no_deltas.deltas = {}
    for mode in ("swap", "branch"):
        with pytest.raises(AdsrtError, match="needs ADS deltas"):
            export_onnx(no_deltas, tmp_path / "d.onnx", OnnxExportConfig(mode=mode))
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_export_checks_parity_and_leaves_nothing_on_failure(bundle, tmp_path, monkeypatch, capsys):
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["-q", "export", str(path), "--mode", "classifier", "-o", str(out), "--check-count", "1"]) == 0
    printed = capsys.readouterr().out
    assert "max abs" in printed and "-> ok" in printed and "TensorRT 10 list" in printed and out.is_file()

    import adsrt.export.parity as parity

    real = parity.check_parity

    def failing(*args, **kwargs):
        report = real(*args, **kwargs)
        report.psnr = 10.0  # as if the graph computed something else
        return report

    monkeypatch.setattr(parity, "check_parity", failing)
    out2 = tmp_path / "bad.onnx"
    assert main(["-q", "export", str(path), "--mode", "um", "-o", str(out2), "--check-count", "1"]) == 1
    assert "parity check failed" in capsys.readouterr().err and not out2.exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_export_errors(bundle, tmp_path, capsys):
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    assert main(["-q", "export", str(path), "-o", str(tmp_path / "nowhere" / "m.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-q", "export", str(path), "--mode", "swap", "--fuse-classifier", "-o", str(tmp_path / "m.onnx")]) == 1
    assert "needs --mode branch" in capsys.readouterr().err
    assert main(["-q", "export", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert not (tmp_path / "m.onnx").exists()
    capsys.readouterr()
    from adsrt.runtime.tensorrt_engine import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:  # here: no TensorRT, so a clear error before any work, and no file
        assert main(["-q", "export", str(path), "--to", "tensorrt", "-o", str(tmp_path / "m.engine")]) == 1
        assert "tensorrt" in capsys.readouterr().err.lower() and not (tmp_path / "m.engine").exists()


def test_parity_report_thresholds():
    assert _psnr(np.zeros(4), np.zeros(4), 1.0) == math.inf
    assert abs(_psnr(np.zeros(4), np.full(4, 0.1), 1.0) - 20.0) < 1e-9


def test_cli_export_check_images_skip_unreadable_files(bundle, tmp_path, photo, capsys, caplog):
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a_broken.png").write_bytes(b"junk")
    write_image(images / "b.png", photo[:64, :64])
    out = tmp_path / "c.onnx"
    assert main(["-q", "export", str(path), "--mode", "classifier", "-o", str(out), "--check-images", str(images),
                 "--check-count", "1"]) == 0
    assert out.is_file() and "a_broken.png" in caplog.text
    (images / "b.png").unlink()
    assert main(["-q", "export", str(path), "--mode", "classifier", "-o", str(tmp_path / "d.onnx"), "--check-images",
                 str(images)]) == 1
    assert "none of its 1 images could be read" in capsys.readouterr().err and not (tmp_path / "d.onnx").exists()
