"""Validation shared by the resilience parts: every bad setting is refused at construction, by name."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio

from ..domain import ValidationError

__all__ = ["Clock", "default_clock", "exception_types", "integer", "number"]

#: A source of monotonic seconds. Defaults to :func:`anyio.current_time`, which is
#: virtual under :func:`payflow_lab.vtime.run_virtual`.
Clock = Callable[[], float]


def default_clock(clock: Clock | None) -> Clock:
    """``clock`` if given, else :func:`anyio.current_time` (read lazily, so construction needs no event loop)."""
    if clock is None:
        return anyio.current_time
    if not callable(clock):
        raise ValidationError("clock", f"must be a callable returning seconds, got {clock!r}")
    return clock


def number(field: str, value: object, *, minimum: float | None = None, above: float | None = None,
           maximum: float | None = None) -> float:
    """``value`` as a finite float; ``minimum`` is inclusive, ``above`` exclusive, ``maximum`` inclusive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, f"must be a number, got {type(value).__name__} {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValidationError(field, f"must be finite, got {value!r}")
    if minimum is not None and result < minimum:
        raise ValidationError(field, f"must be at least {minimum:g}, got {value!r}")
    if above is not None and result <= above:
        raise ValidationError(field, f"must be greater than {above:g}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ValidationError(field, f"must be at most {maximum:g}, got {value!r}")
    return result


def integer(field: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int of at least ``minimum`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValidationError(field, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValidationError(field, f"must be at most {maximum}, got {value}")
    return value


def exception_types(field: str, value: object) -> type[BaseException] | tuple[type[BaseException], ...]:
    """``value`` if it is an exception class or a non-empty tuple of them (what ``isinstance`` accepts)."""
    items = value if isinstance(value, tuple) else (value,)
    if not items or not all(isinstance(t, type) and issubclass(t, BaseException) for t in items):
        raise ValidationError(field, f"must be an exception class or a tuple of them, got {value!r}")
    return value  # type: ignore[return-value]
