"""Enumerations whose members are their own text: a tier, an endpoint mode, a breaker state."""

from __future__ import annotations

from enum import Enum

__all__ = ["TextEnum"]


class TextEnum(str, Enum):
    """An enum whose members are strings and print as their value (``str(Tier.PREMIUM) == "premium"``).

    Being a ``str``, a member goes into JSON, a Prometheus label or an f-string as its value; the
    JSON contract depends on it. One base for the three enums, so that the rule is written once.
    """

    def __str__(self) -> str:
        return str(self.value)
