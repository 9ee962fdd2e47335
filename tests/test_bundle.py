"""Bundle round trip, summary, and rejection of corrupt or foreign files."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adsrt.arch import (
    BACKBONES,
    ClassifierConfig,
    NAFNetConfig,
    build_backbone,
    build_classifier,
    count_params,
)
from adsrt.arch.config import MAX_PARAMS
from adsrt.bundle import FORMAT_VERSION, InputContract, load_bundle, save_bundle, summarize
from adsrt.errors import BundleError


def test_round_trip_preserves_everything(make_bundle, tmp_path):
    bundle = make_bundle(granularity="filter", q=0.05)
    path = save_bundle(bundle, tmp_path / "b.safetensors")
    loaded = load_bundle(path)
    assert loaded.header() == json.loads(json.dumps(bundle.header()))
    assert loaded.um_state.keys() == bundle.um_state.keys()
    for k, v in bundle.um_state.items():
        assert torch.equal(loaded.um_state[k], v)
    for k, v in bundle.classifier_state.items():
        assert torch.equal(loaded.classifier_state[k], v)
    assert loaded.deltas.keys() == bundle.deltas.keys()
    for d, per_layer in bundle.deltas.items():
        assert loaded.deltas[d].keys() == per_layer.keys()
        for layer, delta in per_layer.items():
            assert loaded.deltas[d][layer].units.dtype == torch.int64
            assert torch.equal(loaded.deltas[d][layer].units, delta.units)
            assert torch.equal(loaded.deltas[d][layer].values, delta.values)
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(loaded.build_um()(x), bundle.build_um()(x), rtol=0, atol=0)
        assert loaded.build_classifier()(x).shape == (1, 4)
    assert not list(tmp_path.glob("*.part"))  # no temporary file left behind


def test_bundle_without_classifier(make_bundle, tmp_path):
    loaded = load_bundle(save_bundle(make_bundle(with_classifier=False), tmp_path / "b.safetensors"))
    assert loaded.classifier is None
    with pytest.raises(BundleError, match="no degradation classifier"):
        loaded.build_classifier()


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_summary_counts_sparse_storage(make_bundle, granularity):
    q = 0.03
    bundle = make_bundle(granularity=granularity, q=q)
    s = summarize(bundle)
    layouts = bundle.unit_layouts()
    assert s.um_params == sum(p.numel() for p in bundle.build_um().parameters())
    assert s.eligible_units == sum(lay.n_units for lay in layouts.values())
    for d in bundle.degradations:
        assert s.masked_units[d] == max(1, int(q * s.eligible_units))
        assert s.delta_params[d] == sum(layouts[n].unit_numel * len(ld.units) for n, ld in bundle.deltas[d].items())
        # storage grows with |M_d|: at most about q of the conv weights per degradation
        conv_params = sum(lay.numel for lay in layouts.values())
        assert s.delta_params[d] <= 3 * q * conv_params
    assert s.overhead() == pytest.approx(s.total_delta_params / s.um_params)


# ------------------------------------------------------------------------------------------ bad bundles


def rewrite(path, out, *, tensors=None, header=None, metadata=None):
    """Write a modified copy of a bundle with safetensors directly (bypassing save_bundle's checks)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    t = load_file(str(path))
    if tensors:
        t = tensors(t)
    if header:
        h = json.loads(meta["adsrt"])
        header(h)
        meta = {"adsrt": json.dumps(h)}
    if metadata is not None:
        meta = metadata
    save_file(t, str(out), metadata=meta)
    return out


def first_delta_key(t, suffix):
    return next(k for k in sorted(t) if k.startswith("ads/") and k.endswith(suffix))


def _set(t, key, value):
    t[key] = value
    return t


def _del(t, key):
    del t[key]
    return t


CORRUPTIONS = {
    "wrong version": (dict(header=lambda h: h.update(format_version=FORMAT_VERSION + 1)), "format version"),
    "foreign format": (dict(header=lambda h: h.update(format="something-else")), "not an adsrt bundle"),
    "no metadata": (dict(metadata={}), "not an adsrt bundle"),
    "bad header json": (dict(metadata={"adsrt": "{nope"}), "not valid JSON"),
    "unknown arch": (dict(header=lambda h: h["backbone"].update(arch="unet")), "unknown backbone"),
    "bad config": (dict(header=lambda h: h["backbone"]["config"].update(width="wide")), "bad bundle header"),
    "q out of range": (dict(header=lambda h: h.update(q=0.9)), "q must be in"),
    "bad granularity": (dict(header=lambda h: h.update(granularity="pixel")), "granularity"),
    "classes mismatch": (dict(header=lambda h: h.update(degradations=["noise", "blur"])), "deltas for degradations not in"),
    "classifier classes": (dict(header=lambda h: h["classifier"].update(num_classes=5)), "5 classes"),
    "wrong um shape": (
        dict(tensors=lambda t: _set(t, "um/intro.weight", torch.zeros(3, 3, 3, 3))),
        "shape",
    ),
    "missing um tensor": (dict(tensors=lambda t: _del(t, "um/intro.weight")), "missing"),
    "nan in um": (
        dict(tensors=lambda t: _set(t, "um/intro.bias", torch.full_like(t["um/intro.bias"], float("nan")))),
        "NaN",
    ),
    "index out of range": (
        dict(tensors=lambda t: _set(t, first_delta_key(t, "/units"), t[first_delta_key(t, "/units")] + 10**6)),
        "out of range",
    ),
    "negative index": (
        dict(tensors=lambda t: _set(t, first_delta_key(t, "/units"), t[first_delta_key(t, "/units")] - 10**6)),
        "out of range",
    ),
    "nan in delta": (
        dict(tensors=lambda t: _set(t, first_delta_key(t, "/delta"), t[first_delta_key(t, "/delta")] * float("nan"))),
        "finite",
    ),
    "delta shape": (
        dict(tensors=lambda t: _set(t, first_delta_key(t, "/delta"), torch.cat([t[first_delta_key(t, "/delta")]] * 2, 1))),
        "shape",
    ),
    "half a delta": (dict(tensors=lambda t: _del(t, first_delta_key(t, "/delta"))), "lacks its delta"),
    "unknown layer": (
        dict(tensors=lambda t: _set(t, "ads/noise/nope.weight/units", torch.zeros(1, dtype=torch.int32))
             and _set(t, "ads/noise/nope.weight/delta", torch.zeros(1, 9))),
        "no eligible convolution",
    ),
    "foreign tensor": (dict(tensors=lambda t: _set(t, "extra", torch.zeros(1))), "unexpected tensor"),
    "float units": (
        dict(tensors=lambda t: _set(t, first_delta_key(t, "/units"), t[first_delta_key(t, "/units")].float())),
        "integer",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_bundles_are_rejected(make_bundle, tmp_path, case):
    good = save_bundle(make_bundle(), tmp_path / "good.safetensors")
    kwargs, message = CORRUPTIONS[case]
    bad = rewrite(good, tmp_path / "bad.safetensors", **kwargs)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)


def test_unsorted_units_are_rejected(make_bundle, tmp_path):
    good = save_bundle(make_bundle(q=0.2), tmp_path / "good.safetensors")

    def flip(t):
        key = next(k for k in sorted(t) if k.endswith("/units") and len(t[k]) > 1)
        t[key] = t[key].flip(0).contiguous()
        t[key.replace("/units", "/delta")] = t[key.replace("/units", "/delta")].flip(0).contiguous()
        return t

    with pytest.raises(BundleError, match="sorted and unique"):
        load_bundle(rewrite(good, tmp_path / "bad.safetensors", tensors=flip))


@pytest.mark.parametrize("keep", [0, 7, 100, -1000])
def test_truncated_and_garbage_files_are_rejected(make_bundle, tmp_path, keep):
    data = save_bundle(make_bundle(), tmp_path / "good.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(BundleError):
        load_bundle(bad)


def test_missing_file(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "none.safetensors")


def test_invalid_bundle_is_never_written(make_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(make_bundle(), path)
    before = path.read_bytes()
    broken = make_bundle()
    layer = next(iter(broken.deltas["noise"]))
    broken.deltas["noise"][layer].values[0, 0] = float("nan")
    with pytest.raises(BundleError, match="finite"):
        save_bundle(broken, path)
    assert path.read_bytes() == before  # the old bundle survives a failed save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]


# ------------------------------------------------------------------------------ hostile headers (issue 18)


def _config(**changes):
    return lambda h: h["backbone"]["config"].update(changes)


def _classifier(**changes):
    return lambda h: h["classifier"].update(changes)


HOSTILE = {
    # Each was a hang, an unbounded allocation or a foreign exception before the header was bounded.
    "middle_blocks 1e6": (_config(middle_blocks=1_000_000), "middle_blocks must be <= 64"),
    "middle_blocks 2**31": (_config(middle_blocks=2**31), "middle_blocks"),
    "enc_blocks 2**31": (_config(enc_blocks=[2**31, 1], dec_blocks=[1, 1]), r"enc_blocks\[0\]"),
    "levels": (_config(enc_blocks=[1] * 11, dec_blocks=[1] * 11), "at most 10 entries"),
    "huge width": (_config(width=10**6), "width must be <= 1024"),
    "many parameters": (_config(width=1024, enc_blocks=[1] * 4, dec_blocks=[1] * 4), "parameters"),
    "many blocks": (_config(enc_blocks=[64] * 4, dec_blocks=[1] * 4), "NAFBlocks"),
    "dw_expand": (_config(dw_expand=2**31), "dw_expand"),
    "classifier grid": (_classifier(grid=10**6), "grid must be <= 16"),
    "classifier input_size": (_classifier(input_size=10**6), "input_size must be <= 1024"),
    "classifier views": (_classifier(grid=16, input_size=1024, window=64), "pixels"),
    "classifier crops": (_classifier(grid=16, input_size=32, window=2048), "pixels"),
    "classifier depth 2**31": (_classifier(depth=2**31), "depth"),
    "classifier convs 2**31": (_classifier(convs=2**31), "convs"),
    "classifier width": (_classifier(width=10**6), "width"),
    "classifier classes": (_classifier(num_classes=10**9), "num_classes"),
    "classifier window": (_classifier(window=10**9), "window"),
    "classifier context_width": (_classifier(context_width=10**6), "context_width"),
    # 100.6M parameters without the context trunk (within bounds), 201.2M with it.
    "classifier context parameters": (_classifier(width=128, context_width=128, depth=6, input_size=128, window=128),
                                      "parameters"),
    "tiny temperature": (_classifier(temperature=1e-300), "temperature"),
    "bool temperature": (_classifier(temperature=True), "temperature"),
    "degradation int": (lambda h: h.update(degradations=[1, "blur", "rain"]), "degradations must be a list of names"),
    "degradation list": (lambda h: h.update(degradations=[["noise"], "blur", "rain"]), "degradations"),
    "degradations dict": (lambda h: h.update(degradations={"noise": 1}), "degradations"),
    "backbone str": (lambda h: h.update(backbone="nafnet"), "backbone must be an object"),
    "backbone list": (lambda h: h.update(backbone=[1]), "backbone must be an object"),
    "arch int": (lambda h: h["backbone"].update(arch=1), "unknown backbone architecture 1"),
    "config list": (lambda h: h["backbone"].update(config=[1]), "backbone config"),
    "classifier str": (lambda h: h.update(classifier="small"), "classifier config"),
    "value_range hi == lo": (lambda h: h["input"].update(value_range=[0.5, 0.5]), "value_range"),
    "value_range inverted": (lambda h: h["input"].update(value_range=[1.0, 0.0]), "value_range"),
    "value_range short": (lambda h: h["input"].update(value_range=[0.0]), "value_range"),
    "value_range huge": (lambda h: h["input"].update(value_range=[0, 10**400]), "value_range"),
    "value_range bool": (lambda h: h["input"].update(value_range=[False, True]), "value_range"),
    "pad_multiple huge": (lambda h: h["input"].update(pad_multiple=2**40), "pad_multiple"),
    "pad_multiple float": (lambda h: h["input"].update(pad_multiple=16.0), "pad_multiple"),
    "channel_order list": (lambda h: h["input"].update(channel_order=["RGB"]), "channel_order"),
    "input str": (lambda h: h.update(input="RGB"), "input must be an object"),
    "input extra key": (lambda h: h["input"].update(gamma=2.2), "input must have the keys"),
    "format_version true": (lambda h: h.update(format_version=True), "format version True"),
    "format_version float": (lambda h: h.update(format_version=1.0), "format version 1.0"),
    "granularity list": (lambda h: h.update(granularity=["kernel"]), "granularity must be a string"),
    "q bool": (lambda h: h.update(q=True), "q must be a finite number"),
    "q string": (lambda h: h.update(q="0.03"), "q must be a finite number"),
    "q huge int": (lambda h: h.update(q=10**400), "q must be a finite number"),
    "provenance list": (lambda h: h.update(provenance=[["a", 1]]), "provenance must be an object or null"),
    "metrics str": (lambda h: h.update(metrics="ab"), "metrics must be an object or null"),
    "unknown field": (lambda h: h.update(extra=1), "unknown fields"),
    "missing field": (lambda h: h.pop("input"), r"missing fields \['input'\]"),
    "deep provenance": (lambda h: h.update(provenance={"a": json.loads("[" * 40 + "]" * 40)}), "nested more than"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_quickly(make_bundle, tmp_path, case):
    good = save_bundle(make_bundle(), tmp_path / "good.safetensors")
    change, message = HOSTILE[case]
    bad = rewrite(good, tmp_path / "bad.safetensors", header=change)
    start = time.perf_counter()
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(bad)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in str(info.value)  # one line naming the problem


def _raw_header(text):
    return {"adsrt": '{"format": "adsrt-bundle", "format_version": 1, "provenance": ' + text + "}"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # RecursionError inside json.loads
        ("NaN", "non-standard constant NaN"),
        ("-Infinity", "non-standard constant -Infinity"),
        ("1e400", "overflows a float"),
        ("9" * 5000, "not valid JSON"),  # more digits than Python converts
    ],
)
def test_header_json_that_python_parses_badly_is_refused(make_bundle, tmp_path, text, message):
    good = save_bundle(make_bundle(), tmp_path / "good.safetensors")
    bad = rewrite(good, tmp_path / "bad.safetensors", metadata=_raw_header(text))
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(bad)
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


def test_float8_weights_are_refused(make_bundle, tmp_path):
    # torch cannot test float8_e4m3fn for NaN (isfinite is not implemented): refuse the dtype.
    good = save_bundle(make_bundle(), tmp_path / "good.safetensors")
    bad = rewrite(good, tmp_path / "bad.safetensors",
                  tensors=lambda t: _set(t, "um/intro.bias", t["um/intro.bias"].to(torch.float8_e4m3fn)))
    with pytest.raises(BundleError, match="dtype torch.float8_e4m3fn"):
        load_bundle(bad)


def test_half_precision_weights_still_load(make_bundle, tmp_path):
    good = save_bundle(make_bundle(), tmp_path / "good.safetensors")
    half = rewrite(good, tmp_path / "half.safetensors",
                   tensors=lambda t: {k: v.half() if k.startswith("um/") else v for k, v in t.items()})
    assert load_bundle(half).um_state["intro.weight"].dtype == torch.float16


def test_input_contract_validates_on_construction():
    assert InputContract(value_range=(0, 1)).value_range == (0.0, 1.0)
    for bad in ((0.5, 0.5), (1.0, 0.0), (0.0, float("nan")), (0.0, 1e9)):
        with pytest.raises(BundleError, match="value_range"):
            InputContract(value_range=bad)
    with pytest.raises(BundleError, match="pad_multiple"):
        InputContract(pad_multiple=True)
    with pytest.raises(BundleError, match="channel_order"):
        InputContract(channel_order="RGBA")


def test_save_refuses_non_string_degradations(make_bundle, tmp_path):
    bundle = make_bundle()
    bundle.degradations = [1, "blur", "rain"]
    with pytest.raises(BundleError, match="bad degradation name 1"):
        save_bundle(bundle, tmp_path / "b.safetensors")


def test_bounds_admit_published_nafnets():
    # The largest official NAFNets (SIDD width 64: 116M parameters; GoPro: 28 blocks in one level) fit.
    sidd = NAFNetConfig(width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2))
    gopro = NAFNetConfig(width=64, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1))
    assert sidd.num_params() == 115_982_915 < MAX_PARAMS
    assert gopro.num_params() < MAX_PARAMS
    assert ClassifierConfig(num_classes=7, input_size=96, width=24, depth=4, convs=2, window=96).num_params() < MAX_PARAMS


def test_parameter_estimates_match_the_built_networks():
    rng = random.Random(0)
    configs = list(BACKBONES.values())
    for _ in range(20):
        levels = rng.randint(0, 4)
        configs.append(NAFNetConfig(
            in_channels=rng.randint(1, 4), width=2 * rng.randint(1, 6), middle_blocks=rng.randint(0, 2),
            enc_blocks=tuple(rng.randint(0, 2) for _ in range(levels)),
            dec_blocks=tuple(rng.randint(0, 2) for _ in range(levels)),
            dw_expand=rng.randint(1, 3), ffn_expand=rng.randint(1, 3)))
    for config in configs:
        assert config.num_params() == count_params(build_backbone(config)), config
    for _ in range(20):
        depth = rng.randint(1, 4)
        config = ClassifierConfig(num_classes=rng.randint(1, 9), input_size=2**depth * rng.randint(1, 3),
                                  width=rng.randint(1, 8), depth=depth, convs=rng.randint(1, 3))
        assert config.num_params() == count_params(build_classifier(config)), config
