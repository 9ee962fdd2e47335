"""`adsrt eval`: scores checked against an independent recomputation (scikit-image PSNR, `apply_ads`)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from adsrt.ads import apply_ads
from adsrt.bundle import load_bundle, save_bundle
from adsrt.cli import main
from adsrt.errors import AdsrtError
from adsrt.train.data import to_tensor
from adsrt.train.degradations import degrade, keyed_rng
from adsrt.train.evaluate import METHODS, EvalConfig, evaluate, evaluate_cases, format_report, synthetic_cases


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(72, 56)


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny bundle trained end to end (seconds) and its work folder (targets for the IM column)."""
    root = tmp_path_factory.mktemp("trained")
    bundle_path, work = root / "tiny.safetensors", root / "work"
    assert main(["-q", "train", "all", "--data", str(photos), "--degradations", "noise,blur", "--out", str(bundle_path),
                 "--work", str(work), "--preset", "tiny"]) == 0
    return bundle_path, work


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(b, a, data_range=255))


def test_eval_clean_folder_matches_independent_scores(trained, photos, tmp_path, capsys, to_image):
    bundle_path, work = trained
    out = tmp_path / "eval.json"
    argv = ["-q", "eval", str(bundle_path), "--clean", str(photos), "--degradations", "noise:25,blur",
            "--seed", "3", "--targets", str(work), "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["protocol"] == "adsrt" and "seed 3" in report["data"]
    assert set(report["results"]) == {"noise:25", "blur"}
    for row in report["results"].values():
        assert row["n"] == 4
        assert set(row["psnr"]) == set(row["ssim"]) == {"input", "um", "ads", "ads_top1", "ads_oracle", "im", "im_best"}
        assert all(row["psnr"][m] is not None and np.isfinite(row["psnr"][m]) for m in METHODS)
        assert row["psnr"]["ads_top1"] is None and row["psnr"]["im_best"] is None  # mixture rows only
        assert row["components"] is None and row["im_best_name"] is None
        assert 0.0 <= row["dc_accuracy"] <= 1.0
        assert sum(row["dc_mean_probability"].values()) == pytest.approx(1.0, abs=1e-3)
    for metric in ("psnr", "ssim"):
        for method in METHODS:
            rows = [r[metric][method] for r in report["results"].values()]
            assert report["mean"][metric][method] == pytest.approx(np.mean(rows))
    assert report["mixtures_mean"] is None

    # Recompute the noise row's input, UM and oracle PSNR from scratch: same degradation draw
    # (seed, spec, file name), the UM from the bundle, the oracle through the reference apply_ads.
    bundle = load_bundle(bundle_path)
    um, oracle = bundle.build_um(), apply_ads(bundle.build_um(), bundle, [1.0, 0.0])
    expected = {"input": [], "um": [], "ads_oracle": []}
    for path in sorted(photos.glob("*.png")):
        clean = cv2.imread(str(path))[:, :, ::-1]
        noisy = degrade(clean, "noise:25", keyed_rng(3, "noise:25", path.name))
        with torch.no_grad():
            restored = {name: to_image(m(to_tensor(noisy)[None])[0]) for name, m in (("um", um), ("ads_oracle", oracle))}
        expected["input"].append(_psnr(noisy, clean))
        for name, image in restored.items():
            expected[name].append(_psnr(image, clean))
    # eval runs the runtime's frame path (x * (1/255) on decode, the fused update's weights), the reference
    # plain torch: float rounding may flip a few 8-bit pixels, ~1e-4 dB each; a wrong c or model is > 0.1 dB.
    for method, values in expected.items():
        assert report["results"]["noise:25"]["psnr"][method] == pytest.approx(np.mean(values), abs=2e-3), method
    text = capsys.readouterr().out
    assert "PSNR" in text and "SSIM" in text and "ads_oracle" in text and "mean" in text
    assert "ads_top1" not in text and "im_best" not in text and "mixtures mean" not in text  # no mixture rows


def test_eval_pairs_input_psnr_equals_adsrt_metrics(trained, photos, tmp_path, capsys):
    bundle_path, _ = trained
    degraded = tmp_path / "degraded"
    assert main(["-q", "degrade", str(photos), str(degraded), "--kind", "noise:15", "--seed", "1"]) == 0
    assert main(["-q", "metrics", str(degraded), str(photos), "--protocol", "peers", "--json", str(tmp_path / "m.json")]) == 0
    expected = json.loads((tmp_path / "m.json").read_text())["mean"]
    out = tmp_path / "eval.json"
    assert main(["-q", "eval", str(bundle_path), "--pairs", str(degraded), str(photos), "--label", "noise:15",
                 "--protocol", "peers", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["results"]["noise:15"]
    assert row["n"] == 4
    assert row["psnr"]["input"] == pytest.approx(expected["psnr"], abs=1e-9)
    assert row["ssim"]["input"] == pytest.approx(expected["ssim"], abs=1e-9)
    assert row["psnr"]["ads_oracle"] is not None and row["psnr"]["im"] is None  # no --targets
    capsys.readouterr()


def test_degradation_outside_the_bundle_has_no_oracle(make_bundle, photos):
    """Haze is not one of the bundle's classes: no oracle, and the classifier is right only if it says clean;
    a mixture of two unknown degradations has no oracle either."""
    bundle = make_bundle(degradations=("noise", "blur"))
    cases = synthetic_cases(photos, ("haze:0.5", "haze:0.5+rain:2"), seed=0, max_images=2)
    report = evaluate_cases(bundle, cases, progress=False)
    for key in ("haze:0.5", "haze:0.5+rain:2"):
        row = report["results"][key]
        assert row["n"] == 2 and row["psnr"]["ads_oracle"] is None and row["psnr"]["um"] is not None
        assert row["dc_accuracy"] is not None
    assert report["results"]["haze:0.5+rain:2"]["psnr"]["ads_top1"] is not None
    assert report["mean"]["psnr"]["ads_oracle"] is None and report["mean"]["psnr"]["ads"] is not None
    assert report["mixtures_mean"]["psnr"]["ads_oracle"] is None


def test_clean_spec_is_the_do_no_harm_row(make_bundle, photos, to_image):
    """``clean``: the photos as they are; UM scored against the photo itself, no input column, and the
    classifier right when it says clean."""
    from adsrt.metrics import score_pair
    from adsrt.runtime.restorer import load

    bundle = make_bundle(degradations=("noise", "blur"))
    cases = synthetic_cases(photos, ("clean",), max_images=2)
    assert all(np.array_equal(c.degraded, c.clean) and c.label == "clean" for c in cases)
    report = evaluate_cases(bundle, cases, methods=("input", "um", "ads"), progress=False)
    row = report["results"]["clean"]
    assert row["n"] == 2 and row["psnr"]["input"] is None
    um = load(bundle, backend="torch", device="cpu", mode="um")
    expected = np.mean([score_pair(um.restore(c.clean), c.clean)[0] for c in cases])
    assert row["psnr"]["um"] == pytest.approx(expected, abs=1e-6)
    swap = load(bundle, backend="torch", device="cpu")
    said_clean = [max(p := swap.classify(c.clean), key=p.get) == "clean" for c in cases]
    assert row["dc_accuracy"] == pytest.approx(np.mean(said_clean))


def test_evaluate_is_reproducible_and_seeded(make_bundle, photos, tmp_path):
    path = save_bundle(make_bundle(), tmp_path / "b.safetensors")
    cfg = dict(bundle=str(path), clean=str(photos), degradations=("rain",), max_images=2, progress=False)
    a, b = evaluate(EvalConfig(**cfg)), evaluate(EvalConfig(**cfg))
    c = evaluate(EvalConfig(**cfg, seed=1))
    assert a["results"] == b["results"]
    assert a["results"]["rain"]["psnr"]["input"] != c["results"]["rain"]["psnr"]["input"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clean", "{empty}"], "no images"),
        (["--clean", "{photos}", "--degradations", "fog"], "unknown degradation 'fog'"),
        (["--clean", "{photos}", "--protocol", "adsrt", "--targets", "{photos}"], "no targets/ folder"),
        (["--pairs", "{empty}", "{photos}", "--label", "noise"], "no images"),
        (["--pairs", "{photos}", "{photos}", "--label", "smog"], "unknown degradation 'smog'"),
        (["--clean", "{photos}", "--max-images", "0"], "max_images must be >= 1"),
    ],
)
def test_eval_bad_input_exits_1(make_bundle, photos, tmp_path, capsys, argv, message):
    path = save_bundle(make_bundle(), tmp_path / "b.safetensors")
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", photos=photos) for a in argv]
    assert main(["-q", "eval", str(path), *argv]) == 1
    assert message in capsys.readouterr().err


def test_eval_targets_of_another_architecture_are_refused(make_bundle, photos, tmp_path, capsys):
    from adsrt.arch import BACKBONES, build_backbone
    from adsrt.train.checkpoint import save_weights

    small = BACKBONES["nafnet-small"]
    save_weights(tmp_path / "work" / "targets" / "noise" / "model.safetensors", build_backbone(small).state_dict(),
                 {"kind": "target", "backbone": small.to_dict()})
    path = save_bundle(make_bundle(), tmp_path / "b.safetensors")  # nafnet-tiny
    assert main(["-q", "eval", str(path), "--clean", str(photos), "--targets", str(tmp_path / "work"),
                 "--max-images", "1"]) == 1
    assert "does not match the UM" in capsys.readouterr().err


def test_eval_requires_exactly_one_data_source(make_bundle, photos, tmp_path, capsys):
    path = save_bundle(make_bundle(), tmp_path / "b.safetensors")
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["eval", str(path), "--clean", str(photos), "--pairs", str(photos), str(photos)])
    capsys.readouterr()


def test_unreadable_photos_are_skipped_and_counted(make_bundle, photos, tmp_path, caplog):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "0_broken.png").write_bytes(b"not an image")
    cases = synthetic_cases(folder, ("noise:10",))
    assert sorted({c.name for c in cases}) == sorted(p.name for p in Path(photos).iterdir() if p.suffix == ".png")
    assert "skipped unreadable image" in caplog.text and "0_broken.png" in caplog.text
    (folder / "only").mkdir()
    (folder / "only" / "bad.png").write_bytes(b"junk")
    with pytest.raises(AdsrtError, match="none of its 1 images could be read"):
        synthetic_cases(folder / "only", ("noise:10",))


