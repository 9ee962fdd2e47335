"""How a training stage uses the machine: threads, memory format, autocast and ``torch.compile``.

One place for the choices every stage makes the same way (``adsrt bench train`` measures each of them,
``benchmarks/results/train.csv``):

- **threads**: torch's intra-op threads default to every core the process may run on (its CPU affinity),
  divided among the processes of this machine (``LOCAL_WORLD_SIZE``); an explicit ``OMP_NUM_THREADS`` wins,
  and ``torchrun`` sets it to 1 when it starts several processes (``--threads`` overrides both).
- **channels_last**: the model and its inputs in NHWC. On a CPU, oneDNN's convolutions are faster in it,
  and :class:`adsrt.arch.nafnet.LayerNorm2d` then normalizes with one fused ``layer_norm`` call instead of
  nine elementwise ops (the same function; the eval/export graph keeps its plain ops).
- **autocast**: bf16 (fp16 without bf16) on CUDA; on a CPU only when asked (``cpu_bf16``), since it
  measured slower than fp32 channels_last for the small backbones on a CPU with native bf16 dot products.
- **compile**: ``torch.compile`` when asked; if compiling fails at the first step, the stage logs why and
  goes on eagerly (same weights, same result up to rounding). The first step's time, compile included, is
  reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads for one training process: its share of the cores among this machine's processes."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, local_world))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`, unless ``OMP_NUM_THREADS`` is set,
    which is then left as torch read it). Returns the count in effect."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU reports bf16 dot products (AVX512_BF16 or AMX-BF16); Linux only, else False."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


@dataclass(frozen=True)
class ComputePlan:
    """The resolved choices of one stage on one device (what the bench and the logs report)."""

    device: torch.device
    threads: int
    channels_last: bool
    autocast_dtype: torch.dtype | None  # None: fp32 throughout
    compile: bool

    @property
    def dtype_name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch moved to the device in the plan's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def to_dict(self) -> dict[str, object]:
        """What a stage's output header records of how it was trained."""
        return {"device": str(self.device), "threads": self.threads, "dtype": self.dtype_name,
                "channels_last": self.channels_last, "compile": self.compile}

    def describe(self) -> str:
        return (f"{self.device}, {self.threads} threads, {self.dtype_name}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}, {'compiled' if self.compile else 'eager'}")


def plan_compute(device: torch.device, *, threads: int | None = None, channels_last: bool = True,
                 amp: bool = True, cpu_bf16: bool = False, compile: bool = False) -> ComputePlan:
    """Resolve a stage's compute choices (sets torch's thread count as a side effect)."""
    n = set_threads(threads)
    dtype = None
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device.type == "cpu" and cpu_bf16:
        if not cpu_has_native_bf16():
            log.warning("cpu_bf16: this CPU reports no native bf16 dot products; bf16 autocast will be slow")
        dtype = torch.bfloat16
    return ComputePlan(device=device, threads=n, channels_last=channels_last, autocast_dtype=dtype, compile=compile)


def prepare_model(model: nn.Module, plan: ComputePlan) -> nn.Module:
    """Put ``model`` on the plan's device and memory format (in place; returns it)."""
    model.to(plan.device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class CompiledStep:
    """Run one training step through ``torch.compile(module)``, falling back to ``module`` if compiling fails.

    ``step(net)`` is the caller's step function given the module to call. The first call compiles (its wall
    time is kept in ``first_step_seconds``); an exception there that comes from the compiler switches to
    eager for the rest of the run and the step is retried eagerly, so a run never dies of a compiler bug.
    """

    def __init__(self, module: nn.Module, enabled: bool) -> None:
        self.eager = module
        self.net: nn.Module = module
        self.compiled = False
        self.first_step_seconds: float | None = None
        if enabled:
            try:
                self.net = torch.compile(module)
                self.compiled = True
            except Exception as exc:  # torch.compile raises RuntimeError/ImportError/... where it cannot run
                log.warning("torch.compile is not available here (%s: %s); training eagerly", type(exc).__name__, exc)

    def __call__(self, step: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        if self.first_step_seconds is not None:
            return step(self.net)
        t0 = time.perf_counter()
        try:
            result = step(self.net)
        except Exception as exc:
            if not self.compiled or not _from_compiler(exc):
                raise
            log.warning("torch.compile failed at the first step (%s: %s); training eagerly",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.net, self.compiled = self.eager, False
            result = step(self.net)
        self.first_step_seconds = time.perf_counter() - t0
        if self.compiled:
            log.info("torch.compile: first step (compile included) took %.1f s", self.first_step_seconds)
        return result


def _from_compiler(exc: BaseException) -> bool:
    """Whether an exception was raised by dynamo/inductor (not by the model or the data)."""
    for e in _chain(exc):
        module = type(e).__module__ or ""
        if module.startswith(("torch._dynamo", "torch._inductor")) or type(e).__name__ == "BackendCompilerFailed":
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
