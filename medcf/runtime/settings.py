"""Checks of a job's plain settings, each refusing a bad value in one line that names the YAML key."""

from __future__ import annotations

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