# ------------------------------------------------------------------------------------------- mixtures


def test_mixture_rows_top1_and_blended_oracle_match_independent_scores(make_bundle, photos, to_image):
    """A mixture row: ``ads_top1`` is the restorer forced to the classifier's argmax, ``ads_oracle`` the UM with
    c = 1/m on each component the bundle knows (reference ``apply_ads``), DC accuracy the top-1-in-components share."""
    from adsrt.runtime.restorer import load

    bundle = make_bundle(degradations=("noise", "blur", "rain"))
    specs = ("noise:15", "noise:15+rain:2", "blur:1.5+haze:1")  # the second fully known, the third half
    cases = synthetic_cases(photos, specs, seed=1, max_images=2)
    mix = next(c for c in cases if c.key == "noise:15+rain:2")
    assert mix.label is None and mix.components == ("noise", "rain")
    report = evaluate_cases(bundle, cases, device="cpu", progress=False)

    swap = load(bundle, backend="torch", device="cpu", memory_limit_mb=0)
    classes = [*bundle.degradations, "clean"]
    for key, components, known, truth in (
        ("noise:15+rain:2", ["noise", "rain"], ["noise", "rain"], {"noise", "rain"}),
        ("blur:1.5+haze:1", ["blur", "haze"], ["blur"], {"blur", "clean"}),  # haze unknown: clean is right
    ):
        row = report["results"][key]
        assert row["components"] == components
        assert row["psnr"]["im"] is None and row["psnr"]["im_best"] is None  # no targets
        top1, oracle, hits = [], [], []
        c = [1.0 / len(known) if name in known else 0.0 for name in bundle.degradations]
        blended = apply_ads(bundle.build_um(), bundle, c)
        for case in (x for x in cases if x.key == key):
            p = swap.classify(case.degraded)
            top = max(classes, key=p.get)
            hits.append(top in truth)
            top1.append(_psnr(swap.restore(case.degraded, force=top), case.clean))
            with torch.no_grad():
                oracle.append(_psnr(to_image(blended(to_tensor(case.degraded)[None])[0]), case.clean))
        assert row["psnr"]["ads_top1"] == pytest.approx(np.mean(top1), abs=1e-6)
        assert row["psnr"]["ads_oracle"] == pytest.approx(np.mean(oracle), abs=2e-3)  # runtime vs plain torch
        assert row["dc_accuracy"] == pytest.approx(np.mean(hits))
        assert row["psnr"]["ads"] is not None and row["psnr"]["um"] is not None
    # The mean covers the single rows only; the mixture rows have their own.
    single = report["results"]["noise:15"]
    assert report["mean"]["psnr"]["ads"] == pytest.approx(single["psnr"]["ads"])
    mixtures = [report["results"][k]["psnr"]["ads_top1"] for k in specs[1:]]
    assert report["mixtures_mean"]["psnr"]["ads_top1"] == pytest.approx(np.mean(mixtures))
    text = format_report(report)
    assert "ads_top1" in text and "mixtures mean" in text
    widths = {len(line) for line in text.splitlines()[1:5]}  # header and rows of the PSNR table align
    assert len(widths) == 1, text


