"""The mixtures benchmark: one row per pair with every column the evaluation scored."""

from __future__ import annotations

import csv

import cv2
import pytest

from adsrt.arch import ClassifierConfig
from adsrt.bench.mixtures import components, main
from adsrt.bundle import save_bundle, synthetic_bundle


def test_pairs_are_two_distinct_degradations():
    assert components("noise:15+rain:2") == ("noise", "rain")
    for bad in ("noise:15", "noise:15+noise:5"):
        with pytest.raises(SystemExit, match="two distinct"):
            components(bad)


@pytest.mark.slow
def test_a_run_writes_one_row_per_pair(tmp_path, photo):
    clean = tmp_path / "clean"
    clean.mkdir()
    cv2.imwrite(str(clean / "a.png"), photo[:64, :96, ::-1])
    b = synthetic_bundle("nafnet-tiny", ("noise", "rain", "blur"), perturb_um=0.05,
                         classifier=ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2, window=48))
    path = save_bundle(b, tmp_path / "b.safetensors")
    assert main(["--clean", str(clean), "--bundle", str(path), "--pairs", "noise:15+rain:2,blur:1.5+lowlight:2",
                 "--threads", "1", "-q"], default_results=tmp_path) == 0
    rows = {r["pair"]: r for r in csv.DictReader(open(tmp_path / "mixtures.csv"))}
    assert set(rows) == {"noise:15+rain:2", "blur:1.5+lowlight:2"}
    known = rows["noise:15+rain:2"]
    for column in ("input_psnr", "um_psnr", "ads_psnr", "ads_top1_psnr", "ads_oracle_psnr", "c_a", "c_b"):
        assert known[column] != "", column
    assert known["im_best_psnr"] == ""  # no --targets
    assert rows["blur:1.5+lowlight:2"]["c_b"] == ""  # the bundle has no lowlight class
