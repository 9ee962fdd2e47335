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

Loading validates everything the runtime relies on (version, tensor names, shapes, dtypes, index
ranges, finiteness) and raises :class:`adsrt.errors.BundleError` with a message naming the problem.
Saving validates first and writes atomically, so a bundle on disk is never half written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
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
from adsrt.errors import BundleError
from adsrt.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "adsrt-bundle"
FORMAT_VERSION = 1
METADATA_KEY = "adsrt"
BACKBONE_ARCHS = ("nafnet",)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_+-]*$")


@dataclass(frozen=True)
class InputContract:
    """What the restorer expects: RGB, NCHW, float in [0, 1]; it pads to ``pad_multiple`` itself."""

    channel_order: str = "RGB"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (0.0, 1.0)
    pad_multiple: int = 16

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        try:
            contract = cls(
                channel_order=str(d["channel_order"]),
                layout=str(d["layout"]),
                value_range=(float(d["value_range"][0]), float(d["value_range"][1])),
                pad_multiple=int(d["pad_multiple"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"bad input contract {d!r}: {exc}") from exc
        if contract.channel_order not in ("RGB", "BGR") or contract.layout != "NCHW" or contract.pad_multiple < 1:
            raise BundleError(f"unsupported input contract {d!r}")
        return contract


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
        return unit_layouts(build_backbone(self.backbone), self.granularity)

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


def _check_state(label: str, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise BundleError(
            f"{label} weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, ref in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise BundleError(f"{label} tensor {name}: shape {tuple(t.shape)}, architecture needs {tuple(ref.shape)}")
        if t.is_floating_point() != ref.is_floating_point():
            raise BundleError(f"{label} tensor {name}: dtype {t.dtype} where {ref.dtype} is needed")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise BundleError(f"{label} tensor {name} holds NaN or infinite values")


def validate(bundle: Bundle) -> None:
    """Raise :class:`BundleError` unless ``bundle`` is internally consistent."""
    if not bundle.degradations:
        raise BundleError("bundle names no degradations")
    if len(set(bundle.degradations)) != len(bundle.degradations):
        raise BundleError(f"duplicate degradation names {bundle.degradations}")
    for name in bundle.degradations:
        if not _NAME_RE.match(name):
            raise BundleError(f"bad degradation name {name!r} (lower-case letters, digits, _ + -)")
    if bundle.granularity not in GRANULARITIES:
        raise BundleError(f"granularity must be one of {GRANULARITIES}, got {bundle.granularity!r}")
    if not (isinstance(bundle.q, (int, float)) and 0.0 < bundle.q <= 0.5):
        raise BundleError(f"q must be in (0, 0.5], got {bundle.q!r}")
    if bundle.input.pad_multiple % bundle.backbone.pad_multiple:
        raise BundleError(
            f"input pad_multiple {bundle.input.pad_multiple} is not a multiple of the backbone's "
            f"{bundle.backbone.pad_multiple}"
        )

    model = build_backbone(bundle.backbone)
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
            if units.ndim != 1 or units.dtype not in (torch.int32, torch.int64):
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
            if not values.is_floating_point() or not torch.isfinite(values).all():
                raise BundleError(f"{where}: values must be finite floats")

    if (bundle.classifier is None) != (bundle.classifier_state is None):
        raise BundleError("classifier config and weights must be given together")
    if bundle.classifier is not None:
        if bundle.classifier.num_classes != len(bundle.degradations) + 1:
            raise BundleError(
                f"classifier has {bundle.classifier.num_classes} classes; a bundle of "
                f"{len(bundle.degradations)} degradations needs {len(bundle.degradations) + 1} (last: clean/unknown)"
            )
        _check_state("classifier", bundle.classifier_state, build_classifier(bundle.classifier))


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


def _parse_header(metadata: dict[str, str] | None, path: Path) -> dict[str, Any]:
    if not metadata or METADATA_KEY not in metadata:
        raise BundleError(f"{path}: a safetensors file, but not an adsrt bundle (no '{METADATA_KEY}' metadata)")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: bundle header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BundleError(f"{path}: not an adsrt bundle (format {header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r}; this adsrt reads version {FORMAT_VERSION} "
            "(re-export the bundle with a matching adsrt)"
        )
    return header


def _split_tensors(tensors: dict[str, torch.Tensor], path: Path) -> tuple[dict, dict, Deltas]:
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
            raise BundleError(f"{path}: unexpected tensor {name!r} (foreign or newer bundle?)")
    deltas: Deltas = {}
    for (d, layer), pair in parts.items():
        if set(pair) != {"units", "delta"}:
            raise BundleError(f"{path}: delta {d}/{layer} lacks its {'units' if 'units' not in pair else 'delta'} tensor")
        units = pair["units"]
        if units.dtype not in (torch.int32, torch.int64):
            raise BundleError(f"{path}: delta {d}/{layer}: units must be integers, got {units.dtype}")
        deltas.setdefault(d, {})[layer] = LayerDelta(units=units.to(torch.int64), values=pair["delta"])
    return um, dc, deltas


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle file. Raises :class:`BundleError` for anything wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    header = _parse_header(metadata, path)
    um, dc, deltas = _split_tensors(tensors, path)
    try:
        backbone_info = header["backbone"]
        if backbone_info.get("arch") not in BACKBONE_ARCHS:
            raise BundleError(f"{path}: unknown backbone architecture {backbone_info.get('arch')!r}")
        backbone = NAFNetConfig.from_dict(backbone_info["config"])
        classifier = None if header.get("classifier") is None else ClassifierConfig.from_dict(header["classifier"])
        q = header["q"]
        if not isinstance(q, (int, float)) or not math.isfinite(q):
            raise BundleError(f"{path}: q must be a number, got {q!r}")
        bundle = Bundle(
            backbone=backbone,
            um_state=um,
            degradations=list(header["degradations"]),
            granularity=header["granularity"],
            q=float(q),
            deltas=deltas,
            classifier=classifier,
            classifier_state=dc or None,
            input=InputContract.from_dict(header["input"]),
            provenance=dict(header.get("provenance") or {}),
            metrics=dict(header.get("metrics") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: bad bundle header ({type(exc).__name__}: {exc})") from exc
    try:
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
