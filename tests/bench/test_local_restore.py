"""The spatially varying benchmark: composites put each degradation on its side, the oracle map is the
true share of each side, and a run on a tiny bundle writes its rows."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from adsrt.arch import ClassifierConfig
from adsrt.bench.local_restore import composite, left_weight, main, oracle_grid
from adsrt.bundle import save_bundle, synthetic_bundle
from adsrt.train.degradations import degrade, keyed_rng, parse_specs


def test_composites_put_each_degradation_on_its_side(clean_photo):
    w = left_weight(90, "halves")
    assert w[:45].min() == 1 and w[45:].max() == 0
    b = left_weight(90, "blend")
    assert b[:30].min() == 1 and b[60:].max() == 0 and (np.diff(b) <= 0).all()
    image, share = composite(clean_photo, "noise:25", "clean", "halves", 0, "x")
    noisy = degrade(clean_photo, parse_specs("noise:25"), keyed_rng(0, "noise:25", "left", "x"))
    mid = clean_photo.shape[1] // 2
    np.testing.assert_array_equal(image[:, :mid], noisy[:, :mid])
    np.testing.assert_array_equal(image[:, mid:], clean_photo[:, mid:])
    np.testing.assert_array_equal(share, left_weight(clean_photo.shape[1], "halves"))


def test_the_oracle_map_is_the_share_of_each_side():
    w = left_weight(64, "blend")
    grid = oracle_grid(["noise", "blur", "rain"], "rain:3", "noise:25", w, 48)
    m = grid.region(0, 0, 48, 64, step=1)
    np.testing.assert_allclose(m[2, 10], w, atol=0.07)  # rain on the left
    np.testing.assert_allclose(m[0, 10], 1 - w, atol=0.07)  # noise on the right
    assert np.abs(m[1]).max() == 0
    clean_right = oracle_grid(["noise", "blur", "rain"], "blur:2", "clean", w, 48).region(0, 0, 48, 64, step=1)
    np.testing.assert_allclose(clean_right.sum(0)[5], w, atol=0.07)


@pytest.mark.slow
def test_a_run_writes_quality_and_latency_rows(tmp_path, photo):
    clean = tmp_path / "clean"
    clean.mkdir()
    cv2.imwrite(str(clean / "a.png"), photo[:96, :128, ::-1])
    b = synthetic_bundle("nafnet-tiny", ("noise", "rain"), granularity="filter", perturb_um=0.05,
                         classifier=ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2, window=48))
    path = save_bundle(b, tmp_path / "b.safetensors")
    assert main(["--bundle", str(path), "--clean", str(clean), "--pairs", "rain:3|clean", "--layouts", "halves",
                 "--latency-backends", "torch", "--latency-size", "64x96", "--rounds", "2",
                 "--picture", str(tmp_path / "p.png"), "--picture-photo", str(clean / "a.png")],
                default_results=tmp_path) == 0
    rows = list(csv.DictReader(open(tmp_path / "local.csv")))
    assert len(rows) == 1 and rows[0]["pair"] == "rain:3|clean" and float(rows[0]["input_right"]) == 100.0
    modes = [r["mode"] for r in csv.DictReader(open(tmp_path / "local_latency.csv"))]
    assert modes == ["swap", "branch", "local"]
    assert cv2.imread(str(tmp_path / "p.png")) is not None
