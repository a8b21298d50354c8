"""Figures as a person reads them: ``152 ms``, ``13.5 s``, ``47.7 MiB``.

Used by the terminal report, the narration and the dashboards alike, so it sits
below all of them (it imports nothing of the engine).
"""

from __future__ import annotations

__all__ = ["format_bytes", "format_ms"]


def format_ms(value: float | None) -> str:
    """Milliseconds as a person reads them: ``152 ms`` or ``13.5 s`` (``-`` for no value)."""
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value < 1000 else f"{value / 1000:,.1f} s"


def format_bytes(value: float | None) -> str:
    """Bytes in the largest binary unit that keeps the number readable: ``512 B``, ``47.7 MiB`` (``-`` for none)."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"
