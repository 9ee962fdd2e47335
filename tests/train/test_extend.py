"""`adsrt train add`: extend a tiny bundle by one degradation (adsrt.train.extend), its refusals and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adsrt.arch import ClassifierConfig, build_classifier
from adsrt.bundle import load_bundle, save_bundle, synthetic_bundle
from adsrt.cli import main
from adsrt.errors import AdsrtError
from adsrt.train.extend import ExtendConfig, extend_bundle, widen_classifier_state


@pytest.fixture(scope="module")
def photos(photo_folder) -> Path:
    return photo_folder(80, 64)


def _source_bundle(path: Path, *, with_classifier: bool = True, context_width: int = 0) -> Path:
    """A tiny two-degradation bundle (noise, blur) with a windowed classifier and the provenance and metrics
    keys `train all` writes (its spec strings, selector, budget, per-degradation numbers)."""
    classifier = ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2, window=48, temperature=0.5,
                                  context_width=context_width)
    bundle = synthetic_bundle("nafnet-tiny", ("noise", "blur"), q=0.03, seed=3, delta_scale=0.05, perturb_um=0.05,
                              classifier=classifier if with_classifier else None)
    bundle.provenance.update(degradations=["noise:25", "blur"], selector="faig", budget="params", preset="tiny")
    bundle.metrics = {"um_val_psnr": 25.0, "classifier_accuracy": 0.5,
                      "per_degradation": {"noise": {"ads": 28.0, "delta_params": 10}, "blur": {"ads": 26.0}}}
    return save_bundle(bundle, path)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def extended(photos, tmp_path_factory):
    """noise,blur + rain with the tiny preset: (source path, its sha256, work folder, new path, metrics)."""
    root = tmp_path_factory.mktemp("extend")
    source = _source_bundle(root / "source.safetensors")
    before = _sha(source)
    out, work = root / "new.safetensors", root / "work"
    metrics = extend_bundle(ExtendConfig(bundle=str(source), degradation="rain", data=str(photos), work=str(work),
                                         out=str(out), preset="tiny", compile=False, progress=False))
    return source, before, work, out, metrics


def test_extend_keeps_the_um_and_old_deltas_byte_for_byte(extended):
    source_path, before, work, out, metrics = extended
    assert _sha(source_path) == before  # the source bundle is never written
    old, new = load_file(str(source_path)), load_file(str(out))
    kept = [n for n in old if n.startswith(("um/", "ads/"))]
    assert any(n.startswith("um/") for n in kept) and any(n.startswith("ads/noise/") for n in kept)
    for name in kept:
        a, b = old[name], new[name]
        assert a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes(), name
    assert any(n.startswith("ads/rain/") for n in new)

    source, bundle = load_bundle(source_path), load_bundle(out)
    assert bundle.degradations == ["noise", "blur", "rain"]
    assert bundle.classifier.num_classes == source.classifier.num_classes + 1 == 4
    c = bundle.classifier
    assert (c.width, c.depth, c.convs, c.window, c.input_size) == (4, 2, 1, 48, 32)  # the bundle's shape
    prov = bundle.provenance
    assert prov["extended_from"] == {"digest": source.digest(), "path": str(source_path.resolve()),
                                     "degradations": ["noise", "blur"]}
    assert prov["degradations"] == ["noise:25", "blur", "rain"]
    added = prov["added"]
    assert added["degradation"] == "rain" and added["preset"] == "tiny"
    assert set(added["seconds"]) == {"um", "target", "select", "deltas", "classifier"}
    assert added["params"]["delta"] == sum(ld.n_params for ld in bundle.deltas["rain"].values()) > 0
    assert added["params"]["classifier_added"] == c.num_params() - source.classifier.num_params() > 0
    per_d = bundle.metrics["per_degradation"]
    assert per_d["noise"] == {"ads": 28.0, "delta_params": 10} and per_d["blur"] == {"ads": 26.0}
    assert {"input", "um", "ads", "im", "masked_units", "delta_params", "eligible_units"} <= set(per_d["rain"])
    assert bundle.metrics["um_val_psnr"] == 25.0
    assert bundle.metrics["temperature_calibration"]["temperature"] == c.temperature
    assert metrics["added"]["seconds"]["calibrate"] >= 0 and metrics["per_degradation"]["rain"] == per_d["rain"]

    # The warm start: the old classes' rows of the head moved to their new places (clean last), and the
    # classifier stage started from it.
    from adsrt.train.classifier import load_classifier

    assert load_classifier(work / "classifier" / "model.safetensors")[2]["config"]["init"] == str(
        work / "classifier" / "init.safetensors")
    init = load_file(str(work / "classifier" / "init.safetensors"))
    for name, tensor in source.classifier_state.items():
        if name.startswith("head."):
            assert torch.equal(init[name][[0, 1, 3]], tensor)
        else:
            assert torch.equal(init[name], tensor)


def test_extended_bundle_restores_with_the_new_degradation_forced(extended):
    from adsrt.runtime.restorer import Restorer, RestorerConfig

    bundle = load_bundle(extended[3])
    restorer = Restorer(bundle, RestorerConfig(backend="torch", device="cpu", force="rain"))
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    restored = restorer.restore(image)
    assert restored.shape == image.shape and restored.dtype == np.uint8


def test_cli_add_reuses_the_work_folder(extended, photos, tmp_path, capsys):
    source, before, work, _, _ = extended
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("model.safetensors")}
    out = tmp_path / "again.safetensors"
    argv = ["-q", "train", "add", str(source), "--degradation", "rain", "--data", str(photos), "--work", str(work),
            "-o", str(out), "--preset", "tiny", "--no-compile"]
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("model.safetensors")} == stamps  # every stage skipped
    assert load_bundle(out).degradations == ["noise", "blur", "rain"] and _sha(source) == before
    text = capsys.readouterr().out
    assert "added rain" in text and f"bundle -> {out}" in text
    assert main(["train", "status", str(work)]) == 0  # `train status` reads an add work folder too
    status = capsys.readouterr().out
    assert "target rain" in status and "classifier" in status and "pending" not in status


def test_an_extended_bundle_extends_again(extended, photos, tmp_path):
    source, _, _, first, _ = extended
    out = tmp_path / "twice.safetensors"
    extend_bundle(ExtendConfig(bundle=str(first), degradation="haze", data=str(photos), work=str(tmp_path / "w"),
                               out=str(out), preset="tiny", compile=False, progress=False))
    bundle = load_bundle(out)
    assert bundle.degradations == ["noise", "blur", "rain", "haze"] and bundle.classifier.num_classes == 5
    prov = bundle.provenance
    assert prov["degradations"] == ["noise:25", "blur", "rain", "haze"]
    assert prov["extended_from"]["digest"] == load_bundle(first).digest() and prov["added"]["name"] == "haze"
    assert [e["extended_from"]["digest"] for e in prov["earlier_extensions"]] == [load_bundle(source).digest()]
    old, new = load_file(str(first)), load_file(str(out))
    assert all(old[n].numpy().tobytes() == new[n].numpy().tobytes() for n in old if not n.startswith("dc/"))


@pytest.mark.parametrize(
    ("degradation", "message"),
    [("noise", "already has the degradation 'noise'"), ("noise:15", "already has the degradation 'noise'"),
     ("fog", "unknown degradation 'fog'")],
)
def test_refusals_write_nothing(photos, tmp_path, degradation, message):
    source = _source_bundle(tmp_path / "source.safetensors")
    before = _sha(source)
    out, work = tmp_path / "new.safetensors", tmp_path / "work"
    with pytest.raises(AdsrtError, match=message):
        extend_bundle(ExtendConfig(bundle=str(source), degradation=degradation, data=str(photos), work=str(work),
                                   out=str(out), preset="tiny"))
    assert _sha(source) == before and not out.exists() and not work.exists()


def test_output_that_is_the_input_is_refused(photos, tmp_path):
    source = _source_bundle(tmp_path / "source.safetensors")
    before = _sha(source)
    (tmp_path / "sub").mkdir()
    for out in (source, tmp_path / "sub" / ".." / "source.safetensors", tmp_path / "link.safetensors"):
        if out.name == "link.safetensors":
            out.hardlink_to(source)
        with pytest.raises(AdsrtError, match="would replace the source bundle"):
            extend_bundle(ExtendConfig(bundle=str(source), degradation="rain", data=str(photos),
                                       work=str(tmp_path / "work"), out=str(out), preset="tiny"))
    assert _sha(source) == before and not (tmp_path / "work").exists()


def test_bundle_without_classifier_and_foreign_work_folders_are_refused(photos, tmp_path):
    bare = _source_bundle(tmp_path / "bare.safetensors", with_classifier=False)
    cfg = dict(degradation="rain", data=str(photos), out=str(tmp_path / "new.safetensors"), preset="tiny")
    with pytest.raises(AdsrtError, match="has no degradation classifier"):
        extend_bundle(ExtendConfig(bundle=str(bare), work=str(tmp_path / "w0"), **cfg))
    source = _source_bundle(tmp_path / "source.safetensors")
    other = tmp_path / "other"  # a `train add` work folder of another bundle
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"kind": "add", "key": {"source_digest": "0" * 64, "degradation": "rain",
                                                                      "preset": "tiny", "seed": 0}}))
    with pytest.raises(AdsrtError, match="another `train add` run .*source_digest"):
        extend_bundle(ExtendConfig(bundle=str(source), work=str(other), **cfg))
    (other / "run.json").write_text(json.dumps({"config": {}, "tag": "faig_kernel_q0.03_params"}))  # `train all`'s
    with pytest.raises(AdsrtError, match="an `adsrt train all` run"):
        extend_bundle(ExtendConfig(bundle=str(source), work=str(other), **cfg))
    assert not Path(cfg["out"]).exists() and not (other / "um").exists()


def test_cli_refusal_is_one_line_and_exit_1(photos, tmp_path, capsys):
    source = _source_bundle(tmp_path / "source.safetensors")
    before = _sha(source)
    argv = ["train", "add", str(source), "--degradation", "blur", "--data", str(photos), "--work", str(tmp_path / "w"),
            "-o", str(tmp_path / "new.safetensors"), "--preset", "tiny"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "already has the degradation 'blur'" in err and len(err.splitlines()) == 1
    assert _sha(source) == before and not (tmp_path / "new.safetensors").exists()


def test_a_classifier_with_context_is_extended_with_a_new_context(photos, tmp_path):
    """The windows are retrained warm-started from the bundle's (its context weights left out), then a
    context trunk of the bundle's width is trained on them; the new bundle's classifier is that one."""
    source = _source_bundle(tmp_path / "source.safetensors", context_width=2)
    work, out = tmp_path / "work", tmp_path / "new.safetensors"
    metrics = extend_bundle(ExtendConfig(bundle=str(source), degradation="rain", data=str(photos), work=str(work),
                                         out=str(out), preset="tiny", compile=False, progress=False))
    bundle = load_bundle(out)
    assert bundle.classifier.context_width == 2 and bundle.classifier.num_classes == 4
    assert "context" in metrics["added"]["seconds"]
    init = load_file(str(work / "classifier" / "init.safetensors"))
    assert init and not any(n.startswith("context_") for n in init)
    from adsrt.train.classifier import load_classifier

    _, windows, _ = load_classifier(work / "classifier" / "model.safetensors")
    # Frozen under the context; calibration then folds the clean prior into the head's bias for "clean".
    assert all(torch.equal(bundle.classifier_state[n], v) for n, v in windows.items() if n != "head.bias")
    shift = bundle.classifier_state["head.bias"] - windows["head.bias"]
    assert torch.allclose(shift, torch.tensor([0.0, 0.0, 0.0, bundle.metrics["clean_prior"]["bias"]]), atol=1e-6)
    assert json.loads((work / "context" / "report.json").read_text())["classes"] == ["noise", "blur", "rain", "clean"]


def test_widen_classifier_state_moves_rows_and_draws_a_fresh_one():
    old_config = ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2)
    old = build_classifier(old_config).state_dict()
    new_config = ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2)
    rng = torch.get_rng_state()
    state = widen_classifier_state(old, ["a", "b", "clean"], new_config, ["a", "b", "c", "clean"], seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    torch.manual_seed(5)
    fresh = build_classifier(new_config).state_dict()
    for key in ("head.weight", "head.bias"):
        assert torch.equal(state[key][[0, 1, 3]], old[key]) and torch.equal(state[key][2], fresh[key][2])
    assert all(torch.equal(state[k], old[k]) for k in old if not k.startswith("head."))
    build_classifier(new_config).load_state_dict(state)  # fits the wider classifier
    with pytest.raises(AdsrtError, match="distinct classes"):
        widen_classifier_state(old, ["a", "b", "clean"], new_config, ["a", "b", "clean"])
