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
from adsrt.train.evaluate import EvalConfig, evaluate, evaluate_cases, synthetic_cases


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
        assert set(row["psnr"]) == set(row["ssim"]) == {"input", "um", "ads", "ads_oracle", "im"}
        assert all(v is not None and np.isfinite(v) for v in row["psnr"].values())
        assert 0.0 <= row["dc_accuracy"] <= 1.0
        assert sum(row["dc_mean_probability"].values()) == pytest.approx(1.0, abs=1e-3)
    for metric in ("psnr", "ssim"):
        for method, value in report["mean"][metric].items():
            rows = [r[metric][method] for r in report["results"].values()]
            assert value == pytest.approx(np.mean(rows))

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
    """Haze is not one of the bundle's classes: no oracle, and the classifier is right only if it says clean."""
    bundle = make_bundle(degradations=("noise", "blur"))
    cases = synthetic_cases(photos, ("haze:0.5", "noise:10+blur:1"), seed=0, max_images=2)
    report = evaluate_cases(bundle, cases, progress=False)
    for key in ("haze:0.5", "noise:10+blur:1"):
        row = report["results"][key]
        assert row["n"] == 2 and row["psnr"]["ads_oracle"] is None and row["psnr"]["um"] is not None
    assert report["results"]["haze:0.5"]["dc_accuracy"] is not None
    assert report["results"]["noise:10+blur:1"]["dc_accuracy"] is None  # a mix has no single true class
    assert report["mean"]["psnr"]["ads_oracle"] is None and report["mean"]["psnr"]["ads"] is not None


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
