"""What the bus tells you: per-subscriber statistics, failures, outcomes and the shutdown report.

Everything here is a frozen snapshot with an ``as_dict()`` that is plain,
JSON-ready and deterministic in virtual time, so a run's summary can carry it.

The accounting identity every :class:`SubscriberStats` satisfies, at every
moment (``tests/test_hooks_metrics.py`` checks it with Hypothesis)::

    admitted = completed + failed + timed_out + cancelled + queued + running

``cancelled`` includes ``never_started`` (deliveries still queued when the
shutdown deadline came). Deliveries that were never admitted are counted
apart, in ``rejected`` and ``spilled``, each with a reason. hookz counted its
errors and threw them away; here nothing leaves the bus uncounted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["HookFailure", "Outcome", "OutcomeStatus", "ShutdownReport", "SubscriberShutdown", "SubscriberStats"]

#: How an admitted delivery ended (``never_started``: still queued at the shutdown deadline).
OutcomeStatus = Literal["completed", "failed", "timed_out", "cancelled", "never_started"]


@dataclass(frozen=True, slots=True)
class HookFailure:
    """A handler raised. Kept with its formatted traceback, passed to the bus's ``on_error``."""

    subscriber: str
    event: str
    error_type: str
    message: str
    traceback: str
    at: float  # anyio.current_time() when it happened

    def as_dict(self, *, with_traceback: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_traceback:
            del data["traceback"]
        return data


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one admitted delivery ended, as passed to the bus's ``on_outcome`` callback.

    ``latency`` is the handler's running time in seconds (``None`` if it never
    started); ``failure`` is set when ``status == "failed"``.
    """

    subscriber: str
    event: str
    payload: Any
    status: OutcomeStatus
    latency: float | None = None
    failure: HookFailure | None = None


@dataclass(frozen=True)
class SubscriberStats:
    """One subscriber's counters at one moment. See the module docstring for the identity they satisfy."""

    name: str
    event: str
    state: str  # "idle" (bus not started), "active", "unhooked", "closed"
    queue_size: int
    workers: int
    timeout: float | None
    overflow: str
    queued: int
    running: int
    admitted: int
    completed: int
    failed: int
    timed_out: int
    cancelled: int
    never_started: int
    rejected: int
    spilled: int
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    failures_by_type: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    latency_buckets: dict[str, int] = field(default_factory=dict)

    @property
    def settled(self) -> int:
        """Admitted deliveries that have ended, one way or another."""
        return self.completed + self.failed + self.timed_out + self.cancelled

    @property
    def balanced(self) -> bool:
        """Whether the accounting identity holds (it always should: a test would fail otherwise)."""
        return self.admitted == self.settled + self.queued + self.running

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SubscriberShutdown:
    """What happened to one subscriber's work during ``aclose``.

    ``completed``/``failed``/``timed_out`` count deliveries that ended during
    the drain; ``cancelled`` were running at the deadline and were cancelled;
    ``never_started`` were still queued at the deadline (``spilled`` of them
    were handed to the subscriber's spill store); ``abandoned`` were still
    running after cancellation plus the grace period: their handler ignores
    cancellation (it shields itself). They keep running, and are counted when
    they end, but shutdown did not wait for them.
    """

    completed: int
    failed: int
    timed_out: int
    cancelled: int
    never_started: int
    spilled: int
    abandoned: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ShutdownReport:
    """The result of :meth:`HookBus.aclose`.

    ``drained`` is true when every queue emptied and every handler finished
    before the deadline; ``elapsed`` is how long the shutdown took (seconds,
    on the bus's clock); ``rejected_after_close`` counts emissions refused
    because the bus was closing.
    """

    deadline: float | None
    drained: bool
    elapsed: float
    subscribers: dict[str, SubscriberShutdown]
    rejected_after_close: int

    @property
    def never_started(self) -> int:
        return sum(s.never_started for s in self.subscribers.values())

    @property
    def cancelled(self) -> int:
        return sum(s.cancelled for s in self.subscribers.values())

    @property
    def abandoned(self) -> int:
        return sum(s.abandoned for s in self.subscribers.values())

    @property
    def completed(self) -> int:
        return sum(s.completed for s in self.subscribers.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "deadline_s": self.deadline,
            "drained": self.drained,
            "elapsed_s": round(self.elapsed, 6),
            "rejected_after_close": self.rejected_after_close,
            "totals": {
                "completed": self.completed,
                "cancelled": self.cancelled,
                "never_started": self.never_started,
                "abandoned": self.abandoned,
            },
            "subscribers": {name: s.as_dict() for name, s in self.subscribers.items()},
        }
