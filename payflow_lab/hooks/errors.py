"""What ``emit`` can tell its caller: the emission was refused, or the bus is not running.

These are the only exceptions the bus ever raises *to the emitter*. A
handler's own exception never travels this way: it stays with the subscriber
(counted, kept with its traceback, passed to the error callback), because a
payment must not fail because a merchant's webhook did.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BusClosed", "BusNotStarted", "HookBusError", "Rejected"]


class HookBusError(Exception):
    """Base class of the errors the hook bus raises to emitters."""


class BusNotStarted(HookBusError):
    """``emit`` was called before the bus was started with ``async with bus:``.

    There are no workers yet, so admitting the delivery would only park it in
    a queue nobody serves. Failing loudly is kinder than a silent backlog.
    """


class BusClosed(HookBusError):
    """The bus is closing or closed: it admits nothing more.

    Raised by ``emit`` and ``hook`` once ``aclose`` has begun. This is the
    answer to hookz's ``Close`` racing ``Emit``: instead of a send on a closed
    Go channel (a panic), the emitter gets this exception, and nothing it sent
    earlier is lost without being counted.
    """


class Rejected(HookBusError):
    """No subscriber received the delivery: at least one of them refused it.

    Admission is all-or-nothing, so a refusal by one subscriber is a refusal
    for all of them. ``reasons`` maps *every* subscriber of the event to why
    its copy was not queued: ``"queue full"`` for the one(s) whose queue had
    no room, ``"rejected with the emission: webhook: queue full"`` for the
    others. The bus has already counted the rejection for each subscriber; the
    exception exists so that the caller knows, too, and can say so.
    """

    def __init__(self, event: str, reasons: Mapping[str, str], blocked_by: tuple[str, ...]) -> None:
        self.event = event
        self.reasons = dict(reasons)
        self.blocked_by = blocked_by
        why = "; ".join(f"{name}: {reasons[name]}" for name in blocked_by)
        super().__init__(f"emission of {event!r} rejected, nothing was queued ({why})")
