"""Checks of a job's plain settings, each refusing a bad value in one line that names the YAML key."""

from __future__ import annotations

import math
from typing import Any


def require_integer(name: str, value: Any, minimum: int) -> int:
    """``value`` when it is an integer (not a bool) of at least ``minimum``.

    Args:
        name: the setting's key, which starts the error line.
        value: the value given.
        minimum: the least value allowed.

    Returns:
        The value.

    Raises:
        ValueError: ``name: value must be an integer >= minimum``.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: {value!r} must be an integer >= {minimum}")
    return value


def require_number(name: str, value: Any, minimum: float, exclusive: bool = False, allow_none: bool = False) -> Any:
    """``value`` when it is a finite number (int or float, not a bool) of at least (``exclusive``: above) ``minimum``,
    or None where ``allow_none``.

    Args:
        name: the setting's key, which starts the error line.
        value: the value given.
        minimum: the bound.
        exclusive: the bound itself is refused.
        allow_none: None is allowed (the setting is off).

    Returns:
        The value.

    Raises:
        ValueError: ``name: value must be a number >= minimum`` (``>`` when exclusive; ``, or null`` with
            ``allow_none``).
    """
    if value is None and allow_none:
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < minimum or (exclusive and value == minimum):
        bound = f"{'>' if exclusive else '>='} {minimum:g}"
        raise ValueError(f"{name}: {value!r} must be a number {bound}{', or null' if allow_none else ''}")
    return value
