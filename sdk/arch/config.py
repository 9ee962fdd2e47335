"""Config helpers shared by the network configs: validation and the JSON round trip of the bundle header.

Configs follow timm's style: frozen dataclasses with ``to_dict`` / ``from_dict`` (the dict goes into
the bundle's JSON header). Bad values raise :class:`adsrt.errors.ConfigError` (a ``ValueError``), which
the bundle loader reports as a bad bundle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from adsrt.errors import ConfigError

__all__ = ["HeaderConfig", "check_int", "check_int_tuple"]


def check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; a JSON ``true`` must not silently become a width of 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def check_int_tuple(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(f"{name} must be a tuple of ints, got {type(value).__name__} {value!r}")
    for i, v in enumerate(value):
        check_int(f"{name}[{i}]", v, minimum)


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
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(fields)}")
        missing = [
            name
            for name, f in fields.items()
            if name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{cls.__name__} is missing required keys {missing}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
