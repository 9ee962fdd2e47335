"""TensorRT engines: build configuration, builder flags, the engine cache and the tensorrt backend.

Two groups:

- tests that run everywhere (no TensorRT, no GPU): config validation, flag decisions from a version or
  from a namespace shaped like the ``tensorrt`` module, cache keys, stale/corrupt cache entries with an
  injected builder and deserializer, refit-name mapping against the exported swap graph;
- ``gpu`` tests that build real engines from a tiny synthetic bundle and compare them with the torch
  reference (:func:`adsrt.ads.apply_ads`); skipped, with the reason, where TensorRT or CUDA is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adsrt.arch import ClassifierConfig
from adsrt.bundle import synthetic_bundle
from adsrt.errors import AdsrtError, BackendError
from adsrt.export import engine_cache as engine_cache_module
from adsrt.export.artifacts import tensorrt_graph
from adsrt.export.engine_cache import (
    CorruptEngineError,
    EngineCache,
    EngineCacheKey,
    build_or_load_engine,
    check_onnx_matches,
    default_cache_root,
)
from adsrt.export.tensorrt_build import (
    build_engine,
    builder_flags,
    onnx_conv_initializers,
)
from adsrt.runtime import tensorrt_engine as engine_module
from adsrt.runtime.refit import refit_name, swap_rows
from adsrt.runtime.tensorrt_backend import TensorRTBackend, refit_rows_from_sizes
from adsrt.runtime.tensorrt_engine import (
    EngineConfig,
    EngineEnvironment,
    has_fast_fp16,
    tensorrt_unavailable_reason,
    version_tuple,
)

TRT_REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and CUDA: {TRT_REASON}")
DEGRADATIONS = ("noise", "blur", "rain")
ENV = EngineEnvironment("10.3.0", "Orin", "8.7")


@pytest.fixture(scope="module")
def bundle():
    """A tiny bundle (nafnet-tiny) with random deltas on 5% of the units and a small classifier."""
    classifier = ClassifierConfig(num_classes=len(DEGRADATIONS) + 1, input_size=32, width=4, depth=2)
    return synthetic_bundle("nafnet-tiny", DEGRADATIONS, q=0.05, granularity="kernel", seed=0, delta_scale=0.1,
                            perturb_um=0.05, classifier=classifier)


def _key(**changes) -> EngineCacheKey:
    fields = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="fp32",
                  mode="swap", profile=((1, 16, 16), (1, 64, 64), (1, 128, 128)), bundle_digest="ab" * 32,
                  onnx_sha256="cd" * 32)
    fields.update(changes)
    return EngineCacheKey(**fields)


# ------------------------------------------------------------------------------------ availability


def test_unavailable_reason_is_explicit():
    assert TensorRTBackend.unavailable_reason() == TRT_REASON
    if TRT_REASON is not None:
        assert "tensorrt" in TRT_REASON.lower() or "cuda" in TRT_REASON.lower()


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT is available here")
def test_backend_and_build_refuse_cleanly_without_tensorrt(bundle, tmp_path):
    with pytest.raises(BackendError, match="cannot run here"):
        TensorRTBackend(bundle, cache_dir=tmp_path)
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="TensorRT is unavailable"):
        build_engine(onnx, EngineConfig())
    assert not (tmp_path / "engines").exists()


def test_unavailable_reason_checks_version_then_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="8.6.1"))
    assert "too old" in tensorrt_unavailable_reason()
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA" in tensorrt_unavailable_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tensorrt_unavailable_reason() is None


@pytest.mark.parametrize(("text", "expected"), [("10.3.0.30", (10, 3, 0, 30)), ("11.4.1", (11, 4, 1)),
                                                ("10.8.0rc1", (10, 8, 0)), ("10.2", (10, 2)), ((10, 3), (10, 3))])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_version_tuple_rejects_garbage():
    with pytest.raises(AdsrtError):
        version_tuple("unknown")


@pytest.mark.parametrize(("capability", "fast"), [((8, 7), True), ((7, 2), True), ((9, 0), True), ((6, 1), False),
                                                  ((6, 2), True), ((5, 3), True), ((5, 2), False), ((6, 0), True)])
def test_has_fast_fp16(capability, fast):
    assert has_fast_fp16(capability) is fast


# ------------------------------------------------------------------------------------------ config


def test_engine_config_defaults_and_profile():
    config = EngineConfig(min_shape=[1, 16, 16], opt_shape=(1, 64, 96), max_shape=(2, 128, 128))
    assert config.min_shape == (1, 16, 16) and isinstance(config.min_shape, tuple)
    assert config.profile() == {"min": [1, 16, 16], "opt": [1, 64, 96], "max": [2, 128, 128]}
    assert config.refittable and not EngineConfig(mode="branch").refittable
    assert config.contains(2, 32, 128) and not config.contains(3, 32, 32) and not config.contains(1, 8, 32)
    assert json.loads(json.dumps(config.to_dict()))["mode"] == "swap"


@pytest.mark.parametrize(("changes", "message"), [
    ({"mode": "turbo"}, "mode must be one of"),
    ({"precision": "bf16"}, "precision must be one of"),
    ({"precision": "int8"}, "strongly typed"),
    ({"min_shape": (0, 16, 16)}, "three positive integers"),
    ({"min_shape": (1, 16)}, "three positive integers"),
    ({"max_shape": "1x16x16"}, "three positive integers"),
    ({"opt_shape": (1, 16.5, 16)}, "three positive integers"),
    ({"opt_shape": (1, 2048, 64)}, "height must satisfy min <= opt <= max"),
    ({"min_shape": (4, 16, 16)}, "batch must satisfy"),
    ({"workspace_mb": 0}, "workspace_mb"),
    ({"workspace_mb": 1.5}, "workspace_mb"),
    ({"workspace_mb": True}, "workspace_mb"),
    ({"builder_optimization_level": 6}, "builder_optimization_level"),
    ({"builder_optimization_level": -1}, "builder_optimization_level"),
    ({"timing_cache": ""}, "timing_cache"),
])
def test_engine_config_validation(changes, message):
    with pytest.raises(BackendError, match=message):
        EngineConfig(**changes)


# ------------------------------------------------------------------------------------------- flags


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


# --------------------------------------------------------------------------------------- cache keys


def test_cache_key_is_stable():
    key = _key()
    same = _key(profile=[[1, 16, 16], [1, 64, 64], [1, 128, 128]])  # lists or tuples: same key
    assert key == same and key.hexdigest() == same.hexdigest() and key.filename == same.filename
    expected = hashlib.sha256(json.dumps(key.to_dict(), sort_keys=True).encode()).hexdigest()
    assert key.hexdigest() == expected  # plain JSON + SHA-256: the same in every process and on every machine
    assert EngineCacheKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    assert key.filename.startswith("swap-fp32-abababababab-") and key.filename.endswith(".engine")


@pytest.mark.parametrize(("field", "value", "new_file"), [
    ("tensorrt_version", "10.8.0", False),
    ("gpu_name", "NVIDIA H200", True),
    ("compute_capability", "9.0", True),
    ("precision", "fp16", True),
    ("mode", "branch", True),
    ("profile", ((1, 16, 16), (1, 64, 64), (1, 256, 256)), True),
    ("bundle_digest", "ef" * 32, True),
    ("onnx_sha256", "00" * 32, False),
    ("format_version", 2, False),
    ("build_options", '{"workspace_mb": 64}', False),
])
def test_cache_key_sensitivity(field, value, new_file):
    key, other = _key(), _key(**{field: value})
    assert key.hexdigest() != other.hexdigest()
    assert (key.filename != other.filename) is new_file
    assert any(line.startswith(field) for line in other.differences(key.to_dict()))


def test_cache_key_validation():
    with pytest.raises(BackendError, match="gpu_name"):
        _key(gpu_name="")
    with pytest.raises(BackendError, match="profile"):
        _key(profile=((1, 16, 16), (1, 64, 64)))
    with pytest.raises(BackendError, match="unknown engine cache key"):
        EngineCacheKey.from_dict({**_key().to_dict(), "colour": "red"})


def test_key_for_build_hashes_the_onnx_file(tmp_path):
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"graph-1")
    config = EngineConfig(mode="branch", precision="fp16", workspace_mb=256)
    key = EngineCacheKey.for_build(bundle_digest="ab" * 32, onnx_path=onnx, config=config, environment=ENV)
    assert key.onnx_sha256 == hashlib.sha256(b"graph-1").hexdigest()
    assert (key.mode, key.precision, key.tensorrt_version, key.gpu_name) == ("branch", "fp16", "10.3.0", "Orin")
    assert json.loads(key.build_options)["workspace_mb"] == 256
    onnx.write_bytes(b"graph-2")
    assert EngineCacheKey.for_build(bundle_digest="ab" * 32, onnx_path=onnx, config=config, environment=ENV) != key


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ADSRT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert EngineCache().dir == tmp_path / "c" / "engines"
    monkeypatch.delenv("ADSRT_CACHE_DIR")
    assert default_cache_root() == Path.home() / ".cache" / "adsrt"


# ------------------------------------------------------------------------------------ cache entries


def test_store_then_lookup(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    assert cache.lookup(key) is None
    path = cache.store(key, b"plan-bytes")
    assert cache.lookup(key) == path == tmp_path / "engines" / key.filename
    assert path.read_bytes() == b"plan-bytes"
    meta = json.loads(cache.sidecar(key).read_text())
    assert meta["key"] == key.to_dict() and meta["size"] == 10
    assert meta["sha256"] == hashlib.sha256(b"plan-bytes").hexdigest()
    assert not list((tmp_path / "engines").glob("*.part"))  # atomic writes leave no temporaries
    cache.store(key, b"plan-bytes-2")  # overwrite
    assert cache.lookup(key).read_bytes() == b"plan-bytes-2"
    cache.invalidate(key)
    assert cache.lookup(key) is None and not path.exists() and not cache.sidecar(key).exists()
    cache.invalidate(key)  # idempotent
    with pytest.raises(BackendError, match="empty"):
        cache.store(key, b"")


@pytest.mark.parametrize(("field", "value"), [("tensorrt_version", "10.8.0"), ("onnx_sha256", "00" * 32),
                                              ("format_version", 2)])
def test_stale_sidecar_is_a_miss(tmp_path, caplog, field, value):
    cache = EngineCache(tmp_path)
    cache.store(_key(), b"old-plan")
    now = _key(**{field: value})
    assert cache.path(now) == cache.path(_key())  # same slot: the old entry is found, then refused
    with caplog.at_level(logging.INFO, logger="adsrt.export.engine_cache"):
        assert cache.lookup(now) is None
    assert "stale" in caplog.text and field in caplog.text


def test_other_gpu_is_another_entry(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(_key(), b"orin-plan")
    assert cache.lookup(_key(gpu_name="NVIDIA H200", compute_capability="9.0")) is None
    assert cache.lookup(_key()) is not None


@pytest.mark.parametrize("sidecar", [None, "{not json", "[1, 2]"])
def test_engine_without_valid_sidecar_is_never_loaded(tmp_path, sidecar):
    cache = EngineCache(tmp_path)
    key = _key()
    cache.store(key, b"plan")
    if sidecar is None:
        cache.sidecar(key).unlink()
    else:
        cache.sidecar(key).write_text(sidecar)
    assert cache.lookup(key) is None


def test_interrupted_store_leaves_no_loadable_entry(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    key = _key()
    cache.store(key, b"old")

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(engine_cache_module, "atomic_write_bytes", crash)
    with pytest.raises(OSError):
        cache.store(key, b"new")
    assert cache.lookup(key) is None  # the sidecar went first: the old engine is not taken for the new one


def test_truncated_engine_is_corrupt(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    path = cache.store(key, b"0123456789")
    path.write_bytes(b"01234")
    with pytest.raises(CorruptEngineError, match="rebuild") as info:
        cache.lookup(key)
    assert info.value.path == path and str(path) in str(info.value)


# ------------------------------------------------------------------------- build_or_load (injected)


class FakeTensorRT:
    """Stands in for build_engine / deserialize_engine: counts builds, decodes 'plans'."""

    def __init__(self):
        self.builds = 0
        self.broken: set[bytes] = set()

    def build(self, onnx_path, config, refit_names):
        self.builds += 1
        return f"plan:{config.mode}:{config.precision}:{len(refit_names)}:{self.builds}".encode()

    def deserialize(self, data, source):
        if data in self.broken:
            return None
        if not data.startswith(b"plan:"):
            raise RuntimeError("magic tag mismatch")
        return SimpleNamespace(plan=data.decode(), source=source)


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    """A tiny ONNX file (an Identity graph) without adsrt metadata: hashed like a real export."""
    return _onnx_with_metadata(tmp_path / "swap.onnx")


def _load(fake, onnx_file, cache, **options):
    options.setdefault("environment", ENV)
    return build_or_load_engine("ab" * 32, onnx_file, EngineConfig(), cache, build=fake.build,
                                deserialize=fake.deserialize, refit_names=["ads.a", "ads.b"], **options)


def test_build_then_cache_hit(tmp_path, onnx_file):
    fake, cache = FakeTensorRT(), EngineCache(tmp_path / "cache")
    first = _load(fake, onnx_file, cache)
    assert first.built and fake.builds == 1 and first.engine.plan == "plan:swap:fp32:2:1"
    second = _load(fake, onnx_file, cache)
    assert not second.built and fake.builds == 1 and second.engine.plan == first.engine.plan
    assert second.path == first.path and second.key == first.key
    third = _load(fake, onnx_file, cache, rebuild=True)
    assert third.built and fake.builds == 2


def test_stale_entry_rebuilds_and_replaces(tmp_path, onnx_file, caplog):
    fake, cache = FakeTensorRT(), EngineCache(tmp_path / "cache")
    old = _load(fake, onnx_file, cache)
    with caplog.at_level(logging.INFO, logger="adsrt.export.engine_cache"):
        new = _load(fake, onnx_file, cache, environment=EngineEnvironment("10.8.0", "Orin", "8.7"))
    assert new.built and fake.builds == 2 and new.path == old.path
    assert "tensorrt_version" in caplog.text
    _onnx_with_metadata(onnx_file, doc="re-exported")  # another ONNX file: rebuild too
    assert _load(fake, onnx_file, cache, environment=EngineEnvironment("10.8.0", "Orin", "8.7")).built


@pytest.mark.parametrize("damage", ["none-engine", "raises"])
def test_corrupt_cached_engine_names_the_file_and_rebuild_fixes_it(tmp_path, onnx_file, damage):
    fake, cache = FakeTensorRT(), EngineCache(tmp_path / "cache")
    entry = _load(fake, onnx_file, cache)
    data = entry.path.read_bytes()
    if damage == "none-engine":
        fake.broken.add(data)  # TensorRT's deserialize_cuda_engine returns None
    else:
        entry.path.write_bytes(b"X" * len(data))  # same size, garbage: the deserializer raises
    with pytest.raises(CorruptEngineError) as info:
        _load(fake, onnx_file, cache)
    message = str(info.value)
    assert str(entry.path) in message and "rebuild=True" in message and "--rebuild" in message
    fake.broken.clear()
    fixed = _load(fake, onnx_file, cache, rebuild=True)
    assert fixed.built and fixed.engine.plan.startswith("plan:")
    assert not _load(fake, onnx_file, cache).built


def test_fresh_engine_that_cannot_load_is_not_cached(tmp_path, onnx_file):
    fake, cache = FakeTensorRT(), EngineCache(tmp_path / "cache")
    fake.deserialize = lambda data, source: None
    with pytest.raises(BackendError, match="just built"):
        _load(fake, onnx_file, cache)
    assert not list((tmp_path / "cache" / "engines").glob("*.engine"))


def test_missing_onnx_file(tmp_path):
    fake = FakeTensorRT()
    with pytest.raises(BackendError, match="no such ONNX file"):
        _load(fake, tmp_path / "absent.onnx", EngineCache(tmp_path))


def _onnx_with_metadata(path: Path, doc: str = "", **meta: str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, doc_string=doc)
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def test_onnx_metadata_must_match_the_engine(tmp_path):
    digest = "ab" * 32
    good = _onnx_with_metadata(tmp_path / "good.onnx", **{"adsrt.mode": "swap", "adsrt.precision": "fp32",
                                                           "adsrt.bundle_digest": digest})
    check_onnx_matches(good, EngineConfig(), digest)
    with pytest.raises(BackendError, match="adsrt.precision"):
        check_onnx_matches(good, EngineConfig(precision="fp16"), digest)
    with pytest.raises(BackendError, match="adsrt.bundle_digest"):
        check_onnx_matches(good, EngineConfig(), "ef" * 32)
    with pytest.raises(BackendError, match="adsrt.mode"):
        check_onnx_matches(good, EngineConfig(mode="branch"), digest)
    with pytest.raises(BackendError, match="adsrt.mode"):  # build_or_load_engine checks before building
        build_or_load_engine(
            digest, good, EngineConfig(mode="branch"), EngineCache(tmp_path), environment=ENV,
            build=FakeTensorRT().build, deserialize=FakeTensorRT().deserialize)
    plain = _onnx_with_metadata(tmp_path / "plain.onnx")
    check_onnx_matches(plain, EngineConfig(mode="branch"), digest)  # no adsrt metadata: not checked


# ------------------------------------------------------------------------ build_engine on a fake API


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


# ------------------------------------------------------------------------------------- name mapping


def test_refit_names_follow_swap_rows(bundle):
    rows = swap_rows(bundle)
    names = [r.name for r in rows.values()]
    assert names == [refit_name(layer) for layer in rows]
    assert all(n.startswith("ads.") and n.removeprefix("ads.") in bundle.um_state for n in names)
    assert len(set(names)) == len(names) > 0
    for layer, r in rows.items():
        full = bundle.um_state[layer].shape
        assert r.shape[:r.dim] == full[:r.dim] and r.shape[r.dim + 1:] == full[r.dim + 1:]
        assert r.shape[r.dim] == len(r.rows) <= full[r.dim]


def test_refit_rows_from_engine_sizes(bundle):
    split = swap_rows(bundle, split_max=1.0)
    whole = swap_rows(bundle, split_max=0.0)
    default = swap_rows(bundle)
    assert set(split) == set(whole) == set(default)
    as_split = refit_rows_from_sizes(bundle, {r.name: r.numel for r in split.values()})
    assert all(not r.whole or r.numel == whole[layer].numel for layer, r in as_split.items())
    assert all(r.numel == split[layer].numel for layer, r in as_split.items())
    as_whole = refit_rows_from_sizes(bundle, {r.name: r.numel for r in whole.values()})
    assert all(r.shape == whole[layer].shape for layer, r in as_whole.items())
    # the default export splits some layers and keeps others whole: the sizes say which
    mixed = refit_rows_from_sizes(bundle, {r.name: r.numel for r in default.values()})
    assert {layer: r.shape for layer, r in mixed.items()} == {layer: r.shape for layer, r in default.items()}
    sizes = {r.name: r.numel for r in default.values()}
    first = next(iter(default.values())).name
    sizes[first] += 1
    del sizes[list(sizes)[-1]]
    with pytest.raises(BackendError, match="do not fit this bundle") as info:
        refit_rows_from_sizes(bundle, sizes)
    assert first in str(info.value) and "missing" in str(info.value)


def test_tensorrt_graph_reuses_matching_graphs(bundle, tmp_path, monkeypatch):
    onnx_export = pytest.importorskip("adsrt.export.onnx_export", reason="adsrt.export.onnx_export not importable")

    exports = []

    def fake_export(b, out, config):
        exports.append((config.mode, config.precision))
        _onnx_with_metadata(Path(out), **{"adsrt.mode": config.mode, "adsrt.precision": config.precision,
                                          "adsrt.bundle_digest": b.digest(), "adsrt.fused_classifier": "false",
                                          "adsrt.split_max": json.dumps(config.split_max)})
        return SimpleNamespace(path=Path(out))

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    cache = EngineCache(tmp_path)
    path = tensorrt_graph(bundle, "swap", "fp16", cache.root)
    assert path.parent == tmp_path / "onnx" / bundle.digest()[:16] and path.name.startswith("tensorrt-swap-fp16-")
    assert tensorrt_graph(bundle, "swap", "fp16", cache.root) == path and exports == [("swap", "fp16")]
    assert tensorrt_graph(bundle, "swap", "fp16", cache.root, rebuild=True) == path and len(exports) == 2
    _onnx_with_metadata(path, **{"adsrt.mode": "swap", "adsrt.precision": "fp16", "adsrt.bundle_digest": "other"})
    tensorrt_graph(bundle, "swap", "fp16", cache.root)  # stale metadata: exported again
    assert len(exports) == 3
    path.write_bytes(b"truncated")
    tensorrt_graph(bundle, "swap", "fp16", cache.root)  # unreadable: exported again
    assert len(exports) == 4


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


# ------------------------------------------------------------------------------- real TensorRT (GPU)

PROFILE = EngineConfig(min_shape=(1, 16, 16), opt_shape=(1, 64, 64), max_shape=(2, 192, 256), workspace_mb=256)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double().cpu() - b.double().cpu()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _reference(bundle, x: torch.Tensor, c) -> torch.Tensor:
    from adsrt.ads import apply_ads

    model = apply_ads(bundle.build_um(), bundle, c)
    with torch.no_grad():
        return model(x.cpu().float())


@pytest.fixture(scope="module")
def frames(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0  # 192 x 256 (multiples of 16)
    return x


@pytest.fixture(scope="module")
def trt_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trt-cache")


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize(("precision", "min_psnr"), [("fp32", 50.0), ("fp16", 40.0)])
def test_swap_engine_matches_torch_and_refits(bundle, frames, trt_cache, precision, min_psnr):
    if precision == "fp16" and not has_fast_fp16(torch.cuda.get_device_capability()):
        pytest.skip("this GPU has no fast FP16")
    backend = TensorRTBackend(bundle, device="cuda", precision=precision, mode="swap", cache_dir=trt_cache,
                              engine_config=PROFILE)
    x = frames.cuda()
    outputs, refs = [], []
    for c in ([0.9, 0.05, 0.05], [0.0, 0.1, 0.9], [0.0, 0.0, 0.0]):
        backend.update(torch.tensor([c], device="cuda"))
        y = backend.restore(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        refs.append(_reference(bundle, frames, c))
        assert _psnr(y, refs[-1]) > min_psnr, c
        outputs.append(y.cpu())
    # each refit really changed the engine: every output is nearer its own c's reference than another's
    for i, j in ((0, 1), (1, 0), (2, 0)):
        assert _psnr(outputs[i], refs[i]) > _psnr(outputs[i], refs[j]) + 1.0, (i, j)
    # another frame size: the input shape and the output buffers follow
    small = x[:, :, :64, :96]
    assert backend.restore(small).shape == small.shape
    with pytest.raises(BackendError, match="outside the engine's shape profile"):
        backend.restore(torch.zeros(1, 3, 320, 320, device="cuda"))


@pytest.mark.gpu
@needs_tensorrt
def test_branch_engine_mixes_coefficients_per_frame(bundle, frames, trt_cache):
    backend = TensorRTBackend(bundle, device="cuda", mode="branch", cache_dir=trt_cache, engine_config=PROFILE)
    x = torch.cat([frames, frames.flip(-1)]).cuda()
    cs = [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]
    backend.update(torch.tensor(cs, device="cuda"))
    y = backend.restore(x)
    for i, c in enumerate(cs):
        assert _psnr(y[i : i + 1], _reference(bundle, x[i : i + 1], c)) > 50.0


@pytest.mark.gpu
@needs_tensorrt
def test_classifier_engine_matches_torch(bundle, frames, trt_cache):
    backend = TensorRTBackend(bundle, device="cuda", mode="branch", cache_dir=trt_cache, engine_config=PROFILE)
    logits = backend.classify(frames.cuda())
    with torch.no_grad():
        ref = bundle.build_classifier()(frames)
    assert logits.shape == (1, len(DEGRADATIONS) + 1)
    torch.testing.assert_close(logits.cpu(), ref, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@needs_tensorrt
def test_real_engine_cache_hit_stale_and_corrupt(bundle, trt_cache):
    from adsrt.runtime.tensorrt_engine import current_environment

    cache = EngineCache(trt_cache)
    onnx = tensorrt_graph(bundle, "branch", "fp32", cache.root)
    config = dataclasses.replace(PROFILE, mode="branch")
    first = build_or_load_engine(bundle, onnx, config, cache)
    second = build_or_load_engine(bundle, onnx, config, cache)
    assert not second.built and second.path == first.path and second.engine.num_io_tensors == 3
    env = current_environment()
    stale = EngineEnvironment(env.tensorrt_version + ".0", env.gpu_name, env.compute_capability)
    assert build_or_load_engine(bundle, onnx, config, cache, environment=stale).built
    entry = build_or_load_engine(bundle, onnx, config, cache, rebuild=True)
    entry.path.write_bytes(b"\0" * entry.path.stat().st_size)
    with pytest.raises(CorruptEngineError, match="rebuild"):
        build_or_load_engine(bundle, onnx, config, cache)
    assert build_or_load_engine(bundle, onnx, config, cache, rebuild=True).built



@pytest.mark.gpu
@needs_tensorrt
def test_um_engine_and_lazy_classifier(bundle, frames, trt_cache):
    backend = TensorRTBackend(bundle, device="cuda", mode="um", cache_dir=trt_cache, engine_config=PROFILE)
    assert backend.classifier is None and backend.has_classifier  # built on the first classify()
    backend.update(torch.ones(1, len(DEGRADATIONS), device="cuda"))  # um: c is ignored
    y = backend.restore(frames.cuda())
    assert _psnr(y, _reference(bundle, frames, [0.0] * len(DEGRADATIONS))) > 50.0
    assert backend.classify(frames.cuda()).shape == (1, len(DEGRADATIONS) + 1)
    # a prebuilt engine file (with its cache sidecar) runs as engine=
    again = TensorRTBackend(bundle, device="cuda", mode="um", engine=backend.engine_paths["um"], cache_dir=trt_cache,
                            engine_config=PROFILE)
    assert _psnr(again.restore(frames.cuda()), y) > 80.0
    with pytest.raises(BackendError, match="does not fit"):
        TensorRTBackend(bundle, device="cuda", mode="branch", engine=backend.engine_paths["um"], cache_dir=trt_cache)
