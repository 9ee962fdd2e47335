"""The TensorRT engine cache (:mod:`adsrt.export.engine_cache`).

Two groups:

- tests that run everywhere (no TensorRT, no GPU): cache keys, stale/corrupt cache entries with an
  injected builder and deserializer, ONNX metadata checked against the engine;
- a ``gpu`` test that builds real engines from a tiny synthetic bundle (``bundle``, tests/conftest.py) into
  the cache: hit, stale and corrupt; skipped, with the reason, where TensorRT or CUDA is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from adsrt.errors import BackendError
from adsrt.export import engine_cache as engine_cache_module
from adsrt.export.artifacts import tensorrt_graph
from adsrt.export.engine_cache import (
    CorruptEngineError,
    EngineCache,
    EngineCacheKey,
    build_or_load_engine,
    check_onnx_matches,
)
from adsrt.runtime.tensorrt_engine import EngineConfig, EngineEnvironment, tensorrt_unavailable_reason

TRT_REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and CUDA: {TRT_REASON}")
ENV = EngineEnvironment("10.3.0", "Orin", "8.7")


def _key(**changes) -> EngineCacheKey:
    fields = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="fp32",
                  mode="swap", profile=((1, 16, 16), (1, 64, 64), (1, 128, 128)), bundle_digest="ab" * 32,
                  onnx_sha256="cd" * 32)
    fields.update(changes)
    return EngineCacheKey(**fields)


# ----------------------------------------------------------------------------------------------- cache keys


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
    assert EngineCache().dir == tmp_path / "c" / "engines"
    monkeypatch.delenv("ADSRT_CACHE_DIR")
    assert EngineCache().root == Path.home() / ".cache" / "adsrt"
    assert EngineCache("~/e").root == Path.home() / "e"


# -------------------------------------------------------------------------------------------- cache entries


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


# --------------------------------------------------------------------------------- build_or_load (injected)


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
def onnx_file(tmp_path, onnx_with_metadata) -> Path:
    """A tiny ONNX file (an Identity graph) without adsrt metadata: hashed like a real export."""
    return onnx_with_metadata(tmp_path / "swap.onnx")


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


def test_stale_entry_rebuilds_and_replaces(tmp_path, onnx_file, caplog, onnx_with_metadata):
    fake, cache = FakeTensorRT(), EngineCache(tmp_path / "cache")
    old = _load(fake, onnx_file, cache)
    with caplog.at_level(logging.INFO, logger="adsrt.export.engine_cache"):
        new = _load(fake, onnx_file, cache, environment=EngineEnvironment("10.8.0", "Orin", "8.7"))
    assert new.built and fake.builds == 2 and new.path == old.path
    assert "tensorrt_version" in caplog.text
    onnx_with_metadata(onnx_file, doc="re-exported")  # another ONNX file: rebuild too
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


def test_onnx_metadata_must_match_the_engine(tmp_path, onnx_with_metadata):
    digest = "ab" * 32
    good = onnx_with_metadata(tmp_path / "good.onnx", **{"adsrt.mode": "swap", "adsrt.precision": "fp32",
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
    plain = onnx_with_metadata(tmp_path / "plain.onnx")
    check_onnx_matches(plain, EngineConfig(mode="branch"), digest)  # no adsrt metadata: not checked


# -------------------------------------------------------------------------------------- real TensorRT (GPU)


@pytest.mark.gpu
@needs_tensorrt
def test_real_engine_cache_hit_stale_and_corrupt(bundle, trt_cache, trt_profile):
    from adsrt.runtime.tensorrt_engine import current_environment

    cache = EngineCache(trt_cache)
    onnx = tensorrt_graph(bundle, "branch", "fp32", cache.root)
    config = dataclasses.replace(trt_profile, mode="branch")
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