def _fake_target(bundle, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """The UM's weights perturbed by Gaussian noise of ``scale``: a stand-in individual model."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in bundle.um_state.items()}


def test_im_best_is_the_component_im_with_the_best_mean(make_bundle, photos, tmp_path, to_image):
    from adsrt.arch import build_backbone
    from adsrt.train.checkpoint import save_weights

    bundle = make_bundle(degradations=("noise", "blur", "rain"))
    work = tmp_path / "work"
    states = {"noise": _fake_target(bundle, 0.03, 1), "rain": _fake_target(bundle, 0.002, 2)}
    for name, state in states.items():
        save_weights(work / "targets" / name / "model.safetensors", state,
                     {"kind": "target", "backbone": bundle.backbone.to_dict()})
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    report = evaluate(EvalConfig(bundle=str(path), clean=str(photos), degradations=("noise:15", "noise:15+rain:2"),
                                 targets=str(work), max_images=2, device="cpu", progress=False))
    row = report["results"]["noise:15+rain:2"]

    expected = {}
    for name, state in states.items():
        model = build_backbone(bundle.backbone)
        model.load_state_dict(state)
        values = []
        for case in synthetic_cases(photos, ("noise:15+rain:2",), max_images=2):
            with torch.no_grad():
                values.append(_psnr(to_image(model.eval()(to_tensor(case.degraded)[None])[0]), case.clean))
        expected[name] = np.mean(values)
    best = max(expected, key=expected.get)
    assert abs(expected["noise"] - expected["rain"]) > 0.01  # the test tells the two apart
    assert row["im_best_name"] == best
    assert row["psnr"]["im_best"] == pytest.approx(expected[best], abs=2e-3)
    assert row["im_component_psnr"] == pytest.approx(expected, abs=2e-3)
    assert row["psnr"]["im"] is None
    single = report["results"]["noise:15"]
    assert single["psnr"]["im"] is not None and single["psnr"]["im_best"] is None and single["im_best_name"] is None
    assert f"  {best}" in format_report(report)


def test_paired_mixture_label_names_its_components(make_bundle, photos):
    from adsrt.train.evaluate import paired_cases

    cases = paired_cases(photos, photos, label="noise:15+blur:1", max_images=1)
    assert cases[0].label is None and cases[0].components == ("noise", "blur") and cases[0].key == "noise:15+blur:1"
    one = paired_cases(photos, photos, label="blur/defocus:2", max_images=1)
    assert one[0].label == "blur" and one[0].components == ()
    same = synthetic_cases(photos, ("noise:10+noise:5",), max_images=1)  # one name twice: a single row
    assert same[0].label == "noise" and same[0].components == ()


def test_restore_with_a_coefficient_vector(make_bundle, photo):
    from adsrt.runtime.restorer import load

    bundle = make_bundle(degradations=("noise", "blur", "rain"))
    image = np.ascontiguousarray(photo[:48, :64])
    swap = load(bundle, backend="torch", device="cpu", memory_limit_mb=0)
    assert np.array_equal(swap.restore(image, c={"noise": 1.0}), swap.restore(image, force="noise"))
    assert np.array_equal(swap.restore(image, c={}), swap.restore(image, force="clean"))
    swap.restore(image, c={"noise": 0.5, "rain": np.float32(0.5)})
    assert swap.last.c == {"noise": 0.5, "blur": 0.0, "rain": 0.5} and swap.last.probabilities is None
    um = load(bundle, backend="torch", device="cpu", mode="um", memory_limit_mb=0)
    assert np.array_equal(um.restore(image, c={"noise": 1.0}), um.restore(image))  # um mode: c has no effect
    for c, message in (({"haze": 0.5}, "unknown degradations \\['haze'\\]"),
                       ({"clean": 1.0}, "unknown degradations \\['clean'\\]"),
                       ({"noise": float("nan")}, "finite number in \\[0, 1\\]"),
                       ({"noise": 1.5}, "finite number in \\[0, 1\\]"),
                       ({"noise": -0.1}, "finite number in \\[0, 1\\]"),
                       ({"noise": float("inf")}, "finite number in \\[0, 1\\]"),
                       ({"noise": "0.5"}, "finite number in \\[0, 1\\]"),
                       ({"noise": True}, "finite number in \\[0, 1\\]"),
                       ([0.5, 0.5, 0.0], "must be a dict")):
        with pytest.raises(AdsrtError, match=message):
            swap.restore(image, c=c)
    with pytest.raises(AdsrtError, match="force or c, not both"):
        swap.restore(image, force="noise", c={"noise": 1.0})
