"""`adsrt train all --preset tiny` end to end on CPU, the classifier stage, and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adsrt.bundle import load_bundle, summarize
from adsrt.cli import main


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(80, 64)


def test_train_all_tiny_end_to_end(photos, tmp_path, capsys):
    work, bundle_path = tmp_path / "work", tmp_path / "model.safetensors"
    argv = ["-q", "train", "all", "--data", str(photos), "--degradations", "noise,blur,rain", "--out",
            str(bundle_path), "--work", str(work), "--preset", "tiny"]
    assert main(argv) == 0
    bundle = load_bundle(bundle_path)
    assert bundle.degradations == ["noise", "blur", "rain"] and bundle.q == 0.03 and bundle.granularity == "kernel"
    assert bundle.classifier is not None and bundle.classifier.num_classes == 4
    summary = summarize(bundle)
    for d in bundle.degradations:
        assert 0 < summary.overhead(d) <= 0.03  # the default budget: at most q of the parameters per degradation
        m = bundle.metrics["per_degradation"][d]
        assert {"input", "um", "ads", "im"} <= set(m) and m["masked_units"] == summary.masked_units[d]
    assert bundle.provenance["preset"] == "tiny" and bundle.provenance["degradations"] == ["noise", "blur", "rain"]
    assert 0.0 <= bundle.metrics["classifier_accuracy"] <= 1.0
    report = json.loads((work / "classifier" / "report.json").read_text())
    assert len(report["confusion"]) == 4 and sum(map(sum, report["confusion"])) == report["n"]

    assert bundle.classifier.window == 48  # the tiny preset's classifier crops: frames are viewed at that scale

    # Rerun with the paper's unit budget: UM, targets and classifier are reused, only masks and deltas are new.
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("model.safetensors")}
    assert main([*argv, "--budget", "units"]) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("model.safetensors")} == stamps
    bundle = load_bundle(bundle_path)
    summary = summarize(bundle)
    for d in bundle.degradations:
        assert summary.masked_units[d] == round(0.03 * summary.eligible_units)  # q of the eligible units
    assert "bundle ->" in capsys.readouterr().out
    assert bundle.classifier.context_width == 2  # the tiny preset's context trunk, trained after the windows
    assert bundle.metrics["classifier_frame_accuracy"] is not None

    # A window classifier retrained under a finished context: refused, not shipped with the old windows.
    from adsrt.train.checkpoint import load_weights, save_weights

    state, header = load_weights(work / "classifier" / "model.safetensors")
    save_weights(work / "classifier" / "model.safetensors", {n: v + 0.01 for n, v in state.items()}, header)
    assert main(argv) == 1
    assert "trained on another window classifier" in capsys.readouterr().err


def test_classifier_stage_reports_accuracy_and_confusion(photos, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    argv = ["-q", "train", "classifier", "--data", str(photos), "--out", str(tmp_path / "dc"), "--degradations",
            "noise,rain", "--input-size", "32", "--width", "4", "--depth", "2", "--crop-size", "48", "--steps", "4",
            "--batch-size", "6", "--val-samples", "12", "--workers", "0", "--convs", "2", "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["classes"] == ["noise", "rain", "clean"] and report["n"] == 12
    assert sum(map(sum, report["confusion"])) == 12
    assert 0.0 <= report["ece"] <= 1.0
    from adsrt.train.classifier import load_classifier

    config, _, header = load_classifier(tmp_path / "dc" / "model.safetensors")
    assert config.convs == 2 and header["config"]["nuisance"] is True
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "clean" in out


def test_expected_calibration_error_against_a_hand_count() -> None:
    from adsrt.train.classifier import expected_calibration_error

    # Four samples at confidence 0.9 (3 right: accuracy 0.75) and two at 0.6 (both right): ECE
    # = 4/6 * |0.75 - 0.9| + 2/6 * |1.0 - 0.6| = 0.1 + 0.1333.
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    true = torch.tensor([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(probs, true) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--degradations", "noise,fog"], "unknown degradation 'fog'"),
        (["--q", "0.7"], "q must be in (0, 0.5]"),
    ],
)
def test_train_all_bad_input_exits_1(photos, tmp_path, capsys, extra, message):
    argv = ["-q", "train", "all", "--data", str(photos), "--out", str(tmp_path / "b.safetensors"), "--work",
            str(tmp_path / "w"), "--preset", "tiny", *extra]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_empty_data_folder_exits_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["train", "um", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--backbone", "nafnet-tiny"]
    assert main(argv) == 1
    assert "no images" in capsys.readouterr().err
