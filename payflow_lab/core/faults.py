"""The fault plan: what is wrong with the world right now.

A :class:`FaultPlan` is a small mutable record that the simulated services read
on every call. Scenarios change it on a schedule, notebook widgets change it
while a run is live, tests change it directly. Every change goes through
:meth:`FaultPlan.apply`, which validates *all* fields first and only then
applies them, so a bad value from a slider never leaves the plan half-changed.

Endpoint modes:

``up``
    the endpoint answers, with its usual latency (times the latency multiplier)
    and error rate (or the plan's, whichever is higher).
``down``
    connection refused: fails fast, after a few milliseconds.
``hang``
    accepts the connection and never answers. Only the caller's timeout ends
    the call; a caller without one waits forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from payflow_lab.core.domain import MERCHANT_ID, Tier
from payflow_lab.core.enums import TextEnum
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import number

__all__ = ["EndpointMode", "FaultPlan", "MerchantFault", "LIMITS"]


class EndpointMode(TextEnum):
    """How a webhook endpoint behaves: answering, refusing, or black-holing calls."""

    UP = "up"
    DOWN = "down"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class MerchantFault:
    """A fault aimed at one merchant's endpoint: a mode and an error rate."""

    mode: EndpointMode = EndpointMode.UP
    error_rate: float = 0.0


#: Bounds of every numeric knob (inclusive). Widgets use the same bounds.
LIMITS: dict[str, tuple[float, float]] = {
    "traffic_multiplier": (0.0, 50.0),
    "webhook_error_rate": (0.0, 1.0),
    "webhook_hang_rate": (0.0, 1.0),
    "webhook_latency_multiplier": (0.1, 100.0),
}


def _mode(name: str, value: Any) -> EndpointMode:
    try:
        return EndpointMode(value)
    except ValueError:
        allowed = ", ".join(m.value for m in EndpointMode)
        raise ValidationError(name, f"must be one of {allowed}, got {value!r}") from None


@dataclass
class FaultPlan:
    """The faults in force. Read by the world on every call; change it with :meth:`apply`."""

    traffic_multiplier: float = 1.0
    webhook_error_rate: float = 0.0
    webhook_hang_rate: float = 0.0
    webhook_latency_multiplier: float = 1.0
    tier_modes: dict[Tier, EndpointMode] = field(default_factory=lambda: {tier: EndpointMode.UP for tier in Tier})
    merchants: dict[str, MerchantFault] = field(default_factory=dict)
    revision: int = 0

    def apply(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and apply ``changes``; return them normalised.

        Keys are the numeric knobs of :data:`LIMITS`, ``tier_modes`` (a mapping
        of tier to mode, partial is fine) and ``merchants`` (a mapping of
        merchant id to ``{"mode": ..., "error_rate": ...}`` or ``None`` to
        clear that merchant's fault). Nothing is applied unless everything is
        valid.
        """
        if not isinstance(changes, Mapping):
            raise ValidationError("faults", f"must be a mapping, got {type(changes).__name__}")
        staged: dict[str, Any] = {}
        for key, value in changes.items():
            if key in LIMITS:
                staged[key] = number(key, value, minimum=LIMITS[key][0], maximum=LIMITS[key][1])
            elif key == "tier_modes":
                staged[key] = self._stage_tier_modes(value)
            elif key == "merchants":
                staged[key] = self._stage_merchants(value)
            else:
                known = ", ".join([*LIMITS, "tier_modes", "merchants"])
                raise ValidationError(str(key), f"is not a fault setting; known settings: {known}")
        for key, value in staged.items():
            if key == "tier_modes":
                self.tier_modes.update(value)
            elif key == "merchants":
                for merchant_id, fault in value.items():
                    if fault is None:
                        self.merchants.pop(merchant_id, None)
                    else:
                        self.merchants[merchant_id] = fault
            else:
                setattr(self, key, value)
        if staged:
            self.revision += 1
        return staged

    @staticmethod
    def _stage_tier_modes(value: Any) -> dict[Tier, EndpointMode]:
        if not isinstance(value, Mapping):
            raise ValidationError("tier_modes", "must map tiers to endpoint modes")
        staged: dict[Tier, EndpointMode] = {}
        for tier, mode in value.items():
            try:
                key = Tier(tier)
            except ValueError:
                allowed = ", ".join(t.value for t in Tier)
                raise ValidationError("tier_modes", f"unknown tier {tier!r}; tiers are {allowed}") from None
            staged[key] = _mode(f"tier_modes.{key.value}", mode)
        return staged

    @staticmethod
    def _stage_merchants(value: Any) -> dict[str, MerchantFault | None]:
        if not isinstance(value, Mapping):
            raise ValidationError("merchants", "must map merchant ids to faults")
        staged: dict[str, MerchantFault | None] = {}
        for merchant_id, spec in value.items():
            if not isinstance(merchant_id, str) or not MERCHANT_ID.fullmatch(merchant_id):
                raise ValidationError("merchants", f"malformed merchant id {merchant_id!r}")
            if spec is None:
                staged[merchant_id] = None
                continue
            if isinstance(spec, MerchantFault):
                spec = {"mode": spec.mode, "error_rate": spec.error_rate}
            if not isinstance(spec, Mapping):
                raise ValidationError(f"merchants.{merchant_id}", "must be a mapping with mode and error_rate")
            unknown = set(spec) - {"mode", "error_rate"}
            if unknown:
                raise ValidationError(f"merchants.{merchant_id}", f"unknown keys {sorted(unknown)}")
            mode = _mode(f"merchants.{merchant_id}.mode", spec.get("mode", "up"))
            rate = spec.get("error_rate", 0.0)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValidationError(f"merchants.{merchant_id}.error_rate", f"must be between 0 and 1, got {rate!r}")
            staged[merchant_id] = MerchantFault(mode, float(rate))
        return staged

    def endpoint_mode(self, merchant_id: str, tier: Tier) -> tuple[EndpointMode, float]:
        """The mode and extra error rate in force for one merchant's endpoint."""
        fault = self.merchants.get(merchant_id)
        tier_mode = self.tier_modes[tier]
        if fault is None:
            return tier_mode, self.webhook_error_rate
        mode = fault.mode if fault.mode is not EndpointMode.UP else tier_mode
        return mode, max(self.webhook_error_rate, fault.error_rate)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy of the plan."""
        return {
            "traffic_multiplier": self.traffic_multiplier,
            "webhook_error_rate": self.webhook_error_rate,
            "webhook_hang_rate": self.webhook_hang_rate,
            "webhook_latency_multiplier": self.webhook_latency_multiplier,
            "tier_modes": {tier.value: mode.value for tier, mode in self.tier_modes.items()},
            "merchants": {
                mid: {"mode": f.mode.value, "error_rate": f.error_rate} for mid, f in sorted(self.merchants.items())
            },
        }
