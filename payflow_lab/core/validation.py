"""Validation, in one place: every bad setting or argument is refused where it enters, by name.

Each function takes the name of what is being checked (``field``) and the
value, and returns the value in its proper type, or raises
:class:`~payflow_lab.core.errors.ValidationError` whose ``field`` is that
name and whose message says what was wanted and what came::

    >>> number("scale", 0, above=0)
    Traceback (most recent call last):
    ValidationError: scale: must be greater than 0, got 0

The rules every check shares: a ``bool`` is never a number (``True`` is an
``int`` to Python, never a sensible count of seconds); numbers must be finite;
``minimum`` and ``maximum`` are inclusive, ``above`` and ``below`` exclusive;
``None`` passes only where ``optional=True`` says it may.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar, overload

import anyio

from payflow_lab.core.errors import ValidationError

__all__ = ["Clock", "choice", "default_clock", "exception_types", "flag", "integer", "number"]

T = TypeVar("T")

#: A source of monotonic seconds. Defaults to :func:`anyio.current_time`, which is
#: virtual under :func:`payflow_lab.core.vtime.run_virtual`.
Clock = Callable[[], float]


def default_clock(clock: Clock | None) -> Clock:
    """``clock`` if given, else :func:`anyio.current_time` (read lazily, so construction needs no event loop)."""
    if clock is None:
        return anyio.current_time
    if not callable(clock):
        raise ValidationError("clock", f"must be a callable returning seconds, got {clock!r}")
    return clock


def _range(minimum: float | None, above: float | None, maximum: float | None, below: float | None, unit: str) -> str:
    low = f"at least {minimum:g}" if minimum is not None else f"greater than {above:g}" if above is not None else ""
    high = f"at most {maximum:g}" if maximum is not None else f"less than {below:g}" if below is not None else ""
    if minimum is not None and maximum is not None:
        return f"between {minimum:g} and {maximum:g}{unit}"
    return " and ".join(part for part in (low, high) if part) + unit


@overload
def number(
    field: str,
    value: object,
    *,
    minimum: float | None = ...,
    above: float | None = ...,
    maximum: float | None = ...,
    below: float | None = ...,
    unit: str = ...,
    optional: Literal[False] = ...,
) -> float: ...
@overload
def number(
    field: str,
    value: object,
    *,
    minimum: float | None = ...,
    above: float | None = ...,
    maximum: float | None = ...,
    below: float | None = ...,
    unit: str = ...,
    optional: bool,
) -> float | None: ...
def number(
    field: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    unit: str = "",
    optional: bool = False,
) -> float | None:
    """``value`` as a finite float within the bounds (``unit``, such as ``" seconds"``, ends the message)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        wanted = "a number or None" if optional else "a number"
        raise ValidationError(field, f"must be {wanted}, got {type(value).__name__} {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValidationError(field, f"must be finite, got {value!r}")
    if (
        (minimum is not None and result < minimum)
        or (above is not None and result <= above)
        or (maximum is not None and result > maximum)
        or (below is not None and result >= below)
    ):
        raise ValidationError(field, f"must be {_range(minimum, above, maximum, below, unit)}, got {value!r}")
    return result


@overload
def integer(
    field: str, value: object, *, minimum: int | None = ..., maximum: int | None = ..., optional: Literal[False] = ...
) -> int: ...
@overload
def integer(
    field: str, value: object, *, minimum: int | None = ..., maximum: int | None = ..., optional: bool
) -> int | None: ...
def integer(
    field: str, value: object, *, minimum: int | None = None, maximum: int | None = None, optional: bool = False
) -> int | None:
    """``value`` as an int within the bounds (bools and floats refused, even ``2.0``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        wanted = "an integer or None" if optional else "an integer"
        raise ValidationError(field, f"must be {wanted}, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            raise ValidationError(field, f"must be between {minimum:,} and {maximum:,}, got {value:,}")
        bound = f"at least {minimum:,}" if minimum is not None else f"at most {maximum:,}"
        raise ValidationError(field, f"must be {bound}, got {value:,}")
    return value


def flag(field: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0, 1, or a string)."""
    if not isinstance(value, bool):
        raise ValidationError(field, f"must be True or False, got {value!r}")
    return value


def choice(field: str, value: T, options: Iterable[T]) -> T:
    """``value`` if it is one of ``options`` (listed in the message when it is not)."""
    allowed = list(options)
    if value not in allowed:
        raise ValidationError(field, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def exception_types(field: str, value: object) -> type[BaseException] | tuple[type[BaseException], ...]:
    """``value`` if it is an exception class or a non-empty tuple of them (what ``isinstance`` accepts)."""
    items = value if isinstance(value, tuple) else (value,)
    if not items or not all(isinstance(t, type) and issubclass(t, BaseException) for t in items):
        raise ValidationError(field, f"must be an exception class or a tuple of them, got {value!r}")
    return value  # type: ignore[return-value]
