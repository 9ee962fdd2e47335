"""Fuzzing the bundle loader: every mutated bundle file must load or raise BundleError, quickly and in
bounded memory.

The code of ``benchmarks/bench_fuzz_bundle.py`` (a thin wrapper around :func:`main`) and of
``tests/test_bundle_fuzz.py``, so both run one mutant generator:

    nice .venv/bin/python benchmarks/bench_fuzz_bundle.py --mutants 10000 --seed 0

A bundle is a safetensors file: 8 bytes of little-endian header length ``N``, ``N`` bytes of JSON (the
tensor table and ``__metadata__``, whose ``adsrt`` value is the JSON text of the bundle header), then the
tensor data. :func:`mutants` derives mutants from valid seed bundles (:func:`seed_bundles`, small real
bundles) deterministically from a seed, in six kinds (:data:`KINDS`):

- ``header-bytes``: one to four bytes of the length prefix or the safetensors JSON flipped or replaced;
- ``header-text``: characters of the bundle header's JSON text replaced (the safetensors JSON stays valid);
- ``json-field``: a value anywhere in the bundle header replaced by one of another type or size (strings,
  booleans, null, lists, objects, 2**31, 10**18, 2**1024, negative numbers, NaN, Infinity, 1e400, nesting 40 to
  100,000 deep, a 5,000-digit integer, neighbours of the old value), or a key deleted or added;
- ``tensor-table``: an entry of the safetensors table edited (dtype, shape, data_offsets, name; deleted,
  duplicated, data swapped with another entry) or ``__metadata__`` broken;
- ``truncate``: the file cut short or garbage appended;
- ``splice``: two seed files joined (a prefix of one, the rest of the other; one's table with the
  other's data or header).

:func:`run_fuzz` loads each mutant with :func:`adsrt.bundle.load_bundle`, uses each one that loads as
``adsrt info`` and a first frame do (:func:`use_bundle`), and tallies per kind: loaded, refused
(BundleError) and other (any other exception, or a mutant over the time limit: a defect). The
benchmark writes ``fuzz_bundle.csv``: a row per kind and one for all, with the slowest mutant's seconds,
the process's peak RSS and its growth over the run, the date, versions and CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

from adsrt.arch import ClassifierConfig
from adsrt.bench.timing import cpu_name
from adsrt.bundle import Bundle, load_bundle, save_bundle, summarize, synthetic_bundle
from adsrt.errors import BundleError
from adsrt.fileio import upsert_csv
from adsrt.runtime.restorer import Restorer, RestorerConfig
from adsrt.version import __version__

log = logging.getLogger(__name__)

KINDS = ("header-bytes", "header-text", "json-field", "tensor-table", "truncate", "splice")
# How often each kind is drawn: the field mutations reach the header checks most directly.
_WEIGHTS = (0.15, 0.10, 0.40, 0.20, 0.075, 0.075)
CSV_KEY = ("kind",)
CSV_COLUMNS = ("kind", "mutants", "loaded", "refused", "other", "max_seconds", "mean_ms", "peak_rss_mib",
               "rss_growth_mib", "seed", "date", "adsrt", "torch", "safetensors", "cpu")


# ------------------------------------------------------------------------------------------- seeds


def seed_bundles(folder: Path) -> list[bytes]:
    """Two small valid bundles (nafnet-tiny) as bytes: three degradations with a windowed two-conv
    classifier at kernel granularity, and two degradations without a classifier at filter granularity;
    saved under ``folder``."""
    windowed = ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2, convs=2, window=64)
    first = synthetic_bundle("nafnet-tiny", ("noise", "blur", "rain"), q=0.05, seed=0, delta_scale=0.1,
                             perturb_um=0.05, classifier=windowed)
    first.metrics = {"psnr": {"noise": 30.0}}
    second = synthetic_bundle("nafnet-tiny", ("noise", "haze"), q=0.1, granularity="filter", seed=1)
    return [save_bundle(b, folder / f"seed{i}.safetensors").read_bytes() for i, b in enumerate((first, second))]


# ------------------------------------------------------------------------------ the safetensors layout


def split_file(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A valid safetensors file's table (tensor entries and ``__metadata__``) and its data bytes."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join_file(table: dict[str, Any] | str, data: bytes) -> bytes:
    """A safetensors file of ``table`` (a dict, or JSON text as is) and ``data``, the header padded with
    spaces to a multiple of 8 bytes as safetensors writes it."""
    text = (table if isinstance(table, str) else json.dumps(table, separators=(",", ":"))).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


# -------------------------------------------------------------------------------------------- mutants


@dataclass(frozen=True)
class Mutant:
    kind: str  # one of KINDS
    description: str  # what was changed, enough to rebuild it by hand
    data: bytes


class _Raw:
    """A value written into the header as this JSON text (what json.dumps cannot produce: NaN tokens,
    1e400, nesting deeper than Python's recursion limit, integers of thousands of digits)."""

    def __init__(self, text: str, label: str) -> None:
        self.text, self.label = text, label

    def __repr__(self) -> str:
        return self.label


_DEEP = 100_000
_ODD_VALUES: tuple[Any, ...] = (
    "x", "", "wide", "nafnet", "16", "NaN", "Infinity", "\u00e9\u4e2d", True, False, None, [], {}, [1, 2], [[1]],
    ["noise"], {"a": 1}, {"arch": "nafnet"}, 0, 1, -1, 2, 3, 7, 16, 2**31 - 1, 2**31, -(2**31), 2**63, 10**18,
    -(10**18), 0.5, 1.5, -0.5, 1e-300, 1e308, [0.0, 0.0], [1.0, 0.0], [0, 1, 2],
    _Raw("NaN", "NaN"), _Raw("Infinity", "Infinity"), _Raw("-Infinity", "-Infinity"), _Raw("1e400", "1e400"),
    _Raw("[" * _DEEP + "]" * _DEEP, f"[...] nested {_DEEP} deep"),
    *(_Raw("[" * n + "]" * n, f"[...] nested {n} deep") for n in (40, 500, 990)),
    _Raw('{"a":' * _DEEP + "1" + "}" * _DEEP, f"{{...}} nested {_DEEP} deep"),
    _Raw("9" * 5000, "a 5000-digit integer"), 2**1024,
)
_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3",
           "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "E8M0", "C64", "Q4", "", "f32")
_SAME_SIZE = {"F32": ("I32", "U32"), "I32": ("F32", "U32"), "F16": ("BF16", "I16", "U16"), "I64": ("F64", "U64"),
              "BF16": ("F16", "I16"), "F64": ("I64",)}
_NAMES = ("x", "", "um/", "dc/", "ads/noise/intro.weight/units", "ads/noise/intro.weight/delta",
          "ads/NOISE/intro.weight/units", "ads/noise/nope.weight/delta", "um/intro.weight", "dc/head.weight",
          "um/../x", "ads/noise/a/b/units", "__metadata__")
_HEADER_CHARS = '0123456789-+.eE{}[]",: ntfalsru\\'


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into a JSON value (keys and list indices), the containers' included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def _dumps(header: Any) -> str:
    """JSON text of a header that may hold :class:`_Raw` values."""
    raws: list[_Raw] = []

    def mark(value: Any) -> Any:
        if isinstance(value, _Raw):
            raws.append(value)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(header), allow_nan=True)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw.text)
    return text


