"""The adsrt bundle: one ``.safetensors`` file with everything the runtime needs (never pickle).

Tensors (names are part of the format):

- ``um/<param>``: every entry of the unified model's state dict;
- ``dc/<param>``: the degradation classifier's state dict (optional);
- ``ads/<degradation>/<layer>/units``: int32 ``[n]``, the masked units of ``<layer>`` (a weight
  parameter name of the UM) for that degradation, sorted and unique (see :mod:`adsrt.ads`);
- ``ads/<degradation>/<layer>/delta``: float32 ``[n, unit_numel]``, their delta values.

The safetensors metadata holds one key, ``adsrt``, whose value is a JSON header:
``format`` ("adsrt-bundle"), ``format_version``, ``backbone`` (arch + config), ``classifier``
(config or null), ``degradations`` (class order; the classifier has one more class, clean/unknown, last),
``granularity``, ``q``, ``input`` (the input contract), ``provenance`` and ``metrics`` (free-form JSON).

Loading validates everything the runtime relies on (version, the type of every header field, tensor
names, shapes, dtypes, index ranges, finiteness) and raises :class:`adsrt.errors.BundleError` with a
one-line message naming the problem. A bundle file is untrusted input: every architecture number of the
header is bounded (the ``MAX_*`` constants of :mod:`adsrt.arch.nafnet`, :mod:`adsrt.arch.classifier` and
:data:`adsrt.arch.config.MAX_PARAMS`) and the weights are checked against meta-device skeletons of the
declared networks, so no header makes the loader allocate more than the file's own tensors or loop for
long (``adsrt.bench.fuzz_bundle`` checks this on mutated files). Saving validates first and writes
atomically, so a bundle on disk is never half written.

Compatibility: the loader refuses header fields it does not know (a file it cannot fully check is not
trusted), so any new header field, even an optional one, comes with a ``format_version`` bump; a field
added inside a network config with a behaviour-preserving default needs none (``HeaderConfig.from_dict``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from adsrt.ads import GRANULARITIES, Deltas, LayerDelta, UnitLayout, unit_layouts
from adsrt.arch import (
    BACKBONES,
    ClassifierConfig,
    DegradationClassifier,
    NAFNet,
    NAFNetConfig,
    build_backbone,
    build_classifier,
    count_params,
)
from adsrt.arch.config import is_finite_number, short_repr
from adsrt.arch.nafnet import MAX_PAD_MULTIPLE
from adsrt.errors import BundleError, ConfigError
from adsrt.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "adsrt-bundle"
FORMAT_VERSION = 1
METADATA_KEY = "adsrt"
BACKBONE_ARCHS = ("nafnet",)
HEADER_FIELDS = ("format", "format_version", "backbone", "classifier", "degradations", "granularity", "q", "input",
                 "provenance", "metrics")
CHANNEL_ORDERS = ("RGB", "BGR")
# Bounds of the input contract's value_range (adsrt writes [0, 1]). The runtime maps uint8 frames onto
# it in float32 and divides by hi - lo on the way back: bounds beyond a 16-bit image's range or a span
# of almost nothing (1e-300) would give inf or NaN at the first frame.
MAX_ABS_VALUE = 65535.0
MIN_VALUE_SPAN = 1e-3
# Dtypes of weight and delta tensors: what torch checks for NaN and loads into the fp32 networks. The
# float8 types are refused (torch cannot even run isfinite on float8_e4m3fn).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
# Nesting of the JSON header (a real one has 5 levels: provenance holds the preset's values). A header
# that json.loads just manages to parse, hundreds deep, would still make json.dumps (re-saving, the
# digest) raise RecursionError later, from a deeper stack.
MAX_HEADER_DEPTH = 32
_NAME_RE = re.compile(r"^[a-z][a-z0-9_+-]*$")


def _wrong(name: str, expected: str, value: Any) -> BundleError:
    return BundleError(f"{name} must be {expected}, got {type(value).__name__} {short_repr(value)}")


@dataclass(frozen=True)
class InputContract:
    """What the restorer expects: RGB, NCHW, float in [0, 1]; it pads to ``pad_multiple`` itself.

    Validated on construction (:class:`BundleError`); ``value_range`` is stored as two floats.
    """

    channel_order: str = "RGB"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (0.0, 1.0)
    pad_multiple: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.channel_order, str) or self.channel_order not in CHANNEL_ORDERS:
            raise _wrong("input channel_order", f"one of {', '.join(CHANNEL_ORDERS)}", self.channel_order)
        if not isinstance(self.layout, str) or self.layout != "NCHW":
            raise _wrong("input layout", "NCHW", self.layout)
        vr = self.value_range
        # The runtime divides by hi - lo: equal bounds would fail at the first frame, inverted ones invert it.
        if not (isinstance(vr, (tuple, list)) and len(vr) == 2 and all(map(is_finite_number, vr))
                and -MAX_ABS_VALUE <= vr[0] and vr[0] + MIN_VALUE_SPAN <= vr[1] <= MAX_ABS_VALUE):
            raise _wrong("input value_range", f"two numbers lo < hi in [-{MAX_ABS_VALUE:g}, {MAX_ABS_VALUE:g}] "
                         f"(hi - lo >= {MIN_VALUE_SPAN:g})", vr)
        object.__setattr__(self, "value_range", (float(vr[0]), float(vr[1])))
        p = self.pad_multiple
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_PAD_MULTIPLE:
            raise _wrong("input pad_multiple", f"an int in [1, {MAX_PAD_MULTIPLE}]", p)

    @classmethod
    def from_dict(cls, d: Any) -> InputContract:
        if not isinstance(d, dict):
            raise _wrong("input", "an object", d)
        names = [f.name for f in fields(cls)]
        if set(d) != set(names):
            raise BundleError(f"input must have the keys {names}, got {short_repr(sorted(d))}")
        return cls(**d)


@dataclass
class Bundle:
    """A trained adsrt model in memory: UM + sparse per-degradation deltas + classifier + metadata."""

    backbone: NAFNetConfig
    um_state: dict[str, torch.Tensor]
    degradations: list[str]
    granularity: str
    q: float
    deltas: Deltas
    classifier: ClassifierConfig | None = None
    classifier_state: dict[str, torch.Tensor] | None = None
    input: InputContract = field(default_factory=InputContract)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def build_um(self) -> NAFNet:
        """A fresh backbone holding the UM weights (fp32, CPU, eval mode)."""
        model = build_backbone(self.backbone)
        model.load_state_dict(self.um_state, strict=True)
        return model.eval()

    def build_classifier(self) -> DegradationClassifier:
        if self.classifier is None or self.classifier_state is None:
            raise BundleError("this bundle has no degradation classifier")
        model = build_classifier(self.classifier)
        model.load_state_dict(self.classifier_state, strict=True)
        return model.eval()

    def unit_layouts(self) -> dict[str, UnitLayout]:
        """Unit layouts of every eligible layer of the backbone, at the bundle's granularity."""
        return unit_layouts(_skeleton(build_backbone, self.backbone), self.granularity)

    def digest(self) -> str:
        """SHA-256 (hex) of everything that decides the model's outputs: every tensor (name, dtype, shape,
        bytes) and the header minus provenance/metrics. Same weights -> same digest, whatever file they
        came from; the key of exported graphs and engine caches (:mod:`adsrt.export`)."""
        h = hashlib.sha256()
        header = {k: v for k, v in self.header().items() if k not in ("provenance", "metrics")}
        h.update(json.dumps(header, sort_keys=True).encode())
        for name, t in sorted(to_tensors(self).items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
        return h.hexdigest()

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": {"arch": "nafnet", "config": self.backbone.to_dict()},
            "classifier": None if self.classifier is None else self.classifier.to_dict(),
            "degradations": list(self.degradations),
            "granularity": self.granularity,
            "q": self.q,
            "input": {**asdict(self.input), "value_range": list(self.input.value_range)},
            "provenance": self.provenance,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class BundleSummary:
    """Parameter counts that say what ADS costs on top of the UM."""

    um_params: int
    classifier_params: int
    eligible_units: int
    masked_units: dict[str, int]  # per degradation
    delta_params: dict[str, int]  # per degradation (values only; indices are one int per unit)

    @property
    def total_delta_params(self) -> int:
        return sum(self.delta_params.values())

    def overhead(self, degradation: str | None = None) -> float:
        """Delta values as a fraction of the UM's parameters (one degradation, or all)."""
        n = self.total_delta_params if degradation is None else self.delta_params[degradation]
        return n / self.um_params


def summarize(bundle: Bundle) -> BundleSummary:
    layouts = bundle.unit_layouts()
    return BundleSummary(
        um_params=sum(t.numel() for t in bundle.um_state.values() if t.is_floating_point()),
        classifier_params=0 if bundle.classifier is None else count_params(bundle.build_classifier()),
        eligible_units=sum(layout.n_units for layout in layouts.values()),
        masked_units={d: sum(len(ld.units) for ld in bundle.deltas.get(d, {}).values()) for d in bundle.degradations},
        delta_params={d: sum(ld.n_params for ld in bundle.deltas.get(d, {}).values()) for d in bundle.degradations},
    )


# ----------------------------------------------------------------------------------------------- validation


def _skeleton(build: Callable[[Any], torch.nn.Module], config: Any) -> torch.nn.Module:
    """The network ``build(config)`` with its parameters on the meta device: every name and shape, and no
    memory or initialisation time however large the config (validation needs only the shapes)."""
    with torch.device("meta"):
        return build(config)


def _check_state(label: str, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise BundleError(
            f"{label} weights do not match the architecture: missing {short_repr(missing[:5])}, "
            f"unexpected {short_repr(unexpected[:5])}"
        )
    for name, ref in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise BundleError(f"{label} tensor {name}: shape {tuple(t.shape)}, architecture needs {tuple(ref.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise BundleError(f"{label} tensor {name}: dtype {t.dtype} where {ref.dtype} is needed")
        if not torch.isfinite(t).all():
            raise BundleError(f"{label} tensor {name} holds NaN or infinite values")


def validate(bundle: Bundle) -> None:
    """Raise :class:`BundleError` unless ``bundle`` is internally consistent."""
    if not isinstance(bundle.degradations, list) or not bundle.degradations:
        raise _wrong("degradations", "a non-empty list of names", bundle.degradations)
    for name in bundle.degradations:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise BundleError(f"bad degradation name {short_repr(name)} (a string of lower-case letters, digits, _ + -)")
    if len(set(bundle.degradations)) != len(bundle.degradations):
        raise BundleError(f"duplicate degradation names {short_repr(bundle.degradations)}")
    if not isinstance(bundle.granularity, str) or bundle.granularity not in GRANULARITIES:
        raise BundleError(f"granularity must be one of {GRANULARITIES}, got {short_repr(bundle.granularity)}")
    if not (is_finite_number(bundle.q) and 0.0 < bundle.q <= 0.5):
        raise BundleError(f"q must be in (0, 0.5], got {short_repr(bundle.q)}")
    if bundle.input.pad_multiple % bundle.backbone.pad_multiple:
        raise BundleError(
            f"input pad_multiple {bundle.input.pad_multiple} is not a multiple of the backbone's "
            f"{bundle.backbone.pad_multiple}"
        )

    # Shapes from a meta skeleton: a header may declare a network far larger than the file's tensors,
    # which must not be allocated just to find that out.
    model = _skeleton(build_backbone, bundle.backbone)
    _check_state("UM", bundle.um_state, model)
    layouts = unit_layouts(model, bundle.granularity)

    unknown = sorted(bundle.deltas.keys() - set(bundle.degradations))
    if unknown:
        raise BundleError(f"deltas for degradations not in the bundle's list: {unknown}")
    for d, per_layer in bundle.deltas.items():
        for layer, delta in per_layer.items():
            where = f"delta {d}/{layer}"
            if layer not in layouts:
                raise BundleError(f"{where}: the backbone has no eligible convolution {layer!r}")
            layout = layouts[layer]
            units, values = delta.units, delta.values
            if units.ndim != 1 or units.dtype not in INDEX_DTYPES:
                raise BundleError(f"{where}: units must be a 1-D integer tensor, got {units.dtype} {tuple(units.shape)}")
            if len(units) and (int(units.min()) < 0 or int(units.max()) >= layout.n_units):
                raise BundleError(
                    f"{where}: unit index out of range [0, {layout.n_units}) "
                    f"(min {int(units.min())}, max {int(units.max())})"
                )
            if len(units) > 1 and not bool((units[1:] > units[:-1]).all()):
                raise BundleError(f"{where}: unit indices must be sorted and unique")
            if tuple(values.shape) != (len(units), layout.unit_numel):
                raise BundleError(
                    f"{where}: values have shape {tuple(values.shape)}, expected {(len(units), layout.unit_numel)}"
                )
            if values.dtype not in FLOAT_DTYPES or not torch.isfinite(values).all():
                raise BundleError(f"{where}: values must be finite floats")

    if (bundle.classifier is None) != (bundle.classifier_state is None):
        raise BundleError("classifier config and weights must be given together")
    if bundle.classifier is not None:
        if bundle.classifier.num_classes != len(bundle.degradations) + 1:
            raise BundleError(
                f"classifier has {bundle.classifier.num_classes} classes; a bundle of "
                f"{len(bundle.degradations)} degradations needs {len(bundle.degradations) + 1} (last: clean/unknown)"
            )
        _check_state("classifier", bundle.classifier_state, _skeleton(build_classifier, bundle.classifier))


# ------------------------------------------------------------------------------------------- save and load


def to_tensors(bundle: Bundle) -> dict[str, torch.Tensor]:
    tensors = {f"um/{k}": v.detach().cpu().contiguous() for k, v in bundle.um_state.items()}
    for k, v in (bundle.classifier_state or {}).items():
        tensors[f"dc/{k}"] = v.detach().cpu().contiguous()
    for d, per_layer in bundle.deltas.items():
        for layer, delta in per_layer.items():
            tensors[f"ads/{d}/{layer}/units"] = delta.units.to(torch.int32).cpu().contiguous()
            tensors[f"ads/{d}/{layer}/delta"] = delta.values.to(torch.float32).cpu().contiguous()
    return tensors


def save_bundle(bundle: Bundle, path: str | os.PathLike) -> Path:
    """Validate ``bundle`` and write it to ``path`` atomically. Returns the path."""
    validate(bundle)
    header = json.dumps(bundle.header(), allow_nan=False)
    data = save(to_tensors(bundle), metadata={METADATA_KEY: header})
    path = Path(path)
    atomic_write_bytes(path, data)
    log.info("wrote bundle %s (%.2f MB)", path, len(data) / 1e6)
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, str] | None, dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file; BundleError if safetensors refuses it."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
        tensors = load_file(str(path))
    # SafetensorError: a corrupt table or data (bad JSON, dtype, shape or offsets: the only error fuzzing
    # saw from safetensors 0.8); OSError: the file cannot be read; ValueError: what safetensors' Python
    # layer raises for arguments it rejects. Anything else is a defect to find, not to hide.
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"not a readable safetensors file (truncated or corrupt?): {_reason(exc)}") from exc
    return metadata, tensors


def _reason(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# save_bundle writes strict JSON (allow_nan=False), so NaN, Infinity, or a number that overflows to it
# (1e400) in a header is corruption; refusing them here keeps every loaded header re-savable.
def _reject_constant(name: str) -> Any:
    raise ValueError(f"it holds the non-standard constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} overflows a float")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d + 1)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _parse_header(metadata: dict[str, str] | None) -> dict[str, Any]:
    if not metadata or METADATA_KEY not in metadata:
        raise BundleError(f"a safetensors file, but not an adsrt bundle (no '{METADATA_KEY}' metadata)")
    try:
        header = json.loads(metadata[METADATA_KEY], parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:  # the C scanner recurses per nesting level
        raise BundleError("bundle header is not valid JSON (nested too deeply)") from exc
    except ValueError as exc:  # JSONDecodeError, NaN, or an integer of more than 4300 digits
        raise BundleError(f"bundle header is not valid JSON ({_reason(exc)})") from exc
    if _depth(header) > MAX_HEADER_DEPTH:
        raise BundleError(f"bundle header is nested more than {MAX_HEADER_DEPTH} levels deep")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        fmt = header.get("format") if isinstance(header, dict) else None
        raise BundleError(f"not an adsrt bundle (format {short_repr(fmt)})")
    version = header.get("format_version")
    # An int, not a bool: JSON true would pass as 1 (True == 1 in Python).
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {short_repr(version)}; this adsrt reads version {FORMAT_VERSION} "
            "(re-export the bundle with a matching adsrt)"
        )
    unknown = sorted(header.keys() - set(HEADER_FIELDS))
    if unknown:
        raise BundleError(f"bad bundle header: unknown fields {short_repr(unknown)} (a newer bundle format?)")
    return header


def _split_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict, Deltas]:
    um, dc, parts = {}, {}, {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "um":
            um[rest] = tensor
        elif kind == "dc":
            dc[rest] = tensor
        elif kind == "ads" and rest.count("/") == 2 and rest.rsplit("/", 1)[1] in ("units", "delta"):
            d, layer, what = rest.split("/")
            parts.setdefault((d, layer), {})[what] = tensor
        else:
            raise BundleError(f"unexpected tensor {short_repr(name)} (foreign or newer bundle?)")
    deltas: Deltas = {}
    for (d, layer), pair in parts.items():
        where = f"delta {short_repr(d)}/{short_repr(layer)}"
        if set(pair) != {"units", "delta"}:
            raise BundleError(f"{where} lacks its {'units' if 'units' not in pair else 'delta'} tensor")
        units = pair["units"]
        if units.dtype not in INDEX_DTYPES:
            raise BundleError(f"{where}: units must be integers, got {units.dtype}")
        deltas.setdefault(d, {})[layer] = LayerDelta(units=units.to(torch.int64), values=pair["delta"])
    return um, dc, deltas


def _optional_object(header: dict[str, Any], key: str) -> dict[str, Any]:
    value = header.get(key)
    if value is not None and not isinstance(value, dict):
        raise _wrong(key, "an object or null", value)
    return dict(value or {})


def _from_header(header: dict[str, Any], um: dict, dc: dict, deltas: Deltas) -> Bundle:
    """The bundle the header and tensors describe, each header field's type checked (BundleError)."""
    missing = [k for k in ("backbone", "degradations", "granularity", "q", "input") if k not in header]
    if missing:
        raise BundleError(f"missing fields {missing}")
    info = header["backbone"]
    if not isinstance(info, dict) or set(info) != {"arch", "config"}:
        raise _wrong("backbone", "an object with the keys arch and config", info)
    if not isinstance(info["arch"], str) or info["arch"] not in BACKBONE_ARCHS:
        raise BundleError(f"unknown backbone architecture {short_repr(info['arch'])} (known: {', '.join(BACKBONE_ARCHS)})")
    try:
        backbone = NAFNetConfig.from_dict(info["config"])
    except ConfigError as exc:
        raise BundleError(f"backbone config: {exc}") from exc
    try:
        classifier = None if header.get("classifier") is None else ClassifierConfig.from_dict(header["classifier"])
    except ConfigError as exc:
        raise BundleError(f"classifier config: {exc}") from exc
    degradations = header["degradations"]
    if not isinstance(degradations, list) or not all(isinstance(d, str) for d in degradations):
        raise _wrong("degradations", "a list of names (strings)", degradations)
    granularity, q = header["granularity"], header["q"]
    if not isinstance(granularity, str):
        raise _wrong("granularity", "a string", granularity)
    if not is_finite_number(q):
        raise _wrong("q", "a finite number", q)
    return Bundle(
        backbone=backbone,
        um_state=um,
        degradations=degradations,
        granularity=granularity,
        q=float(q),
        deltas=deltas,
        classifier=classifier,
        classifier_state=dc or None,
        input=InputContract.from_dict(header["input"]),
        provenance=_optional_object(header, "provenance"),
        metrics=_optional_object(header, "metrics"),
    )


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle file. Raises :class:`BundleError` for anything wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    try:
        metadata, tensors = _read_safetensors(path)
        header = _parse_header(metadata)
        um, dc, deltas = _split_tensors(tensors)
        try:
            bundle = _from_header(header, um, dc, deltas)
        except BundleError as exc:
            raise BundleError(f"bad bundle header: {exc}") from exc
        validate(bundle)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    return bundle


# ------------------------------------------------------------------------------------ synthetic bundles


def synthetic_bundle(
    backbone: str | NAFNetConfig = "nafnet-tiny",
    degradations: tuple[str, ...] | list[str] = ("noise", "blur", "rain"),
    *,
    q: float = 0.03,
    granularity: str = "kernel",
    seed: int = 0,
    delta_scale: float = 0.01,
    perturb_um: float = 0.0,
    classifier: ClassifierConfig | None = None,
) -> Bundle:
    """A valid bundle with random weights and random sparse deltas: for tests and for benchmarks that
    need the real sizes before a model is trained. It restores nothing.

    Each degradation masks ``int(q * eligible units)`` units drawn at random over all layers at once (a
    global ranking like FAIG-SD's, so layers get uneven shares). ``perturb_um`` adds Gaussian noise of
    that scale to every UM parameter, so that NAFNet's zero-initialised layer scales let every layer
    reach the output. ``backbone``: a name in :data:`adsrt.arch.BACKBONES` or a config (e.g. a wide one
    for a stress test of the fused update).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = BACKBONES[backbone] if isinstance(backbone, str) else backbone
    model = build_backbone(config)
    if perturb_um:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb_um * torch.randn(p.shape, generator=gen))
    layouts = unit_layouts(model, granularity)
    names = list(layouts)
    bounds = torch.cumsum(torch.tensor([0] + [layouts[n].n_units for n in names]), 0)
    n_chosen = max(1, int(q * int(bounds[-1])))
    deltas: Deltas = {}
    for d in degradations:
        chosen = torch.sort(torch.randperm(int(bounds[-1]), generator=gen)[:n_chosen]).values
        per_layer = {}
        for i, name in enumerate(names):
            lo, hi = torch.searchsorted(chosen, bounds[i : i + 2]).tolist()
            if hi > lo:
                units = chosen[lo:hi] - bounds[i]
                values = delta_scale * torch.randn(len(units), layouts[name].unit_numel, generator=gen)
                per_layer[name] = LayerDelta(units=units, values=values)
        deltas[d] = per_layer
    return Bundle(
        backbone=config,
        um_state={k: v.clone() for k, v in model.state_dict().items()},
        degradations=list(degradations),
        granularity=granularity,
        q=q,
        deltas=deltas,
        classifier=classifier,
        classifier_state=None if classifier is None else build_classifier(classifier).state_dict(),
        input=InputContract(pad_multiple=config.pad_multiple),
        provenance={"made_by": "adsrt.bundle.synthetic_bundle", "seed": seed, "synthetic": True},
    )
