"""adsrt.bench.default_report (benchmarks/bench_default.py): confusion matrix, real-photo table, verdicts,
one end-to-end run (tiny bundle), and the thin script's command line."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from adsrt.bench import default_report
from adsrt.bundle import save_bundle
from adsrt.runtime.restorer import load
from adsrt.train.evaluate import evaluate_cases, synthetic_cases

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_default.py"
LOGGER = default_report.__name__


@pytest.fixture(scope="module")
def bench():
    return default_report


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two small real photos (scikit-image) in a folder."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee"):
        image = cv2.resize(getattr(data, name)(), (64, 48), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), image[:, :, ::-1])
    return folder


@pytest.fixture(scope="module")
def real(photos, tmp_path_factory) -> Path:
    """real/noise (2 photos, a degradation of the bundle) and real/fog (not one: skipped)."""
    root = tmp_path_factory.mktemp("real")
    for sub in ("noise", "fog"):
        (root / sub).mkdir()
        for path in photos.iterdir():
            (root / sub / path.name).write_bytes(path.read_bytes())
    return root


def test_confusion_matrix_counts_and_row_shares(bench):
    classes = ["noise", "blur", "clean"]
    result = bench.confusion_matrix(["blur", "noise", "noise", "noise", "blur"],
                                    ["blur", "noise", "clean", "noise", "noise"], classes)
    assert list(result["rows"]) == ["noise", "blur"]  # class order, not order of appearance
    assert result["rows"]["noise"] == {"n": 3, "counts": {"noise": 2, "blur": 0, "clean": 1},
                                       "shares": {"noise": 2 / 3, "blur": 0.0, "clean": 1 / 3}}
    assert result["rows"]["blur"]["counts"] == {"noise": 1, "blur": 1, "clean": 0}
    for row in result["rows"].values():
        assert sum(row["shares"].values()) == pytest.approx(1.0)


def test_confusion_diagonal_is_evaluate_accuracy(bench, make_bundle, photos):
    bundle = make_bundle(degradations=("noise", "blur"))
    specs = [spec for _, _, spec in bench.eval_specs(bundle.degradations)]
    assert specs == ["noise:25", "blur:2"]
    cases = synthetic_cases(photos, specs, seed=0)
    confusion = bench.classify_cases(bundle, cases, torch.device("cpu"), progress=False)
    report = evaluate_cases(bundle, cases, methods=("input",), device="cpu", progress=False)
    for spec, row in report["results"].items():
        name = spec.split(":")[0]
        assert confusion["rows"][name]["n"] == 2
        assert sum(confusion["rows"][name]["counts"].values()) == 2
        assert confusion["rows"][name]["shares"][name] == pytest.approx(row["dc_accuracy"])


def test_real_photos_match_the_runtime_and_skip_unknown_folders(bench, make_bundle, real, caplog):
    bundle = make_bundle(degradations=("noise", "blur"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        result = bench.classify_real(bundle, real, torch.device("cpu"), progress=False)
    assert result["skipped"] == ["fog"] and "skipping fog/" in caplog.text
    assert list(result["folders"]) == ["noise"]
    row = result["folders"]["noise"]
    assert row["n"] == 2 and sum(row["top_guesses"].values()) == 2
    assert row["hit_share"] == row["top_guesses"]["noise"] / 2
    restorer = load(bundle, backend="torch", device="cpu")
    runtime = [restorer.classify(cv2.imread(str(p))[:, :, ::-1].copy()) for p in sorted((real / "noise").iterdir())]
    assert row["mean_probability"] == pytest.approx(np.mean([p["noise"] for p in runtime]), abs=1e-6)
    # The distribution, not one number: p(noise) per photo (by name) and its quartiles.
    np.testing.assert_allclose(row["probabilities"], [p["noise"] for p in runtime], atol=1e-4)
    np.testing.assert_allclose(row["probability_quartiles"], np.percentile([p["noise"] for p in runtime],
                                                                           [25, 50, 75]), atol=1e-4)


def test_verdict_says_why_ads_does_not_beat_um(bench):
    def row(um, ads, oracle, acc):
        return {"n": 4, "psnr": {"input": 20.0, "um": um, "ads": ads, "ads_oracle": oracle, "im": None},
                "ssim": {"input": 0.5, "um": 0.8, "ads": 0.8, "ads_oracle": 0.8, "im": None}, "dc_accuracy": acc}

    report = {"results": {"noise:25": row(30.0, 30.5, 30.6, 1.0), "blur:2": row(25.0, 24.9, 25.3, 0.5),
                          "rain:3": row(28.0, 27.9, 27.8, 1.0)}}
    confusion = {"rows": {"blur": {"counts": {"noise": 0, "blur": 2, "rain": 0, "clean": 2}}}}
    noise, blur, rain = bench.ads_vs_um(report, confusion)
    assert noise["beats"] and not noise["why_not"]
    assert not blur["beats"] and "top guess is right on 50%" in blur["why_not"]
    assert "otherwise mostly clean" in blur["why_not"]
    report["results"]["blur:2"]["dc_mean_probability"] = {"noise": 0.0, "blur": 0.55, "rain": 0.05, "clean": 0.4}
    _, blur, _ = bench.ads_vs_um(report, confusion)
    assert "c is soft: mean p(blur) = 0.55, the rest on clean 0.40, rain 0.05" in blur["why_not"]
    assert not rain["beats"] and "deltas themselves do not beat the UM" in rain["why_not"]


def test_peer_averages_are_the_means_of_their_tasks(bench):
    for peer in bench.PEERS:
        if peer["average"] is not None:
            assert np.mean([psnr for _, psnr, _ in peer["results"]]) == pytest.approx(peer["average"][0], abs=0.01)


def test_end_to_end_writes_every_output_and_reuses_its_cache(bench, make_bundle, photos, real, tmp_path, caplog,
                                                             capsys):
    bundle = make_bundle(degradations=("noise", "blur"))
    bundle.metrics["clean_prior"] = {"bias": 1.5, "clean_recall_target": 0.9, "frames": 600,
                                     "before": {"clean": 0.75, "degraded": 0.9}, "after": {"clean": 0.91, "degraded": 0.85}}
    bundle_path = save_bundle(bundle, tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    argv = ["--bundle", str(bundle_path), "--eval", str(photos), "--real", str(real), "--out", str(out),
            "--device", "cpu", "--quiet"]
    assert bench.main(argv) == 0
    names = ("default_quality.csv", "default_confusion.csv", "default_real.csv", "default_report.md",
             "default_psnr_vs_params.png", "default_real.png", "default_eval.json")
    assert all((out / n).is_file() for n in names)
    rows = list(csv.DictReader((out / "default_quality.csv").open()))
    assert [r["degradation"] for r in rows] == ["noise", "blur", "mean"] and rows[0]["level"] == "25"
    assert rows[0]["im_psnr"] == ""  # no --targets: no IM score, never a guess
    report = (out / "default_report.md").read_text()
    assert "## Classifier confusion" in report and "| noise | 2 |" in report and "`fog/`" in report
    # Do no harm: the clean photos in, scored against themselves by the same evaluate_cases as adsrt eval.
    assert "## Do no harm" in report
    harm = evaluate_cases(make_bundle(degradations=("noise", "blur")), synthetic_cases(photos, ["clean"]),
                          methods=("um", "ads"), device="cpu", progress=False)["results"]["clean"]
    assert f"| clean | {harm['psnr']['um']:.2f} / {harm['ssim']['um']:.4f} | {harm['psnr']['ads']:.2f}" in report
    assert f"{round(100 * harm['dc_accuracy'])}%" in report.split("## Do no harm")[1].split("##")[0]
    assert "logit bias +1.5 for clean" in report and "(there: clean 75% -> 91%, degraded frames right 90% -> 85%)" in report
    assert "ADS > UM (PSNR) on every degradation" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger=LOGGER):
        bench.main(argv)
    assert "from the cache" in caplog.text


def test_the_thin_script_runs_the_package_main():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--max-images" in done.stdout
    # --out defaults to benchmarks/results next to the script (argparse may wrap the path: compare unwrapped)
    assert "".join(str(ROOT / "benchmarks" / "results").split()) in "".join(done.stdout.split())