def _with_header(table: dict[str, Any], header_text: Any, data: bytes) -> bytes:
    table = dict(table)
    table["__metadata__"] = {**table.get("__metadata__", {}), "adsrt": header_text}
    return join_file(table, data)


def _odd_value(rng: random.Random, old: Any) -> Any:
    # A third of the integers become a neighbour of the old value: right type, wrong architecture.
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.35:
        return rng.choice((old + 1, old - 1, old * 2, old // 2, old + 16, -old))
    return rng.choice(_ODD_VALUES)


def _json_field(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    table, data = split_file(raw)
    header = json.loads(table["__metadata__"]["adsrt"])
    path = rng.choice(list(_paths(header)))
    op = rng.random()
    if not path or op < 0.7:
        new = _odd_value(rng, _get(header, path) if path else None)
        if path:
            _get(header, path[:-1])[path[-1]] = new
        else:
            header = new
        what = f"{'/'.join(map(str, path)) or 'header'} = {new!r}"[:200]
    elif op < 0.8:
        del _get(header, path[:-1])[path[-1]]
        what = f"del {'/'.join(map(str, path))}"
    else:
        parent = _get(header, path[:-1])
        if isinstance(parent, dict):
            parent["extra"] = _odd_value(rng, None)
            what = f"{'/'.join(map(str, path[:-1])) or 'header'}/extra added"
        else:
            parent.append(parent[path[-1]])
            what = f"{'/'.join(map(str, path))} appended again"
    return what, _with_header(table, _dumps(header), data)


def _header_text(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    table, data = split_file(raw)
    text = list(table["__metadata__"]["adsrt"])
    changes = []
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text))
        c = rng.choice(_HEADER_CHARS) if rng.random() < 0.8 else chr(rng.randrange(1, 0x3000))
        changes.append(f"[{i}] {text[i]!r}->{c!r}")
        text[i] = c
    return f"header text {', '.join(changes)}", _with_header(table, "".join(text), data)


def _header_bytes(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    end = 8 + int.from_bytes(raw[:8], "little")
    out = bytearray(raw)
    changes = []
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(8) if rng.random() < 0.1 else rng.randrange(8, end)
        b = out[i] ^ rng.randrange(1, 256) if rng.random() < 0.5 else rng.randrange(256)
        changes.append(f"byte {i} {out[i]:#04x}->{b:#04x}")
        out[i] = b
    return ", ".join(changes), bytes(out)


def _tensor_table(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    table, data = split_file(raw)
    names = sorted(k for k in table if k != "__metadata__")
    name = rng.choice(names)
    entry = table[name]
    op = rng.randrange(10)
    if op == 0:
        entry["dtype"] = rng.choice((*_DTYPES, 1, None, ["F32"]))
        what = f"{name} dtype {entry['dtype']!r}"
    elif op == 1 and entry["dtype"] in _SAME_SIZE:  # loads in safetensors: the bundle checks must see it
        entry["dtype"] = rng.choice(_SAME_SIZE[entry["dtype"]])
        what = f"{name} dtype {entry['dtype']} (same size)"
    elif op in (1, 2):
        shape = list(entry["shape"])
        variants = [shape + [1], [1] + shape, shape[::-1], [_prod(shape)], [], [0], shape * 2, shape[:-1],
                    [*shape[:-1], 2**31], [2**63, 2**63], [-1], ["3"], [1.5], None, [[1]], [2**32, 2**32, 0]]
        entry["shape"] = rng.choice(variants)
        what = f"{name} shape {entry['shape']!r}"
    elif op == 3:
        a, b = entry["data_offsets"]
        k = rng.choice((1, 4, 8, 1024))
        variants = [[b, a], [a, a], [a + k, b + k], [0, b], [a, len(data) + k], [-1, b], [a, 2**64 - 1], [a],
                    [a, b, b], "x", [a - k, b - k]]
        entry["data_offsets"] = rng.choice(variants)
        what = f"{name} data_offsets {entry['data_offsets']!r}"
    elif op == 4:
        del table[name]
        what = f"{name} deleted"
    elif op == 5:
        new = rng.choice(_NAMES)
        table[new] = table.pop(name)
        what = f"{name} renamed {new!r}"
    elif op == 6:
        new = rng.choice(_NAMES)
        table[new] = dict(entry)
        what = f"{name} duplicated as {new!r}"
    elif op == 7:
        other = rng.choice(names)
        entry["data_offsets"], table[other]["data_offsets"] = table[other]["data_offsets"], entry["data_offsets"]
        what = f"{name} and {other} data swapped"
    elif op == 8:
        meta = table.get("__metadata__", {})
        variants = [None, [], {"adsrt": 1}, {"adsrt": None}, {"adsrt": {}}, {}, {"adsrt": ""}, {**meta, "x": 1}]
        table["__metadata__"] = rng.choice(variants)
        what = f"__metadata__ = {table['__metadata__']!r}"[:200]
    else:
        entry[rng.choice(("extra", "dtype", "shape", "data_offsets"))] = rng.choice(_ODD_VALUES[:24])
        what = f"{name} = {entry!r}"[:200]
    return what, join_file(table, data)


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _truncate(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    end = 8 + int.from_bytes(raw[:8], "little")
    if rng.random() < 0.2:
        extra = rng.randbytes(rng.randint(1, 64))
        return f"{len(extra)} garbage bytes appended", raw + extra
    cut = rng.randrange(end) if rng.random() < 0.5 else rng.randrange(len(raw))
    return f"cut at {cut} of {len(raw)}", raw[:cut]


def _splice(rng: random.Random, a: bytes, b: bytes) -> tuple[str, bytes]:
    op = rng.randrange(3)
    if op == 0:
        i, j = rng.randrange(len(a)), rng.randrange(len(b))
        return f"first[:{i}] + second[{j}:]", a[:i] + b[j:]
    (ta, da), (tb, db) = split_file(a), split_file(b)
    if op == 1:
        return "first's table, second's data", join_file(ta, db)
    return "first's tensors, second's header", _with_header(ta, tb["__metadata__"]["adsrt"], da)


def mutants(seeds: Sequence[bytes], count: int, seed: int = 0) -> Iterator[Mutant]:
    """``count`` mutants of the ``seeds`` (valid bundle files), the same for the same arguments."""
    rng = random.Random(seed)
    for i in range(count):
        kind = rng.choices(KINDS, _WEIGHTS)[0]
        s = rng.randrange(len(seeds))
        if kind == "splice":
            what, data = _splice(rng, seeds[s], seeds[(s + 1) % len(seeds)])
        else:
            mutate = {"header-bytes": _header_bytes, "header-text": _header_text, "json-field": _json_field,
                      "tensor-table": _tensor_table, "truncate": _truncate}[kind]
            what, data = mutate(rng, seeds[s])
        yield Mutant(kind, f"#{i} seed{s}: {what}", data)


# ------------------------------------------------------------------------------------------------ run


@dataclass
class Tally:
    mutants: int = 0
    loaded: int = 0
    refused: int = 0  # BundleError
    other: int = 0  # any other exception or over the time limit: a defect
    max_seconds: float = 0.0
    total_seconds: float = 0.0

    def add(self, outcome: str, seconds: float) -> None:
        self.mutants += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.max_seconds = max(self.max_seconds, seconds)
        self.total_seconds += seconds


@dataclass
class FuzzResult:
    seed: int
    tallies: dict[str, Tally]
    failures: list[str]  # the mutants counted as "other": description and exception, the first 50
    slowest: str  # the slowest mutant's description
    rss_start_mib: float
    rss_peak_mib: float
    seconds: float  # wall time of the whole run
    total: Tally = field(default_factory=Tally)

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_peak_mib - self.rss_start_mib

    def table(self) -> str:
        lines = [f"{'kind':<14}{'mutants':>9}{'loaded':>8}{'refused':>9}{'other':>7}{'max s':>8}{'mean ms':>9}"]
        for kind, t in [*self.tallies.items(), ("all", self.total)]:
            mean = 1e3 * t.total_seconds / max(1, t.mutants)
            lines.append(f"{kind:<14}{t.mutants:>9}{t.loaded:>8}{t.refused:>9}{t.other:>7}"
                         f"{t.max_seconds:>8.3f}{mean:>9.2f}")
        lines.append(f"{self.total.mutants} mutants in {self.seconds:.1f} s; peak RSS {self.rss_peak_mib:.0f} MiB "
                     f"(+{self.rss_growth_mib:.0f} over the run); slowest: {self.slowest}")
        return "\n".join(lines + [f"FAIL {f}" for f in self.failures])

    def csv_rows(self) -> list[dict[str, str]]:
        stamp = {"seed": str(self.seed), "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "adsrt": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
                 "cpu": cpu_name(), "peak_rss_mib": f"{self.rss_peak_mib:.0f}",
                 "rss_growth_mib": f"{self.rss_growth_mib:.0f}"}
        return [{"kind": kind, "mutants": str(t.mutants), "loaded": str(t.loaded), "refused": str(t.refused),
                 "other": str(t.other), "max_seconds": f"{t.max_seconds:.4f}",
                 "mean_ms": f"{1e3 * t.total_seconds / max(1, t.mutants):.2f}", **stamp}
                for kind, t in [*self.tallies.items(), ("all", self.total)]]


# Larger than the seed classifier's 64 px window, so the first frame goes through the grid of views.
_FRAME = np.random.default_rng(0).integers(0, 256, (72, 80, 3), dtype=np.uint8)


def use_bundle(bundle: Bundle, used: set[str] | None = None) -> None:
    """What follows a load: re-saving (a strict JSON header), ``adsrt info`` (the summary) and restoring a
    first frame on the torch backend (forcing the first degradation when there is no classifier).

    ``used``: digests of the bundles already used; one with the same digest (the same model: only its
    provenance or metrics differ) is not summarised or run again, which keeps the fuzz test fast.
    """
    json.dumps(bundle.header(), allow_nan=False)
    if used is not None:
        digest = bundle.digest()
        if digest in used:
            return
        used.add(digest)
    summarize(bundle)
    force = None if bundle.classifier is not None else bundle.degradations[0]
    Restorer(bundle, RestorerConfig(backend="torch", device="cpu", force=force)).restore(_FRAME)


class MutantTimeout(BaseException):
    """A mutant ran past the time limit. A BaseException, so no ``except Exception`` on the way swallows it."""


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (MiB)."""
    import resource  # POSIX only; imported here so the module imports anywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise MutantTimeout in the block after ``seconds`` (SIGALRM: the main thread of a POSIX process;
    elsewhere no limit, and the per-mutant time is still measured)."""
    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise MutantTimeout(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_fuzz(seeds: Sequence[bytes], count: int, seed: int, folder: Path, *, timeout: float | None = 10.0,
             progress_every: int = 0) -> FuzzResult:
    """Load ``count`` mutants of ``seeds`` (written one at a time to ``folder``) and tally the outcomes.

    ``timeout``: seconds after which a mutant counts as a hang (an "other" outcome), or None.
    """
    path = Path(folder) / "mutant.safetensors"
    tallies = {kind: Tally() for kind in KINDS}
    total = Tally()
    failures: list[str] = []
    slowest, slowest_s = "", -1.0
    used: set[str] = set()
    rss_start = peak_rss_mib()
    start = time.perf_counter()
    for i, mutant in enumerate(mutants(seeds, count, seed)):
        path.write_bytes(mutant.data)
        t0 = time.perf_counter()
        try:
            with _time_limit(timeout):
                use_bundle(load_bundle(path), used)
            outcome = "loaded"
        except BundleError:
            outcome = "refused"
        except (Exception, MutantTimeout) as exc:  # noqa: BLE001 - tallying what escapes is the point
            outcome = "other"
            if len(failures) < 50:
                failures.append(f"{mutant.kind}: {mutant.description}: {type(exc).__name__}: {str(exc)[:300]}")
        seconds = time.perf_counter() - t0
        tallies[mutant.kind].add(outcome, seconds)
        total.add(outcome, seconds)
        if seconds > slowest_s:
            slowest, slowest_s = f"{mutant.kind}: {mutant.description} ({seconds:.3f} s)"[:300], seconds
        if progress_every and (i + 1) % progress_every == 0:
            log.info("%d/%d mutants, %d other", i + 1, count, total.other)
    return FuzzResult(seed=seed, tallies=tallies, failures=failures, slowest=slowest, rss_start_mib=rss_start,
                      rss_peak_mib=peak_rss_mib(), seconds=time.perf_counter() - start, total=total)


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the bundle loader (see adsrt.bench.fuzz_bundle)")
    parser.add_argument("--mutants", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds after which a mutant counts as a hang")
    parser.add_argument("--results", type=Path, default=default_results, help="folder of fuzz_bundle.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for quiet in ("adsrt.runtime", "adsrt.bundle"):  # a line per restorer and seed bundle otherwise
        logging.getLogger(quiet).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = seed_bundles(Path(tmp))
        result = run_fuzz(seeds, args.mutants, args.seed, Path(tmp), timeout=args.timeout,
                          progress_every=max(1, args.mutants // 10))
    print(result.table())
    if not args.no_csv:
        upsert_csv(args.results / "fuzz_bundle.csv", result.csv_rows(), key=CSV_KEY, columns=CSV_COLUMNS)
        print(f"rows upserted into {args.results / 'fuzz_bundle.csv'}")
    return 0 if result.total.other == 0 else 1
