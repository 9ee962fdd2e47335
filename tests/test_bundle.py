"""Bundle round trip, summary, and rejection of corrupt or foreign files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adsrt.bundle import FORMAT_VERSION, load_bundle, save_bundle, summarize
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
