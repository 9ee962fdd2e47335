"""benchmarks/bench_classifier.py (adsrt.bench.classifier_transfer): classifiers side by side."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from adsrt.arch import ClassifierConfig
from adsrt.bench.classifier_transfer import main, swap_classifier
from adsrt.bundle import save_bundle, synthetic_bundle
from adsrt.errors import AdsrtError
from adsrt.imageio import list_images, read_image
from adsrt.runtime.restorer import Restorer, RestorerConfig
from adsrt.train.checkpoint import save_weights


def _bundle(seed: int, context_width: int = 0):
    classifier = ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2, window=48, context_width=context_width)
    bundle = synthetic_bundle("nafnet-tiny", ("noise", "rain"), seed=seed, classifier=classifier)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in bundle.classifier_state.values():
            p.copy_(torch.randn_like(p) * 0.5)
    return bundle


def test_rows_match_the_runtime_and_a_swapped_classifier(photo_folder, tmp_path):
    clean = photo_folder(96, 72)
    real = tmp_path / "real"
    (real / "rain").mkdir(parents=True)
    for p in list_images(clean)[:3]:
        shutil.copy(p, real / "rain" / p.name)
    bundle = _bundle(1)
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    other = _bundle(2, context_width=3)
    dc = tmp_path / "other.safetensors"
    save_weights(dc, other.classifier_state, {"kind": "classifier", "classifier": other.classifier.to_dict(),
                                               "classes": ["noise", "rain", "clean"]})
    argv = ["--bundle", str(path), "--eval", str(clean), "--real", str(real), "--classifier", f"ctx={dc}",
            "--results", str(tmp_path), "-q"]
    assert main(argv, default_results=tmp_path) == 0
    rows = {r["label"]: r for r in csv.DictReader((tmp_path / "classifier.csv").open())}
    assert set(rows) == {"bundle", "ctx"} and rows["ctx"]["context_width"] == "3"
    # The real-photo top-1 share, recounted through the runtime directly (the independent reference).
    for label, b in (("bundle", bundle), ("ctx", swap_classifier(bundle, dc))):
        restorer = Restorer(b, RestorerConfig(backend="torch", device="cpu", memory_limit_mb=0))
        probs = [restorer.classify(read_image(p)) for p in list_images(real / "rain")]
        hits = np.mean([max(p, key=p.get) == "rain" for p in probs])
        assert float(rows[label]["real_rain_top1"]) == pytest.approx(hits, abs=1e-4)
        assert float(rows[label]["real_rain_mean_p"]) == pytest.approx(np.mean([p["rain"] for p in probs]), abs=1e-4)
        assert rows[label]["n_eval"] == str(4 * 3)  # four photos: noise, rain and clean each
    assert rows["bundle"]["real_lowlight_top1"] == ""  # no such folder


def test_a_classifier_of_other_classes_is_refused(tmp_path):
    bundle = _bundle(1)
    dc = tmp_path / "dc.safetensors"
    save_weights(dc, bundle.classifier_state, {"kind": "classifier", "classifier": bundle.classifier.to_dict(),
                                                "classes": ["noise", "blur", "clean"]})
    with pytest.raises(AdsrtError, match="not the bundle's"):
        swap_classifier(bundle, dc)


def test_the_exposure_split_scores_dark_and_bright_low_light_photos_apart(photo_folder, tmp_path):
    from adsrt.imageio import write_image
    from adsrt.metrics import rgb_to_y

    clean = photo_folder(96, 72)
    low = tmp_path / "real" / "lowlight"
    low.mkdir(parents=True)
    photos = list_images(clean)
    for i, p in enumerate(photos):  # half of them three stops darker, half as they are
        image = read_image(p)
        write_image(low / f"{i}.png", (image // 8).astype(np.uint8) if i % 2 == 0 else image)
    classifier = ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2, window=48)
    bundle = synthetic_bundle("nafnet-tiny", ("noise", "lowlight"), seed=3, classifier=classifier)
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    argv = ["--bundle", str(path), "--eval", str(clean), "--real", str(tmp_path / "real"),
            "--exposure-reference", str(clean), "--results", str(tmp_path), "-q"]
    assert main(argv, default_results=tmp_path) == 0
    row = next(csv.DictReader((tmp_path / "classifier.csv").open()))
    reference = [np.median(rgb_to_y(read_image(p), 255.0)) / 255.0 for p in photos]
    assert float(row["dark_luma"]) == pytest.approx(np.percentile(reference, 10), abs=1e-4)
    restorer = Restorer(bundle, RestorerConfig(backend="torch", device="cpu", memory_limit_mb=0))
    lumas = {p: np.median(rgb_to_y(read_image(p), 255.0)) / 255.0 for p in list_images(low)}
    dark = [p for p, v in lumas.items() if v < float(row["dark_luma"])]
    assert len(dark) == int(row["real_lowlight_dark_n"])
    assert {low / f"{i}.png" for i in range(0, len(photos), 2)} <= set(dark)  # every darkened photo
    assert int(row["real_lowlight_bright_n"]) == len(photos) - len(dark)
    hits = [max(probs, key=probs.get) == "lowlight" for probs in (restorer.classify(read_image(p)) for p in dark)]
    assert float(row["real_lowlight_dark_top1"]) == pytest.approx(np.mean(hits), abs=1e-4)
