"""Config helpers shared by the network configs: validation and the JSON round trip of the bundle header.

Configs follow timm's style: frozen dataclasses with ``to_dict`` / ``from_dict`` (the dict goes into
the bundle's JSON header). Bad values raise :class:`adsrt.errors.ConfigError` (a ``ValueError``), which
the bundle loader reports as a bad bundle.

A bundle header is untrusted input, and a network is built from it: every number of a config has an
upper bound (the ``MAX_*`` constants of :mod:`adsrt.arch.nafnet` and :mod:`adsrt.arch.classifier`), and
the parameter count the config implies, computed arithmetically before any module exists, is bounded by
:data:`MAX_PARAMS`. So a header of a few bytes can never make the loader allocate gigabytes or loop for
hours; the bounds sit far above every real model.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from typing import Any, TypeVar

from adsrt.errors import ConfigError

__all__ = ["MAX_PARAMS", "HeaderConfig", "check_int", "check_int_tuple", "check_params", "is_finite_number",
           "is_int", "short_repr"]

# Parameters of one network (UM or classifier) a config may declare. The largest published NAFNet
# (width 64, 36 blocks, SIDD) has about 116M; adsrt's edge models have well under 1M.
MAX_PARAMS = 200_000_000

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def short_repr(value: Any) -> str:
    """``repr`` cut to about 80 characters and two levels of nesting: error messages quote values read
    from untrusted files, which may be megabytes long or nested a thousand deep (plain ``repr`` would
    then fill the terminal or raise RecursionError)."""
    return _REPR.repr(value)


def is_int(value: Any) -> bool:
    """An int and not a bool (JSON ``true`` and Python's ``True`` are no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or a finite float that converts to a float; not a bool (JSON ``true`` is no number, though
    Python's True == 1), nor an integer beyond the float range (JSON allows 400 digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # math.isfinite converts an int to a float first
        return False


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    # bool is an int subclass; a JSON ``true`` must not silently become a width of 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__} {short_repr(value)}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {short_repr(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {short_repr(value)}")


def check_int_tuple(name: str, value: Any, minimum: int, maximum: int | None = None,
                    max_len: int | None = None) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(f"{name} must be a tuple of ints, got {type(value).__name__} {short_repr(value)}")
    # The length first: a header may hold a list of millions of entries.
    if max_len is not None and len(value) > max_len:
        raise ConfigError(f"{name} may have at most {max_len} entries, got {len(value)}")
    for i, v in enumerate(value):
        check_int(f"{name}[{i}]", v, minimum, maximum)


def check_params(name: str, n_params: int) -> None:
    """ConfigError if a network of ``n_params`` parameters is beyond :data:`MAX_PARAMS`."""
    if n_params > MAX_PARAMS:
        raise ConfigError(f"{name} would have {n_params:,} parameters; at most {MAX_PARAMS:,} are supported")


_Config = TypeVar("_Config", bound="HeaderConfig")


class HeaderConfig:
    """Base of the network configs: the JSON round trip of the bundle header.

    ``to_dict`` gives a JSON-safe dict (tuples as lists); ``from_dict`` builds the dataclass back: lists
    become tuples, unknown keys are errors, missing keys take the field default (so a bundle written
    before a field with a behaviour-preserving default was added still loads; a missing required field
    is an error). Values are validated by the dataclass's ``__post_init__`` (:class:`ConfigError`).
    """

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[_Config], d: Any) -> _Config:
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {short_repr(unknown)}; known keys: {sorted(fields)}")
        missing = [
            name
            for name, f in fields.items()
            if name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{cls.__name__} is missing required keys {missing}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
