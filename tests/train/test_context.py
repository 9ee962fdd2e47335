"""The classifier's context trunk (adsrt.train.context): trained on whole frames with the windows frozen."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from adsrt.arch import build_classifier
from adsrt.cli import main
from adsrt.errors import AdsrtError
from adsrt.train.checkpoint import load_weights, save_weights
from adsrt.train.classifier import load_classifier
from adsrt.train.context import ContextTrainConfig, _pool_datasets, train_context
from adsrt.train.degradations import DegradationSpec


@pytest.fixture(scope="module")
def photos(photo_folder):
    return photo_folder(200, 160)


@pytest.fixture(scope="module")
def window_classifier(photos, tmp_path_factory):
    """A window classifier of noise, lowlight and clean trained for two steps: it knows next to nothing."""
    out = tmp_path_factory.mktemp("dc")
    assert main(["-q", "train", "classifier", "--data", str(photos), "--out", str(out), "--degradations",
                 "noise,lowlight", "--input-size", "32", "--width", "4", "--depth", "2", "--crop-size", "48",
                 "--steps", "2", "--batch-size", "4", "--val-samples", "6", "--workers", "0"]) == 0
    return out / "model.safetensors"


def _config(photos, window_classifier, out, **kw) -> ContextTrainConfig:
    base = dict(data=str(photos), classifier=str(window_classifier), out=str(out), context_width=8, frames=160,
                val_frames=48, window_share=0.25, frame_range=(64, 160), steps=300, batch_size=32, lr=1e-2,
                workers=0, progress=False)
    return ContextTrainConfig(**{**base, **kw})


def test_context_learns_what_the_windows_do_not_see(photos, window_classifier, tmp_path):
    """Low light darkens the whole frame: the context trunk, seeing it resized, learns it where the
    (untrained) windows cannot; the windows' weights are unchanged and the head started at zero."""
    cfg = _config(photos, window_classifier, tmp_path / "ctx")
    report = train_context(cfg)
    frames = report["frames"]
    assert frames["with_context"]["n"] == 36 and report["windows"]["with_context"]["n"] == 12
    # Noise hardly survives the resize; darkness does.
    assert frames["with_context"]["accuracy"] > frames["windows_only"]["accuracy"]
    lowlight = {part: frames[part]["per_class_accuracy"]["lowlight"] for part in ("windows_only", "with_context")}
    assert lowlight["with_context"] >= max(0.8, lowlight["windows_only"] + 0.3)
    config, state, header = load_classifier(tmp_path / "ctx" / "model.safetensors")
    assert config.context_width == 8 and header["classes"] == ["noise", "lowlight", "clean"]
    _, base_state, _ = load_classifier(window_classifier)
    assert all(torch.equal(state[n], v) for n, v in base_state.items())  # the windows are frozen
    assert set(state) - set(base_state) == {n for n in state if n.startswith("context_")}
    assert json.loads((tmp_path / "ctx" / "report.json").read_text())["classes"] == header["classes"]

    # The pool holds what the classifier computes: a held-out frame made again from its key gives the stored
    # view (to uint8 rounding), and the classifier's forward is the stored window logits plus the context
    # trunk's logits of the stored view.
    model = build_classifier(config).eval()
    model.load_state_dict(state)
    pool, _ = load_weights(tmp_path / "ctx" / "val_pool.safetensors")
    specs = [DegradationSpec("noise"), DegradationSpec("lowlight")]
    settings = {"clean_fraction": 1 / 3, "nuisance": True, "dim_weather": 0.3, "val_fraction": 0.1}
    frames_set, _ = _pool_datasets(cfg, specs, config.window, settings)["val_pool"][0]
    for i in (0, 5):
        x = frames_set[(0, i)]["input"][None]
        assert min(x.shape[-2:]) > config.window  # a frame seen through its grid, not one window
        with torch.no_grad():
            view = pool["thumbs"][i : i + 1].float() / 255
            assert (model.context_input(x) - view).abs().max() <= 0.5 / 255 + 1e-6
            torch.testing.assert_close(model(x)[0], pool["logits"][i] + model.context_logits(view)[0],
                                       atol=2e-3, rtol=1e-3)

    # A rerun reuses both pools and the finished checkpoint; other settings are refused, not mixed in.
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ctx").glob("*pool.safetensors")}
    train_context(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ctx").glob("*pool.safetensors")} == stamps
    with pytest.raises(AdsrtError, match="another context run"):
        train_context(dataclasses.replace(cfg, lr=1e-3))
    # The data settings come from the window classifier; another one makes the pools again.
    assert header["settings"] == {"clean_fraction": 1 / 3, "nuisance": True, "dim_weather": 0.3, "val_fraction": 0.1}
    with pytest.raises(AdsrtError, match="another context run"):
        train_context(dataclasses.replace(cfg, dim_weather=0.0))
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in (tmp_path / "ctx").glob("*pool.safetensors"))


def test_context_refuses_a_whole_frame_classifier(photos, window_classifier, tmp_path):
    config, state, header = load_classifier(window_classifier)
    whole = tmp_path / "whole.safetensors"
    save_weights(whole, state, {**header, "classifier": {**config.to_dict(), "window": 0}})
    with pytest.raises(AdsrtError, match="window 0"):
        train_context(_config(photos, whole, tmp_path / "ctx"))
    with pytest.raises(AdsrtError, match="window_share"):
        train_context(_config(photos, window_classifier, tmp_path / "ctx", window_share=1.0))


def test_train_context_command(photos, window_classifier, tmp_path, capsys):
    argv = ["-q", "train", "context", "--data", str(photos), "--classifier", str(window_classifier), "--out",
            str(tmp_path / "ctx"), "--context-width", "2", "--frames", "24", "--val-frames", "8", "--steps", "3",
            "--batch-size", "4", "--workers", "0", "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out frames: accuracy" in out and "with context" in out
    assert json.loads((tmp_path / "r.json").read_text())["frames"]["with_context"]["n"] == 6
