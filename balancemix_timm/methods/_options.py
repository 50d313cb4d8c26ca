"""Typed reading of ``cfg.method_options`` entries (``method_options.NAME=value`` on the CLI)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["float_option", "int_option", "choice_option", "bool_option"]


def float_option(
    options: Mapping[str, Any], name: str, default: float, *, low: float | None = None,
    high: float | None = None, high_open: bool = False,
) -> float:
    """``options[name]`` (or ``default``) as a float within ``[low, high]`` (``high)`` if open)."""
    value = options.get(name, default)
    if isinstance(value, bool):
        raise ValueError(f"method_options.{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method_options.{name} must be a number, got {value!r}") from None
    bad = v != v or (low is not None and v < low) or (high is not None and (v >= high if high_open else v > high))
    if bad:
        hb = ")" if high_open else "]"
        raise ValueError(f"method_options.{name} must be in [{low}, {high}{hb}, got {value!r}")
    return v


def int_option(options: Mapping[str, Any], name: str, default: int, *, low: int = 0) -> int:
    """``options[name]`` (or ``default``) as an int ``>= low``."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"method_options.{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def choice_option(options: Mapping[str, Any], name: str, default: str, choices: Sequence[str]) -> str:
    """``options[name]`` (or ``default``), one of ``choices``."""
    value = options.get(name, default)
    if value not in choices:
        raise ValueError(f"method_options.{name}={value!r} is not one of {tuple(choices)}")
    return str(value)


def bool_option(options: Mapping[str, Any], name: str, default: bool) -> bool:
    """``options[name]`` (or ``default``) as a bool."""
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"method_options.{name} must be true or false, got {value!r}")
    return value
