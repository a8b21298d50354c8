"""Overflow policies: what a subscriber does when its queue is full.

A bounded queue is what keeps memory flat on Black Friday, and it forces a
question an unbounded one lets you ignore until the pager rings: *what happens
to the next delivery when there is no room?* hookz answered it once, for
everyone, with one shared queue: return an error (after some of the hooks had
already been queued). Here each subscriber answers it explicitly, and the
answer is part of its configuration, printed in every report:

:class:`Reject`
    refuse. The emission as a whole is refused (all-or-nothing), the caller
    gets :class:`~payflow_lab.hooks.Rejected`, and every subscriber counts a
    rejection with its reason. Right for work that is worth less than the
    caller's time: the critical path never waits.
:class:`Wait`
    backpressure: the emitter waits, up to ``max_wait`` seconds, for room.
    Only :meth:`HookBus.emit_wait` can wait; the synchronous
    :meth:`HookBus.emit` treats a full ``Wait`` subscriber as a refusal (with
    a reason that says so), because a plain function cannot wait.
:class:`Spill`
    hand this subscriber's copy to a :class:`SpillStore` instead of queueing
    it, so the emission still succeeds for everyone. The store is an
    interface: :class:`MemorySpillStore` (bounded, in memory) is here for
    tests and lessons; a durable outbox (SQLite) implements the same method.

Nothing is ever dropped silently: a refused or spilled delivery is counted,
with its reason, on the subscriber that did not get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from payflow_lab.core.validation import integer, number

__all__ = ["Delivery", "MemorySpillStore", "OverflowPolicy", "Reject", "Spill", "SpillStore", "Wait"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One subscriber's copy of one emission: enough to deliver it later, elsewhere."""

    event: str
    subscriber: str
    payload: Any


@runtime_checkable
class SpillStore(Protocol):
    """Where a :class:`Spill` subscriber's overflow goes.

    ``spill`` receives every spilled copy of *one* emission at once and must
    take all of them or raise (one transaction, for a database). It is called
    synchronously from ``emit`` on the event loop, so it must be quick: an
    append to a buffer, or a local SQLite insert; never a network call. If it
    raises, the bus refuses the whole emission (nothing is queued anywhere)
    and the exception's text becomes the rejection reason.
    """

    def spill(self, deliveries: Sequence[Delivery]) -> None: ...


class MemorySpillStore:
    """A bounded in-memory :class:`SpillStore`: holds up to ``capacity`` deliveries, then refuses.

    A stand-in for the durable outbox, for tests and lessons. Being in memory,
    it is lost with the process; being bounded, it cannot become the leak the
    bounded queues exist to prevent.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = integer("capacity", capacity, minimum=1)
        self.deliveries: list[Delivery] = []

    def spill(self, deliveries: Sequence[Delivery]) -> None:
        if len(self.deliveries) + len(deliveries) > self.capacity:
            raise OverflowError(f"spill store full ({self.capacity} deliveries)")
        self.deliveries.extend(deliveries)

    def __len__(self) -> int:
        return len(self.deliveries)


class OverflowPolicy:
    """Base class of the overflow policies (for ``isinstance`` checks and type hints)."""

    __slots__ = ()

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Reject(OverflowPolicy):
    """Refuse the emission when this subscriber's queue is full (the default)."""

    def describe(self) -> str:
        return "reject"


@dataclass(frozen=True, slots=True)
class Wait(OverflowPolicy):
    """Backpressure: :meth:`HookBus.emit_wait` waits up to ``max_wait`` seconds for room, then refuses."""

    max_wait: float

    def __post_init__(self) -> None:
        number("max_wait", self.max_wait, above=0, unit=" seconds")

    def describe(self) -> str:
        return f"wait up to {self.max_wait:g} s"


@dataclass(frozen=True, slots=True, eq=False)
class Spill(OverflowPolicy):
    """When the queue is full, hand this subscriber's copy to ``store`` so the emission still succeeds."""

    store: SpillStore

    def __post_init__(self) -> None:
        if not isinstance(self.store, SpillStore):
            raise TypeError(
                f"store must implement SpillStore (a spill(deliveries) method), got {type(self.store).__name__}"
            )

    def describe(self) -> str:
        return f"spill to {type(self.store).__name__}"
