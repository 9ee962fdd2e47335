"""Device-side layout of the swap mode: one weight arena plus a CSR table of the ADS deltas.

Built once per (model, bundle, device, dtype) by :func:`build_ads_layout`; afterwards every frame's
update (:mod:`adsrt.kernels.ads_update`) is one kernel launch over these tensors and nothing else.

**Arena.** Every ADS-eligible convolution weight of the live model (see :func:`adsrt.ads.eligible_convs`)
moves into one contiguous tensor (fp32, fp16 or bf16) and the module's ``weight`` becomes an
``nn.Parameter`` that is a *view* of its slot. One base pointer then addresses every layer, so one
launch can write all of them, and the restorer reads the updated values with no copy. Slots start on
128-byte boundaries (cuDNN and vectorised loads like aligned weights; the padding costs < 0.01% of
nafnet-edge).

**CSR over the union of masked values.** Let ``U`` be the set of arena elements masked by at least one
degradation (the union of the ``M_d``, expanded to values) and ``E`` the (element, degradation) pairs,
``E = sum_d |M_d| * unit_numel``. Row ``r`` of the table is one element of ``U``:

===================  ==========  ============================================================
tensor               per         meaning
===================  ==========  ============================================================
``offsets``  int32   element     where the element lives in the arena (ascending, so writes coalesce)
``base``     fp32    element     its UM value (fp32 even for fp16/bf16 arenas: see below)
``row_ptr``  int32   element+1   entries ``row_ptr[r] .. row_ptr[r+1]`` belong to row ``r``
``column``   int32   entry       the degradation index ``d`` of the entry
``delta``    fp32    entry       ``delta_d`` for that element
===================  ==========  ============================================================

so ``arena[offsets[r]] = base[r] + sum_{j in row r} c[column[j]] * delta[j]``. Storage and traffic grow
with ``sum_d |M_d|``, never with ``k x |U|`` (a dense ``[k, U]`` table would be mostly zeros: at q = 3%
with k = 3 random masks overlap on ~3% of the elements). Each row has at most k entries (masks are
unique per degradation), so the kernel's inner loop has a static bound ``max_row <= k``.

*Bytes per masked value, one update.* Per union element: 4 (offset) + 4 (base) + 4 (row_ptr) read and
2 or 4 written; per entry: 4 (column) + 4 (delta) read. With ``E ~= U`` that is about 24 B per masked
value for an fp32 arena and 22 B for fp16/bf16. nafnet-edge, kernel granularity, q = 3%, k = 3 random
masks: U = 98.5k, E = 101.5k, 2.4 MB per update: about 0.5 us of HBM3e (H200) or 12 us on Orin's
LPDDR5, against a few microseconds of launch overhead, so the table format is not the bottleneck.

*Why element level, not unit level.* A unit-level CSR (arena start + length per unit, delta rows of
``unit_numel``) stores ~12 B of metadata per *unit* instead of 8 B per *value*. In the default setting
(kernel granularity on NAFNet) 49 of 64 eligible layers are 1x1 convs whose units are single values, and
most of the rest are 3x3 depthwise slices (9 values), so there is almost nothing to amortise, while a
unit-level kernel needs a second indirection, uneven work per program (1 to 2304 values per unit) and
a strided path for ``ConvTranspose2d`` filter units. Element level gives one output value per lane,
uniform work, and handles every layout through :meth:`adsrt.ads.UnitLayout.element_offsets`. With
``granularity="filter"`` a unit-level table would save ~8 B per value (one third); revisit if a filter
bundle ever makes the update bandwidth bound.

*Why fp32 base, deltas and accumulation.* A delta is ~1% of its weight; rounding the base to fp16 first
and adding fp16 products would lose most of the delta's bits (fp16 keeps 11). Summing in fp32 and
rounding once when storing gives exactly ``round(W_um + sum_d c_d delta_d)``, the reference
:func:`adsrt.ads.apply_ads` followed by a cast, for every arena dtype.

*Why ``column`` is int32.* The torch path gathers ``c[column]`` with ``index_select``, which takes int32
or int64 indices; int8 would save 3 B per entry, 0.3 MB per update at the setting above, i.e. < 0.1 us
on an H200.

*Torch-path helpers.* The torch path (:func:`adsrt.kernels.ads_update.ads_update` with
``backend="torch"``) scatters with int64 indices, so the build also keeps ``offsets_long`` [U] and
``entry_rows`` [E] (the CSR row of every entry, ``row_ptr`` expanded): 8 B more per union value and
per entry, computed once here so that an update allocates nothing of data-dependent size and never
synchronises. The Triton kernel reads neither.

**Caveats.** ``model.to(...)``, ``model.half()`` or assigning a new ``weight`` replaces the parameter's
storage and silently unbinds it from the arena; :meth:`AdsLayout.is_bound` detects this (the update
checks it when ``validate=True``). Tensors of ``model.state_dict()`` share the arena's storage, so
clone them before saving with safetensors (which refuses shared storage).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.nn.utils import parametrize

from adsrt.ads import Deltas, UnitLayout, eligible_convs
from adsrt.errors import AdsrtError

log = logging.getLogger(__name__)

ARENA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALIGN_BYTES = 128
_INT32_MAX = 2**31 - 1


class AdsSource(Protocol):
    """What a layout needs from a bundle (:class:`adsrt.bundle.Bundle` is one)."""

    um_state: Mapping[str, torch.Tensor]
    deltas: Deltas
    degradations: Sequence[str]
    granularity: str


@dataclass(frozen=True)
class ArenaSlot:
    """Where one eligible convolution weight lives in the arena."""

    name: str  # parameter name, e.g. "encoders.0.0.conv1.weight"
    start: int  # first element in the arena
    unit_layout: UnitLayout

    @property
    def numel(self) -> int:
        return self.unit_layout.numel

    @property
    def shape(self) -> tuple[int, ...]:
        return self.unit_layout.shape


@dataclass(eq=False)
class AdsLayout:
    """The arena, the CSR delta table and the small device buffers of the fused update.

    Build it with :func:`build_ads_layout`; the fields are read by the update kernels and are not
    meant to be changed by hand. See the module docstring for the format.
    """

    degradations: tuple[str, ...]
    granularity: str
    arena: torch.Tensor  # [n_arena], the model's eligible conv weights (views point here)
    slots: dict[str, ArenaSlot]
    offsets: torch.Tensor  # int32 [U], ascending arena index of each union element
    base: torch.Tensor  # float32 [U], UM value of each union element
    row_ptr: torch.Tensor  # int32 [U + 1]
    column: torch.Tensor  # int32 [E], degradation index of each entry
    delta: torch.Tensor  # float32 [E]
    max_row: int  # longest row (<= k): the kernel's static inner-loop bound
    # Sticky int32 flag: set on the device when an unvalidated update was refused (non-finite input).
    refused_flag: torch.Tensor
    modules: dict[str, nn.Module] = field(repr=False)
    # torch-path helpers derived from the table above, once at build time (index_copy_ and scatter_add_
    # want int64): ``offsets_long`` [U] and ``entry_rows`` [E], the CSR row of every entry (row_ptr
    # expanded). 8 more bytes per union value and per entry; the Triton kernel reads neither.
    offsets_long: torch.Tensor = field(init=False, repr=False)
    entry_rows: torch.Tensor = field(init=False, repr=False)
    _bindings: list = field(init=False, repr=False)

    def __post_init__(self) -> None:
        size = self.arena.element_size()
        # (parameter dict, the arena view, its address): what is_bound() compares against
        self._bindings = [
            (module._parameters, module.weight, self.arena.data_ptr() + self.slots[name].start * size)
            for name, module in self.modules.items()
        ]
        self.offsets_long = self.offsets.long()
        lengths = self.row_ptr[1:].long() - self.row_ptr[:-1].long()
        # output_size: no device-to-host sync to size the result (a build-time cost either way)
        self.entry_rows = torch.repeat_interleave(
            torch.arange(self.n_union, device=self.row_ptr.device), lengths, output_size=self.n_entries
        )

    # ----------------------------------------------------------------------------------------- sizes

    @property
    def k(self) -> int:
        return len(self.degradations)

    @property
    def device(self) -> torch.device:
        return self.arena.device

    @property
    def dtype(self) -> torch.dtype:
        return self.arena.dtype

    @property
    def n_union(self) -> int:
        """Arena elements masked by at least one degradation (rows of the table)."""
        return self.offsets.numel()

    @property
    def n_entries(self) -> int:
        """(element, degradation) pairs: ``sum_d |M_d| * unit_numel``."""
        return self.delta.numel()

    @property
    def table_bytes(self) -> int:
        """Device memory of the CSR table the kernel reads (excluding the torch-path helpers)."""
        return sum(t.numel() * t.element_size() for t in (self.offsets, self.base, self.row_ptr, self.column, self.delta))

    @property
    def update_bytes(self) -> int:
        """Bytes one fused update must move: the whole table read, the union elements written."""
        return self.table_bytes + self.n_union * self.arena.element_size() + 4 * self.k

    # ------------------------------------------------------------------------------------- state

    def is_bound(self) -> bool:
        """True while every eligible conv weight of the model is still the view into the arena.

        Checks parameter identity and data pointer per layer through the modules' parameter dicts
        (``nn.Module.__getattr__`` would make this ~3 us per layer)."""
        return all(
            params.get("weight") is weight and weight.data_ptr() == ptr for params, weight, ptr in self._bindings
        )

    def refused(self) -> bool:
        """Whether an update with ``validate=False`` was refused (non-finite c) since the last
        :meth:`clear_refused`. Reads device memory, so it synchronises: call it outside the frame loop."""
        return bool(self.refused_flag.item())

    def clear_refused(self) -> None:
        self.refused_flag.zero_()

    def describe(self) -> str:
        return (
            f"ADS layout: {len(self.slots)} convs, arena {self.arena.numel():,} x {self.dtype} on {self.device}; "
            f"k={self.k}, {self.n_union:,} masked values, {self.n_entries:,} entries "
            f"(max {self.max_row} per value), table {self.table_bytes / 1e6:.2f} MB, "
            f"{self.update_bytes / 1e6:.2f} MB moved per update"
        )


# ------------------------------------------------------------------------------------------------ build


def _resolve_target(
    convs: Mapping[str, nn.Module], device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    devices = {m.weight.device for m in convs.values()}
    dtypes = {m.weight.dtype for m in convs.values()}
    if device is None and len(devices) > 1:
        raise AdsrtError(f"eligible conv weights are on several devices {sorted(map(str, devices))}; pass device=")
    if dtype is None and len(dtypes) > 1:
        raise AdsrtError(f"eligible conv weights have several dtypes {sorted(map(str, dtypes))}; pass dtype=")
    target_device = torch.device(device) if device is not None else next(iter(devices))
    target_dtype = dtype if dtype is not None else next(iter(dtypes))
    if target_dtype not in ARENA_DTYPES:
        raise AdsrtError(f"arena dtype must be one of {[str(d) for d in ARENA_DTYPES]}, got {target_dtype}")
    if target_device.type == "cuda" and not torch.cuda.is_available():
        raise AdsrtError("device cuda requested, but torch sees no CUDA device")
    return target_device, target_dtype


def _check_source(source: AdsSource, layouts: Mapping[str, UnitLayout]) -> None:
    """Bundle/model mismatches, found before anything is modified."""
    degradations = list(source.degradations)
    if not degradations:
        raise AdsrtError("the bundle names no degradations")
    if len(set(degradations)) != len(degradations):
        raise AdsrtError(f"duplicate degradation names {degradations}")
    unknown = sorted(set(source.deltas) - set(degradations))
    if unknown:
        raise AdsrtError(f"deltas for degradations not in the bundle's list: {unknown}")
    for name, layout in layouts.items():
        um = source.um_state.get(name)
        if um is None:
            raise AdsrtError(f"bundle/model mismatch: the bundle's UM has no weight {name!r}")
        if tuple(um.shape) != layout.shape:
            raise AdsrtError(
                f"bundle/model mismatch: {name} is {layout.shape} in the model, {tuple(um.shape)} in the bundle"
            )
    for d, per_layer in source.deltas.items():
        for layer, delta in per_layer.items():
            where = f"delta {d}/{layer}"
            if layer not in layouts:
                raise AdsrtError(f"bundle/model mismatch: {where}: the model has no eligible convolution {layer!r}")
            layout, units = layouts[layer], delta.units
            if units.ndim != 1 or units.dtype not in (torch.int32, torch.int64):
                raise AdsrtError(f"{where}: units must be a 1-D integer tensor")
            if tuple(delta.values.shape) != (len(units), layout.unit_numel):
                raise AdsrtError(
                    f"bundle/model mismatch: {where}: values {tuple(delta.values.shape)}, expected "
                    f"{(len(units), layout.unit_numel)} at granularity {layout.granularity!r}"
                )
            if len(units) and (int(units.min()) < 0 or int(units.max()) >= layout.n_units):
                raise AdsrtError(f"{where}: unit index out of range [0, {layout.n_units})")
            if len(torch.unique(units)) != len(units):
                raise AdsrtError(f"{where}: unit indices must be unique")
            if not torch.isfinite(delta.values).all():
                raise AdsrtError(f"{where}: delta values must be finite")


def _slot_starts(layouts: Mapping[str, UnitLayout], element_size: int, align_bytes: int) -> tuple[dict[str, int], int]:
    align = max(1, align_bytes // element_size)
    starts, pos = {}, 0
    for name, layout in layouts.items():
        starts[name] = pos
        pos += -(-layout.numel // align) * align
    return starts, pos


def _csr_table(
    source: AdsSource, layouts: Mapping[str, UnitLayout], starts: Mapping[str, int], n_arena: int
) -> tuple[torch.Tensor, ...]:
    """(offsets, base, row_ptr, column, delta, max_row) on the CPU; see the module docstring."""
    offsets, columns, values = [], [], []
    for d_index, d in enumerate(source.degradations):
        for layer, delta in source.deltas.get(d, {}).items():
            flat = layouts[layer].element_offsets(delta.units.cpu()).reshape(-1) + starts[layer]
            offsets.append(flat)
            columns.append(torch.full_like(flat, d_index))
            values.append(delta.values.detach().cpu().float().reshape(-1))
    if not offsets:  # a bundle without any masked unit: the update is a no-op (UM only)
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, torch.zeros(0), torch.zeros(1, dtype=torch.int64), empty, torch.zeros(0), 0
    flat_offsets, flat_columns, flat_values = torch.cat(offsets), torch.cat(columns), torch.cat(values)
    # Sort by (arena offset, degradation): rows ascend through memory and each row lists d in order.
    order = torch.argsort(flat_offsets * len(source.degradations) + flat_columns)
    flat_offsets, flat_columns, flat_values = flat_offsets[order], flat_columns[order], flat_values[order]
    union, counts = torch.unique_consecutive(flat_offsets, return_counts=True)
    row_ptr = torch.zeros(len(union) + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(counts, 0)
    # Base values straight from the bundle's UM (fp32), laid out like the arena.
    um_arena = torch.zeros(n_arena, dtype=torch.float32)
    for layer in {layer for per_layer in source.deltas.values() for layer in per_layer}:
        um_arena[starts[layer] : starts[layer] + layouts[layer].numel] = source.um_state[layer].detach().cpu().float().reshape(-1)
    return union, um_arena[union], row_ptr, flat_columns, flat_values, int(counts.max())


def build_ads_layout(
    model: nn.Module,
    bundle: AdsSource,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    align_bytes: int = ALIGN_BYTES,
) -> AdsLayout:
    """Move ``model``'s eligible conv weights into one arena and build the CSR table of ``bundle``'s deltas.

    ``device`` and ``dtype`` default to those of the model's conv weights; when given and different,
    the whole model is moved first with ``model.to`` (in place, like ``nn.Module.to``), so norms and
    biases follow. The arena starts with the model's current weights: load the UM into the model first,
    as for :func:`adsrt.ads.apply_ads` (only masked values are rewritten by updates).

    Raises :class:`AdsrtError` on any bundle/model mismatch (missing or extra layers, shapes, unit
    widths of another granularity, unknown degradations, bad indices), on parametrized or shared conv
    weights and on unsupported dtypes, before the model is modified.
    """
    convs = eligible_convs(model)
    if not convs:
        raise AdsrtError("the model has no ADS-eligible convolutions")
    layouts = {
        name: UnitLayout(name, tuple(m.weight.shape), isinstance(m, nn.ConvTranspose2d), bundle.granularity)
        for name, m in convs.items()
    }
    for name, module in convs.items():
        if parametrize.is_parametrized(module, "weight"):
            raise AdsrtError(f"{name} is parametrized (weight norm?); remove the parametrization before binding")
    if len({id(m.weight) for m in convs.values()}) != len(convs):
        raise AdsrtError("some eligible convolutions share one weight tensor; the arena cannot hold both")
    _check_source(bundle, layouts)
    target_device, target_dtype = _resolve_target(convs, device, dtype)
    element_size = torch.empty(0, dtype=target_dtype).element_size()
    starts, n_arena = _slot_starts(layouts, element_size, align_bytes)
    offsets, base, row_ptr, column, delta, max_row = _csr_table(bundle, layouts, starts, n_arena)
    if n_arena > _INT32_MAX or len(delta) > _INT32_MAX:
        raise AdsrtError(f"arena of {n_arena:,} values or {len(delta):,} entries exceeds the int32 indices")

    # Validation is over: from here on the model changes.
    if any(m.weight.device != target_device or m.weight.dtype != target_dtype for m in convs.values()):
        model.to(device=target_device, dtype=target_dtype)
    arena = torch.zeros(n_arena, dtype=target_dtype, device=target_device)
    with torch.no_grad():
        for name, module in convs.items():
            view = arena[starts[name] : starts[name] + layouts[name].numel].view(layouts[name].shape)
            view.copy_(module.weight)
            # Parameter(view) aliases the arena's storage: updates to the arena are the weights.
            module.weight = nn.Parameter(view, requires_grad=module.weight.requires_grad)

    def dev(t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        return t.to(device=target_device, dtype=dt).contiguous()

    layout = AdsLayout(
        degradations=tuple(bundle.degradations),
        granularity=bundle.granularity,
        arena=arena,
        slots={name: ArenaSlot(name, starts[name], layouts[name]) for name in convs},
        offsets=dev(offsets, torch.int32),
        base=dev(base, torch.float32),
        row_ptr=dev(row_ptr, torch.int32),
        column=dev(column, torch.int32),
        delta=dev(delta, torch.float32),
        max_row=max_row,
        refused_flag=torch.zeros(1, dtype=torch.int32, device=target_device),
        modules=dict(convs),
    )
    log.debug("%s", layout.describe())
    return layout
