"""Building TensorRT engines (:mod:`adsrt.export.tensorrt_build`), everywhere (no TensorRT, no GPU): builder
flags from a version or from a namespace shaped like the ``tensorrt`` module, ``build_engine`` on a fake
TensorRT API, and the refit names against the conv initializers of the exported swap graph."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from adsrt.errors import BackendError
from adsrt.export.tensorrt_build import build_engine, builder_flags, onnx_conv_initializers
from adsrt.runtime import tensorrt_engine as engine_module
from adsrt.runtime.refit import refit_name, swap_rows
from adsrt.runtime.tensorrt_engine import EngineConfig

# ---------------------------------------------------------------------------------------------------- flags


def _namespace(*, individual: bool = True, mark: bool = True, refit: bool = True, tf32: bool = True):
    flags = SimpleNamespace(**{name: object() for name, on in
                               (("REFIT", refit), ("REFIT_INDIVIDUAL", individual), ("TF32", tf32)) if on})
    network = SimpleNamespace(**({"mark_weights_refittable": lambda name: True} if mark else {}))
    return SimpleNamespace(BuilderFlag=flags, INetworkDefinition=network)


@pytest.mark.parametrize(("version", "expected"), [("10.3.0", ["REFIT_INDIVIDUAL"]), ("11.4.1", ["REFIT_INDIVIDUAL"]),
                                                   ("10.2", ["REFIT_INDIVIDUAL"]), ("10.1.0", ["REFIT"]),
                                                   ((10, 0), ["REFIT"])])
def test_swap_flags_from_version(version, expected):
    assert list(builder_flags("swap", "fp32", version).set) == expected


@pytest.mark.parametrize("mode", ["branch", "um", "classifier"])
@pytest.mark.parametrize("api", ["10.3.0", "11.0", "10.0"])
def test_constant_engines_set_no_flag(mode, api):
    assert list(builder_flags(mode, "fp32", api).set) == []
    assert builder_flags(mode, "fp32", _namespace()) == builder_flags(mode, "fp32", _namespace(individual=False))


def test_swap_flags_from_namespace():
    plan = builder_flags("swap", "fp32", _namespace())
    assert plan.set == ("REFIT_INDIVIDUAL",) and plan.mark_refittable and plan.clear == ("TF32",)
    # a TensorRT with the flag but without INetworkDefinition.mark_weights_refittable cannot mark names
    assert list(builder_flags("swap", "fp32", _namespace(mark=False)).set) == ["REFIT"]
    assert not builder_flags("swap", "fp32", _namespace(individual=False)).mark_refittable
    assert list(builder_flags("swap", "fp32", _namespace(individual=False)).set) == ["REFIT"]
    with pytest.raises(BackendError, match="refittable engine"):
        builder_flags("swap", "fp32", _namespace(individual=False, refit=False))


def test_precision_flags():
    assert builder_flags("branch", "fp16", _namespace()).clear == ()  # fp16 lives in the graph: no flag
    assert builder_flags("branch", "fp32", _namespace()).clear == ("TF32",)
    assert builder_flags("branch", "fp32", _namespace(tf32=False)).clear == ()  # a TensorRT without TF32
    # never a weak-typing flag: those are gone in TensorRT 11
    for mode in ("swap", "branch", "um", "classifier"):
        for precision in ("fp32", "fp16"):
            names = builder_flags(mode, precision, _namespace())
            assert not {"FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS"} & set(names.set + names.clear)
    with pytest.raises(BackendError):
        builder_flags("swap", "bf16", _namespace())
    with pytest.raises(BackendError):
        builder_flags("fast", "fp32", _namespace())


# ------------------------------------------------------------------------------- build_engine on a fake API


class _Enum:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def _fake_tensorrt(inputs: dict[str, tuple[int, ...]], weights: set[str], *, parse_ok: bool = True,
                   build_ok: bool = True):
    """A stand-in for the parts of the tensorrt module build_engine uses; records what it is asked."""
    calls: dict[str, list] = {"flags_set": [], "flags_cleared": [], "marked": [], "profile": {}, "pool": []}

    class ILogger:
        def __init__(self):
            pass

    class Network:
        num_inputs = len(inputs)

        def __init__(self, flags):
            calls["network_flags"] = flags

        def get_input(self, i):
            name = list(inputs)[i]
            return SimpleNamespace(name=name, shape=inputs[name])

        def mark_weights_refittable(self, name):
            calls["marked"].append(name)
            return name in weights

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"][name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            calls["pool"].append((pool, size))

        def add_optimization_profile(self, profile):
            return 0

        def set_flag(self, flag):
            calls["flags_set"].append(flag.name)

        def clear_flag(self, flag):
            calls["flags_cleared"].append(flag.name)

        def create_timing_cache(self, data):
            calls["timing_in"] = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return bytearray(b"serialized-plan") if build_ok else None

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, i):
            return SimpleNamespace(desc=lambda: "Unsupported op FancyConv", node=lambda: 7)

    flags = SimpleNamespace(**{n: _Enum(n, i) for i, n in enumerate(["TF32", "REFIT", "REFIT_INDIVIDUAL"])})
    trt = SimpleNamespace(
        __version__="10.3.0", ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser, BuilderFlag=flags,
        INetworkDefinition=Network, NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=_Enum("ST", 1)),
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
    )
    return trt, calls


@pytest.fixture
def fake_trt(monkeypatch):
    def install(*args, **kwargs):
        trt, calls = _fake_tensorrt(*args, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(engine_module, "tensorrt_unavailable_reason", lambda: None)
        monkeypatch.setattr(engine_module, "_LOGGER", None)
        monkeypatch.setattr(engine_module, "_RUNTIME", None)
        return trt, calls

    return install


def test_build_engine_swap_on_fake_api(fake_trt, tmp_path):
    trt, calls = fake_trt({"x": (-1, 3, -1, -1)}, {"ads.a", "ads.b"})
    onnx = tmp_path / "swap.onnx"
    onnx.write_bytes(b"graph")
    config = EngineConfig(min_shape=(1, 16, 16), opt_shape=(1, 64, 96), max_shape=(2, 128, 160), workspace_mb=64,
                          builder_optimization_level=2, timing_cache=str(tmp_path / "timing.cache"))
    assert build_engine(onnx, config, ["ads.a", "ads.b"]) == b"serialized-plan"
    assert calls["network_flags"] == 1 << 1  # STRONGLY_TYPED, by name
    assert calls["profile"] == {"x": ((1, 3, 16, 16), (1, 3, 64, 96), (2, 3, 128, 160))}
    assert calls["flags_set"] == ["REFIT_INDIVIDUAL"] and calls["flags_cleared"] == ["TF32"]
    assert calls["marked"] == ["ads.a", "ads.b"]
    assert calls["pool"] == [("workspace", 64 << 20)] and calls["config"].builder_optimization_level == 2
    assert (tmp_path / "timing.cache").read_bytes() == b"timing-cache"
    with pytest.raises(BackendError, match=r"no weights named \['ads.zzz'\]"):
        build_engine(onnx, config, ["ads.a", "ads.zzz"])
    with pytest.raises(BackendError, match="only swap engines are refittable"):
        build_engine(onnx, EngineConfig(mode="um"), ["ads.a"])


def test_build_engine_branch_on_fake_api(fake_trt, tmp_path):
    trt, calls = fake_trt({"x": (-1, 3, -1, -1), "c": (-1, 3)}, set())
    onnx = tmp_path / "branch.onnx"
    onnx.write_bytes(b"graph")
    config = EngineConfig(mode="branch", precision="fp16", min_shape=(1, 16, 16), opt_shape=(2, 32, 32),
                          max_shape=(4, 64, 64))
    build_engine(onnx, config)
    assert calls["profile"]["c"] == ((1, 3), (2, 3), (4, 3))
    assert calls["flags_set"] == [] and calls["flags_cleared"] == [] and calls["marked"] == []


def test_build_engine_reports_parser_and_builder_failures(fake_trt, tmp_path):
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"graph")
    fake_trt({"x": (-1, 3, -1, -1)}, set(), parse_ok=False)
    with pytest.raises(BackendError, match="Unsupported op FancyConv"):
        build_engine(onnx, EngineConfig(mode="um"))
    fake_trt({"x": (-1, 3, -1, -1)}, set(), build_ok=False)
    with pytest.raises(BackendError, match="failed to build the um engine"):
        build_engine(onnx, EngineConfig(mode="um"))
    fake_trt({"x": (-1, 3, -1, -1), "c": (-1, 3)}, set())
    with pytest.raises(BackendError, match="inputs"):  # a branch graph given for a um engine
        build_engine(onnx, EngineConfig(mode="um"))


# --------------------------------------------------------------------------------------------- name mapping


@pytest.mark.slow  # one dynamo ONNX export: ~15 s on a 2-core CPU
def test_refit_names_are_the_conv_initializers_of_the_swap_graph(bundle, tmp_path):
    try:
        from adsrt.export.onnx_export import OnnxExportConfig, export_onnx
    except ImportError as exc:
        pytest.skip(f"adsrt.export.onnx_export is not importable yet ({exc})")
    pytest.importorskip("onnx")
    result = export_onnx(bundle, tmp_path / "swap.onnx", OnnxExportConfig(mode="swap", precision="fp32"))
    convs = onnx_conv_initializers(result.path)
    rows = swap_rows(bundle)
    ads = {name: spec for name, spec in convs.items() if name.startswith("ads.")}
    assert sorted(ads) == sorted(r.name for r in rows.values())
    for r in rows.values():
        assert ads[r.name] == ("FLOAT", r.shape)
    from adsrt.export.tensorrt_build import read_onnx_metadata

    meta = read_onnx_metadata(result.path)
    assert json.loads(meta["adsrt.refit"]) == {layer: refit_name(layer) for layer in rows}
    assert meta["adsrt.mode"] == "swap" and meta["adsrt.bundle_digest"] == bundle.digest()
