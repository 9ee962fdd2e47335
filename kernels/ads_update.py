"""Fused ADS weight update: ``arena[u] = base[u] + sum_d c[d] * delta_d[u]`` for every masked value.

:func:`ads_update` takes the coefficients ``c`` (a float tensor of k values, in the degradation order
of an :class:`adsrt.kernels.ads_layout.AdsLayout`, on its device) and rewrites every masked weight.
The classifier's softmax (with its temperature) and the temporal smoothing (EMA) of ``c`` for video
live in the runtime, before this update: :func:`adsrt.runtime.backends.smooth_coefficients`.

**One launch for every layer.** All eligible conv weights live in one arena and the masked values of
all layers form one CSR table, so the whole update is a single grid over the union of masked values.
A per-layer update would pay one launch (~3-5 us on a GPU, more through PyTorch's dispatcher) per
layer and per op; nafnet-edge has 64 eligible layers. Here the cost is one launch plus ~2.4 MB of
table traffic (see the layout's docstring), about the price of an empty kernel.

**No host synchronisation.** ``c`` is read from device memory; nothing calls ``.item()``. With
``validate=False`` the launch is therefore capturable in a CUDA graph together with the classifier
before it and the restorer after it (classifier -> update -> restorer, one replay per frame).

**Backends.** ``"triton"``: the kernel below, on CUDA (compute capability 8.0+), or on CPU tensors
under ``TRITON_INTERPRET=1`` (how CI checks it). ``"torch"``: the same table through dense torch ops,
``arena.index_copy_(offsets, base.clone().scatter_add_(entry_rows, c[column] * delta))``: four
vectorised ops of shapes fixed at build time, no sparse op (cuSPARSE is not reliably capturable), no
host sync, no Python loop over units or layers, so it is CUDA-graph capturable too; used on CPU and
wherever Triton is missing (Jetson has no Triton wheels). On a 2-core CPU it costs ~1.2-1.3x the
former ``addmv`` on a CSR matrix (nafnet-edge, ~0.4 ms), close enough for one path everywhere. Both
backends accumulate in fp32 and round once into the arena's dtype.

``"auto"`` picks Triton on CUDA when it is importable, usable and *launches*: Triton 3.9 compiles a
driver stub with a C compiler at the first launch, and runtime-only images (many Jetson containers)
have none. One empty launch per device probes this (cached; it allocates one value and launches, so
let it happen before a graph capture: resolve the backend or run one update first, as the warm-up
does); when it fails, ``"auto"`` uses the torch path and logs one warning per device with the
exception's first line, while a forced ``"triton"`` raises :class:`AdsrtError` with that reason.

**Launches.** Every Triton launch runs under ``torch.cuda.device(layout.device)`` (Triton launches on
the *current* device, so a layout on ``cuda:1`` would otherwise be written by a kernel on ``cuda:0``),
and with ``enable_fp_fusion=False``: no fused multiply-adds, pinned rather than left to Triton's
default (which changes in 3.10), so a Triton upgrade does not shift the weights; in fp32 the kernel
then rounds exactly like the torch reference (product, then sum, in degradation order).

**Bad input: refused, never clamped.** A clamped or zeroed coefficient would silently restore with
weights nobody asked for; refusing keeps the last good weights, like :func:`adsrt.ads.check_coefficients`.

- Wrong shape, dtype or device of ``c``, a layout whose model was unbound from the arena (checked with
  ``validate=True``): :class:`AdsrtError` before anything is written. These checks read metadata only,
  so they never synchronise.
- Non-finite values, ``validate=True`` (default): :class:`AdsrtError`, weights untouched. On CUDA this
  check costs one device-to-host synchronisation per call.
- Non-finite values, ``validate=False`` (the captured fast path): the kernel itself sees the bad value,
  writes nothing (the weights keep their last good values) and sets the layout's sticky
  ``refused_flag``; poll :meth:`AdsLayout.refused` outside the frame loop. On CPU tensors the check is
  a cheap host check either way, with the same outcome.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Sequence

import torch

from adsrt.errors import AdsrtError
from adsrt.kernels.ads_layout import AdsLayout

log = logging.getLogger(__name__)

try:  # Optional: no Triton on Jetson or in minimal CPU installs; the torch path covers them.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by a test that hides triton
    triton = None
    tl = None

HAS_TRITON = triton is not None
TRITON_VERSION = triton.__version__ if HAS_TRITON else "none"  # recorded next to benchmark rows
BACKENDS = ("auto", "triton", "torch")
_BLOCK = 1024  # union values per program: 4 warps x 32 lanes x 8 values
_NUM_WARPS = 4
_MIN_CAPABILITY = (8, 0)  # Triton's floor (Orin 8.7 yes, Xavier 7.2 no)
# Fused multiply-adds pinned off: Triton's default changes in 3.10, and an upgrade must not shift the
# weights. Off, the kernel rounds like the fp32 torch reference (product, then sum). The interpreter
# accepts the option and ignores it (it drops launch options the kernel does not declare).
_LAUNCH_OPTIONS = {"enable_fp_fusion": False}


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if HAS_TRITON:

    @triton.jit
    def _ads_update_kernel(
        arena_ptr,
        offsets_ptr,
        base_ptr,
        row_ptr_ptr,
        column_ptr,
        delta_ptr,
        coef_ptr,  # c [K]
        refused_ptr,  # int32 [1]: set to 1 when c is not finite
        n_union,
        K: tl.constexpr,
        BLOCK_K: tl.constexpr,  # a power of two > K; the padding lanes load 0.0 (finite, contributes nothing)
        MAX_ROW: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        kk = tl.arange(0, BLOCK_K)
        # Every program loads c itself (K <= a few values, L1/L2 resident): no second launch and no
        # scratch buffer that programs would race on.
        c = tl.load(coef_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        ok = tl.sum((tl.abs(c) < float("inf")).to(tl.int32), axis=0) == BLOCK_K  # false for NaN too

        c = tl.where(ok, c, 0.0)  # no inf * 0 = NaN in the masked-off lanes below
        # A refused input shrinks the grid's work to nothing (a block-and-scalar mask would be the
        # natural spelling, but the interpreter mistypes it).
        n_live = tl.where(ok, n_union, 0)
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = rows < n_live
        start = tl.load(row_ptr_ptr + rows, mask=live, other=0)
        end = tl.load(row_ptr_ptr + rows + 1, mask=live, other=0)
        acc = tl.load(base_ptr + rows, mask=live, other=0.0)  # fp32 accumulation, whatever the arena
        for j in tl.static_range(MAX_ROW):
            entry = start + j
            has = live & (entry < end)
            d = tl.load(column_ptr + entry, mask=has, other=0)
            v = tl.load(delta_ptr + entry, mask=has, other=0.0)
            # c[d] as a select-and-sum over the K registers (no gather from a register vector).
            c_d = tl.sum(tl.where(d[:, None] == kk[None, :], c[None, :], 0.0), axis=1)
            acc += c_d * v
        dst = tl.load(offsets_ptr + rows, mask=live, other=0)
        tl.store(arena_ptr + dst, acc.to(arena_ptr.dtype.element_ty), mask=live)
        tl.store(refused_ptr, 1, mask=ok == 0)

    @triton.jit
    def _empty_kernel(x_ptr):
        """Does nothing: the launch-overhead floor that the fused update is compared with."""
        pass


# --------------------------------------------------------------------------------------------- dispatch


@functools.lru_cache(maxsize=16)
def _cuda_capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _triton_blocker(device: torch.device) -> str | None:
    """Why Triton cannot run on ``device``'s tensors, or None when it can."""
    if not HAS_TRITON:
        return "triton is not installed"
    if device.type not in ("cpu", "cuda"):
        return f"Triton does not run on {device.type}"
    if triton_interpreted():
        return None
    if device.type == "cpu":
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    if _cuda_capability(device.index) < _MIN_CAPABILITY:
        return f"Triton needs a GPU of compute capability {_MIN_CAPABILITY[0]}.{_MIN_CAPABILITY[1]}+"
    return None


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device, a no-op context otherwise (also the GPU check's).

    Triton launches on the *current* CUDA device, whatever device the pointers live on; without the
    guard a layout on ``cuda:1`` would be updated by a kernel launched on ``cuda:0``."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch_empty(device: torch.device) -> None:
    """One launch of the empty kernel on ``device`` (the probe of :func:`_triton_launch_blocker`)."""
    with device_guard(device):
        _empty_kernel[(1,)](torch.zeros(1, device=device), **_LAUNCH_OPTIONS)


_LAUNCH_BLOCKERS: dict[tuple[str, int | None, bool], str | None] = {}  # probe results, per device
_WARNED: set[tuple[str, int | None, bool]] = set()  # devices whose fallback was logged


def _device_key(device: torch.device) -> tuple[str, int | None, bool]:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return device.type, index, triton_interpreted()


def _triton_launch_blocker(device: torch.device) -> str | None:
    """Why a Triton launch on ``device`` fails (the exception's first line), or None when it works.

    Probed once per device with one empty launch, then cached. The first launch is where Triton 3.9
    compiles its driver stub with a C compiler, which runtime-only images (many Jetson containers) lack;
    the probe finds that before a frame does. Call it only where :func:`_triton_blocker` found nothing.
    """
    key = _device_key(device)
    if key not in _LAUNCH_BLOCKERS:
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            # a probe would compile and allocate inside the capture, and a failure would poison the cache
            raise AdsrtError("resolve the ADS update backend (or run one update) before a CUDA graph capture")
        try:
            _launch_empty(device)
            _LAUNCH_BLOCKERS[key] = None
        except Exception as exc:  # whatever stops a launch (no C compiler, no driver, ...) stops them all
            first_line = next(iter(str(exc).strip().splitlines()), "")
            reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
            _LAUNCH_BLOCKERS[key] = f"a test launch failed ({reason})"
    return _LAUNCH_BLOCKERS[key]


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """Which implementation runs for tensors on ``device``: ``"triton"`` or ``"torch"``.

    ``"auto"`` is Triton on a CUDA device of compute capability 8.0+ when Triton is installed, not
    interpreted and a probe launch succeeds (once per device, cached), the torch path otherwise (CPU
    included: the interpreter is for checking kernels, not for speed); a failed probe is logged once
    per device as a warning. Forcing ``"triton"`` where it cannot run or launch raises
    :class:`AdsrtError` with the reason.
    """
    if backend not in BACKENDS:
        raise AdsrtError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto" and (device.type != "cuda" or triton_interpreted()):
        return "torch"
    blocker = _triton_blocker(device)
    if blocker is None:
        blocker = _triton_launch_blocker(device)
        if blocker is not None and backend == "auto" and _device_key(device) not in _WARNED:
            _WARNED.add(_device_key(device))
            log.warning("Triton cannot launch on %s, ADS updates use the torch path: %s", device, blocker)
    if blocker is None:
        return "triton"
    if backend == "triton":
        raise AdsrtError(f"backend 'triton' unavailable: {blocker}")
    return "torch"


# ------------------------------------------------------------------------------------------- validation


def _as_vector(layout: AdsLayout, x: torch.Tensor | Sequence[float], n: int, what: str) -> torch.Tensor:
    """Shape/dtype/device checks (metadata only, no sync); a flat contiguous view or copy on the device."""
    if not isinstance(x, torch.Tensor):
        # Convenience for scripts and tests; a frame loop should pass a device tensor.
        try:
            x = torch.as_tensor(x, dtype=torch.float32, device=layout.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise AdsrtError(f"{what} must be a float tensor or a sequence of numbers: {exc}") from exc
    if not x.is_floating_point():
        raise AdsrtError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if x.device != layout.device:
        raise AdsrtError(f"{what} is on {x.device}, the layout on {layout.device} (no implicit copies on the fast path)")
    if x.numel() != n:
        raise AdsrtError(f"expected {n} {what} values for degradations {list(layout.degradations)}, got {x.numel()}")
    return x.reshape(-1).contiguous()


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):  # a sync on CUDA: only with validate=True
        raise AdsrtError(f"{what} must be finite, got {x.tolist()}")


def _check_bound(layout: AdsLayout) -> None:
    if not layout.is_bound():
        raise AdsrtError(
            "the model's conv weights are no longer views of the layout's arena (model.to()/half() or a "
            "new weight replaced them); build the layout again"
        )


# -------------------------------------------------------------------------------------------- launchers


def _launch_triton(layout: AdsLayout, c: torch.Tensor) -> None:
    k = layout.k
    # At least one program, so that a refused c raises the flag even when nothing is masked.
    grid = (max(1, triton.cdiv(layout.n_union, _BLOCK)),)
    with device_guard(layout.device):
        _ads_update_kernel[grid](
            layout.arena,
            layout.offsets,
            layout.base,
            layout.row_ptr,
            layout.column,
            layout.delta,
            c,
            layout.refused_flag,
            layout.n_union,
            K=k,
            BLOCK_K=triton.next_power_of_2(k + 1),
            MAX_ROW=layout.max_row,
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            **_LAUNCH_OPTIONS,
        )


def _torch_update(layout: AdsLayout, c: torch.Tensor, *, device_checks: bool) -> None:
    """The torch path: ``arena[offsets] = base + sum over each row's entries of c[column] * delta``.

    Dense and capture-safe: a gather, a product, a scatter-add and an indexed copy, all of shapes fixed
    when the layout was built (no sparse op, no host sync, no data-dependent size). The sum is fp32 and
    rounds once into the arena's dtype. On the CPU the scatter-add runs in entry order, so the result
    is bit-equal to the fp32 reference; on CUDA it is atomic and a row's (at most k) products may be
    added in another order: last-bit differences, no more.

    ``device_checks`` (CUDA tensors): the finiteness decision stays on the device (``torch.where``), so
    nothing synchronises; on CPU tensors a host check is cheaper and just as sync-free.
    """
    ok = None
    if device_checks:
        ok = torch.isfinite(c).all()
        layout.refused_flag.copy_(torch.where(ok, layout.refused_flag, 1))
    elif not bool(torch.isfinite(c).all()):
        layout.refused_flag.fill_(1)
        return
    c = c.float() if ok is None else torch.where(ok, c.float(), 0.0)
    if layout.n_union:
        contrib = torch.index_select(c, 0, layout.column).mul_(layout.delta)  # fp32 [E]
        # scatter_add_ rather than index_add_: the same sum (1-D), ~1.4x faster on a 2-core CPU
        acc = layout.base.clone().scatter_add_(0, layout.entry_rows, contrib)
        values = acc.to(layout.dtype)  # one rounding
        if ok is not None:
            values = torch.where(ok, values, layout.arena[layout.offsets_long])
        layout.arena.index_copy_(0, layout.offsets_long, values)


# ------------------------------------------------------------------------------------------- public API


def ads_update(
    layout: AdsLayout,
    c: torch.Tensor | Sequence[float],
    *,
    backend: str = "auto",
    validate: bool = True,
) -> None:
    """Set every masked weight to ``W_um + sum_d c[d] * delta_d`` in one launch.

    ``c``: k floats in the layout's degradation order, on the layout's device (the classifier's
    probabilities without the clean class, smoothed or not: see
    :func:`adsrt.runtime.backends.smooth_coefficients`). The result does not depend on what the
    weights held before. ``validate=False`` is the sync-free path for CUDA graphs; see the module
    docstring for what is refused and how.
    """
    c = _as_vector(layout, c, layout.k, "coefficient")
    which = resolve_backend(layout.device, backend)
    if validate:
        _check_bound(layout)
        _check_finite(c, "coefficients")
    if which == "triton":
        _launch_triton(layout, c)
    else:
        _torch_update(layout, c, device_checks=layout.device.type != "cpu")


def empty_launch(x: torch.Tensor) -> None:
    """Launch a kernel that does nothing on ``x``'s device: the floor of any Triton launch (benchmarks)."""
    if not HAS_TRITON:
        raise AdsrtError("empty_launch needs triton")
    with device_guard(x.device):
        _empty_kernel[(1,)](x, **_LAUNCH_OPTIONS)
