"""The UM recipe study end to end at toy size: equal CPU budget -> steps, snapshots scored, CSV and plot; resumed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from adsrt.bench import recipes
from adsrt.bench.recipes import Recipe


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(96, 80)


def test_study_scores_snapshots_and_resumes(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES", {"tiny-32": Recipe("tiny-32", "nafnet-tiny", 32, batch=4),
                                             "tiny-32-psnr": Recipe("tiny-32-psnr", "nafnet-tiny", 32, loss="psnr", batch=4)})
    argv = ["--train", str(photos), "--eval", str(photos), "--work", str(tmp_path / "work"), "--results",
            str(tmp_path), "--budget-minutes", "0.01", "--eval-images", "2", "--eval-crop", "48"]
    assert recipes.main(argv, default_results=tmp_path) == 0
    with (tmp_path / "recipes.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["recipe"] for r in rows} == {"tiny-32", "tiny-32-psnr"}
    for name in ("tiny-32", "tiny-32-psnr"):
        mine = [r for r in rows if r["recipe"] == name]
        steps = int(mine[0]["steps"])
        # the budget bought the steps: steps * CPU seconds per step ~ 0.6 s (at least the floor of 8 steps)
        # (the CSV rounds the seconds per step to 4 digits, so the quotient may land one step either side)
        assert abs(steps - max(8, 0.6 / float(mine[0]["cpu_s_per_step"]))) <= 1
        assert int(mine[-1]["snapshot_step"]) == steps and len(mine) >= 2
        for r in mine:
            per = [float(r[f"psnr_{d}"]) for d in recipes.BASE_DEGRADATIONS]
            assert float(r["psnr_mean"]) == pytest.approx(np.mean(per), abs=2e-3)
    assert (tmp_path / "recipes.png").stat().st_size > 10_000
    # A second run trains nothing and scores nothing again.
    stamp = (tmp_path / "recipes.csv").read_text()
    assert recipes.main(argv, default_results=tmp_path) == 0
    assert (tmp_path / "recipes.csv").read_text() == stamp


def test_score_is_the_psnr_of_the_restored_photos(photos, tmp_path):
    from adsrt.arch import build_backbone
    from adsrt.train.checkpoint import save_weights

    model = build_backbone("nafnet-tiny")  # untrained: the identity plus a small residual
    weights = save_weights(tmp_path / "m.safetensors", model.state_dict(), {"backbone": model.config.to_dict()})
    cases = recipes.eval_cases(str(photos), 2, 48, seed=0)
    assert len(cases) == 2 * len(recipes.BASE_DEGRADATIONS) and cases[0][2].shape == (48, 48, 3)
    scores = recipes.score(weights, cases)
    import torch

    from adsrt.train.data import to_tensor

    with torch.no_grad():
        expected = {}
        for name, degraded, clean in cases:
            out = model.eval()(to_tensor(degraded)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            expected.setdefault(name, []).append(
                peak_signal_noise_ratio(clean, (out * 255).round().astype(np.uint8), data_range=255))
    for name, values in expected.items():
        assert scores[name] == pytest.approx(np.mean(values), abs=1e-6)
