"""The scenarios: when a run starts, how long it lasts, and what changes on the way.

A scenario only scripts the *inputs* the story gives (the sale starts, traffic
spikes, merchant endpoints degrade or recover). What follows from them — the
pool filling up, the freeze, dollars stuck — must come out of the phase under
test, never out of this file.

=============  =========  ==================================================
scenario       story time what it scripts
=============  =========  ==================================================
``normal``     14:00-14:30 an ordinary afternoon: healthy endpoints
``blackfriday`` 13:50-15:00 sale at 14:00, volume x10 at 14:15, merchant
                           endpoints degrade from 14:18 (a growing share of
                           webhook calls hangs: 15% rising to 90% by 14:28)
``recovery``   14:10-14:55 Black Friday volume; PayFlow's busiest premium
                           merchant fails 90% of webhooks from 14:15 to 14:30,
                           then recovers
``monitoring`` 14:00-14:40 Black Friday volume; a webhook provider degrades
                           (slow, erroring) 14:08-14:18, then standard-tier
                           endpoints hang 14:25-14:30
=============  =========  ==================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from payflow_lab.core.domain import Tier
from payflow_lab.core.world import World

__all__ = ["SCENARIOS", "Scenario", "Step", "get_scenario"]


def _at(hh: int, mm: int, ss: int = 0) -> float:
    return hh * 3600.0 + mm * 60.0 + ss


Changes = Mapping[str, Any] | Callable[[World], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Step:
    """At story time ``at``, apply ``changes`` to the fault plan and log ``what``."""

    at: float
    what: str
    changes: Changes

    def resolve(self, world: World) -> Mapping[str, Any]:
        return self.changes(world) if callable(self.changes) else self.changes


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named story window with its scripted inputs."""

    name: str
    title: str
    start: float
    duration: float
    steps: tuple[Step, ...] = field(default=())
    initial: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from payflow_lab.core.errors import ValidationError
        from payflow_lab.core.faults import FaultPlan

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not isinstance(self.name, str) or not self.name:
            raise ValidationError("scenario.name", f"must be a non-empty string, got {self.name!r}")
        if not number(self.start) or not 0 <= self.start < 86_400:
            raise ValidationError("scenario.start", f"must be seconds since midnight (0-86399), got {self.start!r}")
        if not number(self.duration) or not 0 < self.duration <= 86_400:
            raise ValidationError("scenario.duration", f"must be between 0 and 86400 s, got {self.duration!r}")
        # Fixed changes are checked now, on a throwaway plan, so that a bad one fails here
        # and not half-way through the afternoon. Callables can only be checked when they run.
        try:
            FaultPlan().apply(dict(self.initial))
        except ValidationError as exc:
            raise ValidationError("scenario.initial", str(exc)) from None
        for step in self.steps:
            if not isinstance(step, Step):
                raise ValidationError("scenario.steps", f"must hold Step objects, got {type(step).__name__}")
            if not number(step.at) or not 0 <= step.at <= 2 * 86_400:
                raise ValidationError(
                    "scenario.steps", f"step {step.what!r}: at must be story seconds, got {step.at!r}"
                )
            if not callable(step.changes):
                try:
                    FaultPlan().apply(dict(step.changes))
                except ValidationError as exc:
                    raise ValidationError("scenario.steps", f"step {step.what!r} at {step.at:g}: {exc}") from None

    @property
    def end(self) -> float:
        return self.start + self.duration


def _busiest_premium_fails(rate: float) -> Callable[[World], Mapping[str, Any]]:
    def changes(world: World) -> Mapping[str, Any]:
        merchant = world.busiest(Tier.PREMIUM)
        if rate <= 0:
            return {"merchants": {merchant.id: None}}
        return {"merchants": {merchant.id: {"mode": "up", "error_rate": rate}}}

    return changes


SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario(
        name="normal",
        title="A normal afternoon",
        start=_at(14, 0),
        duration=30 * 60,
    ),
    "blackfriday": Scenario(
        name="blackfriday",
        title="Black Friday, 13:50 to 15:00",
        start=_at(13, 50),
        duration=70 * 60,
        steps=(
            Step(_at(14, 0), "Black Friday sale begins: traffic x3", {"traffic_multiplier": 3.0}),
            Step(_at(14, 15), "transaction volume spikes: traffic x10", {"traffic_multiplier": 10.0}),
            Step(
                _at(14, 18),
                "merchant endpoints degrade: 15% of webhook calls hang",
                {"webhook_hang_rate": 0.15, "webhook_latency_multiplier": 1.2},
            ),
            Step(_at(14, 20), "merchant endpoints worsen: 30% of webhook calls hang", {"webhook_hang_rate": 0.30}),
            Step(_at(14, 22), "merchant endpoints worsen: 45% of webhook calls hang", {"webhook_hang_rate": 0.45}),
            Step(_at(14, 24), "merchant endpoints worsen: 60% of webhook calls hang", {"webhook_hang_rate": 0.60}),
            Step(_at(14, 26), "merchant endpoints worsen: 75% of webhook calls hang", {"webhook_hang_rate": 0.75}),
            Step(_at(14, 28), "merchant endpoints worsen: 90% of webhook calls hang", {"webhook_hang_rate": 0.90}),
        ),
    ),
    "recovery": Scenario(
        name="recovery",
        title="Black Friday with one failing merchant, then its recovery",
        start=_at(14, 10),
        duration=45 * 60,
        initial={"traffic_multiplier": 10.0},
        steps=(
            Step(
                _at(14, 15),
                "busiest premium merchant's endpoint starts failing 90% of calls",
                _busiest_premium_fails(0.9),
            ),
            Step(_at(14, 30), "that merchant's endpoint recovers", _busiest_premium_fails(0.0)),
        ),
    ),
    "monitoring": Scenario(
        name="monitoring",
        title="Black Friday on the dashboard: a provider degrades, then an outage",
        start=_at(14, 0),
        duration=40 * 60,
        initial={"traffic_multiplier": 10.0},
        steps=(
            Step(
                _at(14, 8),
                "webhook provider degradation: latency x3, 30% errors",
                {"webhook_latency_multiplier": 3.0, "webhook_error_rate": 0.30},
            ),
            Step(
                _at(14, 18), "webhook provider recovers", {"webhook_latency_multiplier": 1.0, "webhook_error_rate": 0.0}
            ),
            Step(_at(14, 25), "standard-tier endpoints stop answering (hang)", {"tier_modes": {"standard": "hang"}}),
            Step(_at(14, 30), "standard-tier endpoints answer again", {"tier_modes": {"standard": "up"}}),
        ),
    ),
}


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; a clear error listing the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        from payflow_lab.core.errors import ValidationError

        raise ValidationError("scenario", f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}") from None
