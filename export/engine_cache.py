"""An on-disk cache of TensorRT engines, so a restorer builds each engine once per machine.

A serialized engine only runs on the TensorRT release and the GPU model it was built with, and only
computes what its ONNX graph and shape profile say. The cache therefore keys every engine by
(:class:`EngineCacheKey`): TensorRT version, GPU name, compute capability, precision, mode, shape
profile, builder options, bundle digest (:meth:`adsrt.bundle.Bundle.digest`), SHA-256 of the ONNX file
and the cache format version.

**Layout.** ``<root>/engines/<mode>-<precision>-<digest12>-<slot>.engine`` plus a JSON sidecar
(``.json``) holding the full key, the engine's size and SHA-256. ``root`` is ``$ADSRT_CACHE_DIR``, else
``~/.cache/adsrt``. The file name (the *slot*) depends on what the engine computes and where it runs
(bundle, mode, precision, profile, GPU); the sidecar holds everything else. So after a TensorRT upgrade
or a re-export the lookup finds the old entry, sees that its sidecar differs, logs which fields differ
and reports a miss: the engine is rebuilt and overwrites the entry, never loaded. A shared cache folder
(NFS home) keeps one entry per GPU model.

**Writes are atomic** (:mod:`adsrt.fileio`): the sidecar is removed first, then the engine and the new
sidecar are written beside their targets and renamed, so a crash leaves either no entry or a stale one.

**Corrupt entries** (size differs from the sidecar, or TensorRT cannot deserialize the file) raise
:class:`CorruptEngineError` naming the file; ``rebuild=True`` (CLI: ``--rebuild``) deletes the entry
and builds again.

Everything here except the build and the deserialization themselves runs without TensorRT: both are
injectable (``build=``, ``deserialize=``, ``environment=`` of :func:`build_or_load_engine`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adsrt.errors import BackendError
from adsrt.export.tensorrt_build import build_engine, read_onnx_metadata
from adsrt.fileio import atomic_write_bytes, file_sha256, write_json
from adsrt.runtime.artifacts import cache_root
from adsrt.runtime.tensorrt_engine import (
    EngineConfig,
    EngineEnvironment,
    current_environment,
    deserialize_engine,
)

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_CACHE_FORMAT",
    "CorruptEngineError",
    "EngineCache",
    "EngineCacheKey",
    "LoadedEngine",
    "build_or_load_engine",
    "check_onnx_matches",
]

ENGINE_CACHE_FORMAT = 1  # bump when the layout of cached engines or of their sidecars changes


class CorruptEngineError(BackendError):
    """A cached engine file exists, its sidecar matches, but the file is damaged or unreadable."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: cached TensorRT engine is corrupt or unreadable ({reason}); "
                         "delete it or rebuild it: pass rebuild=True (CLI: --rebuild)")


Profile = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]


