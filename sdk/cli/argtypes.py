"""argparse value types of the CLI: a bad number is a usage error (exit 2) naming the option's rule, before
any file is opened or model loaded. ``float("nan")`` and ``inf`` parse as floats, so every float type
checks finiteness; seeds must be >= 0 (NumPy refuses negative seeds deep inside a run otherwise)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["add_max_pixels_option", "finite_float", "int_in", "nonnegative_int", "positive_int", "seed"]


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An int in ``[lo, hi]`` (no upper bound when ``hi`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {_range(lo, hi)}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False) -> Callable[[str], float]:
    """A finite float within the given bounds (open or closed)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value) or below or above:
            bounds = [f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else "",
                      f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else ""]
            rule = " and ".join(b for b in bounds if b)
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + rule if rule else ''}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def _range(lo: int, hi: int | None) -> str:
    return f">= {lo}" if hi is None else f"in [{lo}, {hi}]"


positive_int = int_in(1)
nonnegative_int = int_in(0)
seed = int_in(0, 2**63 - 1)


def add_max_pixels_option(p: argparse.ArgumentParser) -> None:
    """``--max-pixels N``: the pixel budget of one image or frame, checked on its header before decoding."""
    from adsrt.imageio import MAX_PIXELS

    p.add_argument("--max-pixels", type=nonnegative_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images and frames of more than N pixels, before decoding them (default {MAX_PIXELS:,}"
                        " = 16384 x 16384; 0 = no limit)")
