"""Value checks shared by every module that takes user input: one wording for each kind of mistake.

YAML's ``true`` is a Python ``bool``, and ``bool`` is a subclass of ``int``: ``depth: true`` is a
typo, not a 1. Every integer and number check here refuses booleans, and NaN and infinities are
never numbers a user meant.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from alttrain.errors import ConfigError


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an integer (>= ``minimum``), else :class:`ConfigError` naming ``name``."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if not is_number(value) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_range(name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    """``value`` as a float if ``low <= value <= high`` (``< high`` when ``high_open``)."""
    inside = is_number(value) and low <= value and (value < high if high_open else value <= high)
    if not inside:
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}{')' if high_open else ']'}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: Any, options: Iterable[Any]) -> Any:
    """``value`` if its text is one of ``options`` (compared as strings: YAML reads ``32`` as an int)."""
    options = tuple(options)
    if str(value) not in {str(o) for o in options}:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}, got {value!r}")
    return value