def _profile(value: Any) -> Profile:
    if isinstance(value, Mapping):
        value = (value["min"], value["opt"], value["max"])
    try:
        profile = tuple(tuple(int(v) for v in shape) for shape in value)
    except (TypeError, ValueError, KeyError) as exc:
        raise BackendError(f"shape profile must be (min, opt, max) of (B, H, W), got {value!r}") from exc
    if len(profile) != 3 or any(len(s) != 3 for s in profile):
        raise BackendError(f"shape profile must be (min, opt, max) of (B, H, W), got {value!r}")
    return profile  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything a cached engine must match to be loaded (see the module doc)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    mode: str
    profile: Profile  # ((B, H, W) min, opt, max) of input x
    bundle_digest: str
    onnx_sha256: str
    format_version: int = ENGINE_CACHE_FORMAT
    build_options: str = "{}"  # canonical JSON of EngineConfig.build_options()

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", _profile(self.profile))
        for f in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "mode", "bundle_digest",
                  "onnx_sha256", "build_options"):
            value = getattr(self, f)
            if not isinstance(value, str) or not value:
                raise BackendError(f"EngineCacheKey.{f} must be a non-empty string, got {value!r}")
        if isinstance(self.format_version, bool) or not isinstance(self.format_version, int):
            raise BackendError(f"EngineCacheKey.format_version must be an integer, got {self.format_version!r}")

    @classmethod
    def for_build(cls, *, bundle_digest: str, onnx_path: str | os.PathLike, config: EngineConfig,
                  environment: EngineEnvironment, onnx_sha256: str | None = None) -> EngineCacheKey:
        return cls(
            tensorrt_version=environment.tensorrt_version,
            gpu_name=environment.gpu_name,
            compute_capability=environment.compute_capability,
            precision=config.precision,
            mode=config.mode,
            profile=(config.min_shape, config.opt_shape, config.max_shape),
            bundle_digest=bundle_digest,
            onnx_sha256=onnx_sha256 or file_sha256(onnx_path),
            build_options=json.dumps(config.build_options(), sort_keys=True),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the profile as lists), the form stored in sidecars."""
        d = asdict(self)
        d["profile"] = [list(s) for s in self.profile]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineCacheKey:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise BackendError(f"unknown engine cache key fields {sorted(unknown)}")
        return cls(**dict(d))

    def hexdigest(self) -> str:
        """SHA-256 of every field: equal keys, equal digests, across processes and machines."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def slot(self) -> str:
        """The part of the key that names the cache file (what the engine computes and the GPU model)."""
        ident = {k: v for k, v in self.to_dict().items()
                 if k in ("mode", "precision", "profile", "bundle_digest", "gpu_name", "compute_capability")}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def filename(self) -> str:
        return f"{self.mode}-{self.precision}-{self.bundle_digest[:12]}-{self.slot()}.engine"

    def differences(self, cached: Mapping[str, Any] | None) -> list[str]:
        """Human-readable ``field: cached -> now`` lines of the fields where ``cached`` (a sidecar key)
        differs from this key."""
        if not isinstance(cached, Mapping):
            return [f"sidecar key unreadable ({type(cached).__name__})"]
        now = self.to_dict()
        out = [f"{k}: {cached.get(k)!r} (cached) != {v!r} (now)" for k, v in now.items() if cached.get(k) != v]
        out += [f"{k}: unexpected field in cached key" for k in cached if k not in now]
        return out


@dataclass
class LoadedEngine:
    """A deserialized engine and where it came from."""

    engine: Any  # trt.ICudaEngine (or whatever the injected deserializer returns)
    path: Path
    key: EngineCacheKey
    built: bool  # True: built now; False: loaded from the cache


