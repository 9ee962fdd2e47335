"""``adsrt demo``: table, grids and demo.json on a tiny bundle, numbers recomputed independently, errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from adsrt.bundle import save_bundle
from adsrt.cli import main
from adsrt.cli.demo import COLUMNS, HEADER_HEIGHT, center_crop
from adsrt.imageio import read_image
from adsrt.metrics import psnr
from adsrt.runtime.restorer import Restorer, RestorerConfig
from adsrt.train.degradations import LEVELS, degrade, keyed_rng, parse_specs

DEGRADATIONS = ("noise", "blur", "rain")
PHOTOS = ("astronaut", "coffee", "chelsea")


_RUN: dict[str, tuple] = {}


def demo(bundle, out, *extra: str) -> int:
    return main(["-q", "demo", "--bundle", str(bundle), "--backend", "torch", "--out", str(out), *extra])


@pytest.fixture
def demo_run(make_bundle, tmp_path_factory):
    """One demo run on a tiny random bundle, shared by the tests (it is the slow part): exit code,
    stdout, output folder, bundle path."""
    if "run" not in _RUN:
        tmp = tmp_path_factory.mktemp("demo")
        path = save_bundle(make_bundle(degradations=DEGRADATIONS), tmp / "tiny.safetensors")
        out = tmp / "d"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = demo(path, out)
        _RUN["run"] = (code, stdout.getvalue(), out, path)
    return _RUN["run"]


def test_demo_prints_a_row_per_degradation_and_a_mean(demo_run):
    code, text, _, _ = demo_run
    assert code == 0
    lines = text.splitlines()
    for name in DEGRADATIONS:
        row = next(line for line in lines if line.startswith(name))
        assert f"{LEVELS[name].default:g}" in row and "/3" in row and "->" in row
    mean = next(line for line in lines if line.startswith("mean"))
    assert "/9" in mean and "->" in mean
    assert "backend: torch backend" in text and "ms per frame" in text


def test_demo_writes_a_grid_per_photo_and_json(demo_run):
    _, _, out, _ = demo_run
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"demo_{p}.png" for p in PHOTOS), "demo.json"])
    report = json.loads((out / "demo.json").read_text())
    for name in PHOTOS:
        h, w = report["photos"][name]
        assert (h, w) == center_crop(getattr(data, name)(), 256, 384).shape[:2]
        grid = read_image(out / f"demo_{name}.png")
        assert grid.shape == (HEADER_HEIGHT + len(DEGRADATIONS) * h, len(COLUMNS) * w, 3)
        # the clean column holds the clean crop, untouched below its label band
        clean = center_crop(getattr(data, name)(), 256, 384)
        last = grid[HEADER_HEIGHT + (len(DEGRADATIONS) - 1) * h:, (len(COLUMNS) - 1) * w:]
        np.testing.assert_array_equal(last[40:], clean[40:])
    assert len(report["rows"]) == len(PHOTOS) * len(DEGRADATIONS)
    assert [s["degradation"] for s in report["summary"]] == list(DEGRADATIONS)
    for s in report["summary"]:
        mine = [r for r in report["rows"] if r["degradation"] == s["degradation"]]
        assert s["count"] == 3 and s["correct"] == sum(r["guess"] == s["degradation"] for r in mine)
        assert s["psnr_um"] == pytest.approx(np.mean([r["psnr_um"] for r in mine]))
        assert s["gain"] == pytest.approx(s["psnr_ads"] - s["psnr_um"])
    for r in report["rows"]:
        assert r["guess"] == max(r["probabilities"], key=r["probabilities"].get)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["ms_per_frame"] > 0


def test_demo_numbers_match_an_independent_recomputation(demo_run):
    from adsrt.bundle import load_bundle

    _, _, out, path = demo_run
    report = json.loads((out / "demo.json").read_text())
    photo, name = "coffee", "rain"
    row = next(r for r in report["rows"] if r["photo"] == photo and r["degradation"] == name)
    image = data.coffee()
    top, left = (image.shape[0] - 256) // 2, (image.shape[1] - 384) // 2
    clean = np.ascontiguousarray(image[top:top + 256, left:left + 384])
    spec = f"{name}:{LEVELS[name].default:g}"
    assert row["spec"] == spec
    degraded = degrade(clean, parse_specs(spec), keyed_rng(0, photo, spec))
    expected = peak_signal_noise_ratio(clean, degraded, data_range=255)
    assert row["psnr_input"] == pytest.approx(expected, abs=1e-6)
    restored = Restorer(load_bundle(path), RestorerConfig(backend="torch", mode="um")).restore(degraded)
    assert row["psnr_um"] == pytest.approx(peak_signal_noise_ratio(clean, restored, data_range=255), abs=1e-6)
    assert row["psnr_um"] == pytest.approx(psnr(restored, clean, data_range=255), abs=1e-9)


def test_demo_seed_changes_the_inputs(demo_run, tmp_path, capsys):
    _, _, out, path = demo_run
    assert demo(path, tmp_path / "s", "--seed", "1") == 0
    first = json.loads((out / "demo.json").read_text())["rows"]
    second = json.loads((tmp_path / "s" / "demo.json").read_text())["rows"]
    assert [r["psnr_input"] for r in first] != [r["psnr_input"] for r in second]


def test_demo_out_is_a_file(demo_run, tmp_path, capsys):
    _, _, _, path = demo_run
    target = tmp_path / "taken"
    target.write_text("x")
    assert demo(path, target) == 1
    err = capsys.readouterr().err
    assert "adsrt demo: error:" in err and "not a folder" in err
    assert demo(path, target / "sub") == 1
    assert "cannot write the demo output" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert target.read_text() == "x"


def test_demo_on_the_shipped_default_model(tmp_path, capsys):
    """`make demo`'s run (torch backend): the real model restores every degradation, ADS at least as well as UM
    on average."""
    out = tmp_path / "d"
    assert main(["-q", "demo", "--backend", "torch", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for name in ("noise", "blur", "rain", "haze", "snow", "lowlight", "mean"):
        assert name in table
    report = json.loads((out / "demo.json").read_text())
    rows = report["rows"]
    assert len(rows) == 3 * 6
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean("psnr_um") > mean("psnr_input") + 2.0 and mean("psnr_ads") >= mean("psnr_um")
    assert sum(r["guess"] == r["degradation"] for r in rows) >= 12  # the classifier is right most of the time
    assert sorted(p.name for p in out.glob("*.png")) == ["demo_astronaut.png", "demo_chelsea.png", "demo_coffee.png"]


def test_demo_rejects_a_bundle_without_classifier(tmp_path, capsys, make_bundle):
    path = save_bundle(make_bundle(with_classifier=False), tmp_path / "b.safetensors")
    assert demo(path, tmp_path / "d") == 1
    assert "classifier" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