class EngineCache:
    """Cached engines under ``root / "engines"`` (``root``: :func:`adsrt.runtime.artifacts.cache_root`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = cache_root(root)
        self.dir = self.root / "engines"

    def __repr__(self) -> str:
        return f"EngineCache({str(self.root)!r})"

    def path(self, key: EngineCacheKey) -> Path:
        return self.dir / key.filename

    def sidecar(self, key: EngineCacheKey) -> Path:
        return self.path(key).with_suffix(".json")

    def _read_sidecar(self, path: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.info("engine cache sidecar %s is unreadable (%s)", path, exc)
            return None
        return meta if isinstance(meta, dict) else None

    def lookup(self, key: EngineCacheKey) -> Path | None:
        """The cached engine of ``key``, or None (missing, or stale: the sidecar differs from ``key`` in
        any field; the reason is logged). Raises :class:`CorruptEngineError` when the sidecar matches but
        the engine file has another size than the one stored."""
        path, side = self.path(key), self.sidecar(key)
        if not path.is_file():
            log.debug("engine cache miss: %s", path)
            return None
        meta = self._read_sidecar(side)
        if meta is None:
            log.info("engine cache entry %s has no readable sidecar %s: rebuilding", path, side.name)
            return None
        diffs = key.differences(meta.get("key"))
        if diffs:
            log.info("engine cache entry %s is stale (%s): rebuilding", path, "; ".join(diffs))
            return None
        size = path.stat().st_size
        if meta.get("size") != size:
            raise CorruptEngineError(path, f"{size} bytes on disk, {meta.get('size')} when it was stored")
        log.debug("engine cache hit: %s", path)
        return path

    def store(self, key: EngineCacheKey, data: bytes) -> Path:
        """Write ``data`` as the engine of ``key`` (atomically, sidecar last); returns its path."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
            raise BackendError("refusing to cache an empty engine")
        data = bytes(data)
        path, side = self.path(key), self.sidecar(key)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            side.unlink(missing_ok=True)  # an engine without a sidecar is never loaded
        except OSError as exc:
            raise BackendError(f"cannot write the engine cache in {self.dir}: {exc}") from exc
        atomic_write_bytes(path, data)
        write_json(side, {
            "key": key.to_dict(),
            "key_sha256": key.hexdigest(),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        log.info("cached TensorRT engine %s (%.1f MB)", path, len(data) / 1e6)
        return path

    def invalidate(self, key: EngineCacheKey) -> None:
        """Delete the entry of ``key`` (engine and sidecar), if any."""
        for p in (self.sidecar(key), self.path(key)):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot delete {p}: {exc}") from exc

    def load(self, path: str | os.PathLike, deserialize: Callable[[bytes, Path], Any]) -> Any:
        """Read and deserialize a cached engine; :class:`CorruptEngineError` naming the file when the
        deserializer raises or returns None."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptEngineError(path, f"unreadable: {exc}") from exc
        try:
            engine = deserialize(data, path)
        except Exception as exc:
            raise CorruptEngineError(path, f"{type(exc).__name__}: {exc}") from exc
        if engine is None:
            raise CorruptEngineError(path, "TensorRT returned no engine")
        return engine


def check_onnx_matches(onnx_path: str | os.PathLike, config: EngineConfig, bundle_digest: str) -> None:
    """Refuse an ONNX graph whose adsrt metadata names another mode, precision or bundle than the engine
    being built (a mixed-up file would otherwise give a valid engine that computes the wrong thing).
    Graphs without adsrt metadata, and machines without the onnx package, are not checked."""
    try:
        meta = read_onnx_metadata(onnx_path)
    except BackendError as exc:
        if "needs the onnx package" in str(exc):
            log.debug("onnx is not installed: %s not checked against the engine config", onnx_path)
            return
        raise
    expected = {"adsrt.mode": config.mode, "adsrt.precision": config.precision, "adsrt.bundle_digest": bundle_digest}
    wrong = [f"{k} = {meta[k]!r}, expected {v!r}" for k, v in expected.items() if k in meta and meta[k] != v]
    if wrong:
        raise BackendError(f"{onnx_path} does not match the engine to build: {'; '.join(wrong)}")


def build_or_load_engine(
    bundle: Any,
    onnx_path: str | os.PathLike,
    config: EngineConfig,
    cache: EngineCache | None = None,
    rebuild: bool = False,
    *,
    refit_names: Sequence[str] = (),
    environment: EngineEnvironment | None = None,
    build: Callable[[Path, EngineConfig, Sequence[str]], bytes] | None = None,
    deserialize: Callable[[bytes, Path], Any] | None = None,
) -> LoadedEngine:
    """The engine of ``onnx_path`` built with ``config``: from ``cache`` when a matching entry exists,
    else built (:func:`adsrt.export.tensorrt_build.build_engine`), stored and deserialized.

    ``bundle``: an :class:`adsrt.bundle.Bundle` or its digest (hex string). ``rebuild=True`` deletes the
    entry first (the way out of a :class:`CorruptEngineError`). ``environment`` (TensorRT version and
    GPU; default: this machine's), ``build`` and ``deserialize`` are injectable, so the cache logic runs
    without TensorRT.
    """
    cache = EngineCache() if cache is None else cache
    environment = current_environment() if environment is None else environment
    build = build_engine if build is None else build
    deserialize = deserialize_engine if deserialize is None else deserialize
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendError(f"{onnx_path}: no such ONNX file")
    digest = bundle if isinstance(bundle, str) else bundle.digest()
    check_onnx_matches(onnx_path, config, digest)
    key = EngineCacheKey.for_build(bundle_digest=digest, onnx_path=onnx_path, config=config, environment=environment)
    if rebuild:
        log.info("rebuild requested: dropping cached engine %s", cache.path(key))
        cache.invalidate(key)
    else:
        path = cache.lookup(key)
        if path is not None:
            engine = cache.load(path, deserialize)
            log.info("loaded cached TensorRT engine %s", path)
            return LoadedEngine(engine, path, key, built=False)
    data = build(onnx_path, config, list(refit_names))
    path = cache.store(key, data)
    try:
        engine = deserialize(data, path)
        if engine is None:
            raise BackendError("TensorRT returned no engine")
    except Exception as exc:
        cache.invalidate(key)  # never leave an entry the next run would fail on
        raise BackendError(f"{path}: the engine just built cannot be deserialized ({type(exc).__name__}: {exc})") from exc
    return LoadedEngine(engine, path, key, built=True)
