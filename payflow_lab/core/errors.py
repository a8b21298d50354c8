"""Every exception payflow-lab raises on purpose, in one place, under one base class.

Catch :class:`PayflowError` to catch anything the engine, the hook bus, the
resilience parts, durable delivery or the command line refuses or reports;
anything else that escapes is a bug. Each error also keeps the standard base
a caller would expect (a bad value is a ``ValueError``, a checkout that waited
too long a ``TimeoutError``), so code written against those still works.

The families, by who raises them:

=========================  ====================================================
the domain and settings    :class:`ValidationError` (``field`` names what is wrong)
the simulated world        :class:`Declined`, :class:`EndpointError`, :class:`PoolTimeout`
resilience                 :class:`BreakerOpen`, :class:`RateLimited`, :class:`RetryExhausted`
the hook bus               :class:`HookBusError`: :class:`BusNotStarted`, :class:`BusClosed`, :class:`Rejected`
Phase 5                    :class:`GaveUp`
durable delivery           :class:`OutboxDatabaseError` and its kinds, :class:`MalformedPayload`,
                           :class:`DeliveryError`, :class:`SignatureError` and their kinds
the command line           :class:`UsageError`, :class:`WorkshopMissing`, :class:`EditedLessons`
=========================  ====================================================

The modules that raise an error re-export it, so ``from payflow_lab.resilience
import BreakerOpen`` and ``from payflow_lab import BreakerOpen`` name the same
class as this module does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "PostgresUnavailable",
    "BreakerOpen",
    "BusClosed",
    "BusNotStarted",
    "CorruptDatabase",
    "DatabaseLocked",
    "Declined",
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryRejected",
    "DiskFull",
    "EditedLessons",
    "EndpointError",
    "GaveUp",
    "HookBusError",
    "InvalidSignature",
    "MalformedPayload",
    "MissingHeader",
    "NotAnOutbox",
    "OutboxDatabaseError",
    "PayflowError",
    "PoolTimeout",
    "RateLimited",
    "ReadOnlyDatabase",
    "Rejected",
    "RetryExhausted",
    "SchemaVersionError",
    "SignatureError",
    "TimestampOutOfTolerance",
    "UsageError",
    "ValidationError",
    "WorkshopMissing",
]


class PayflowError(Exception):
    """The base of every exception payflow-lab raises on purpose."""


# ------------------------------------------------------------- bad input
class ValidationError(PayflowError, ValueError):
    """A field of a payment, a merchant or a setting is wrong.

    ``field`` names the offending field (``"amount_cents"``, ``"currency"``,
    ``"scale"``, ...) so that callers and tests can tell *what* was rejected
    without parsing the message.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# ------------------------------------------------------- the simulated world
class Declined(PayflowError):
    """The card network declined the authorization. No money moved."""


class EndpointError(PayflowError):
    """A merchant's webhook endpoint answered with an error or refused the connection."""


class PoolTimeout(PayflowError, TimeoutError):
    """No connection became free within the checkout timeout."""


# ------------------------------------------------------------- resilience
class BreakerOpen(PayflowError):
    """The breaker rejected the call without making it.

    ``retry_after`` is the number of seconds until the break ends (when
    ``state`` is ``open``), or ``None`` when the breaker is half-open and its
    probes are still out: the verdict is pending and no time can be promised.
    """

    def __init__(self, name: str, state: Any, retry_after: float | None) -> None:
        wait = "probes in flight" if retry_after is None else f"retry after {retry_after:.3f}s"
        super().__init__(f"circuit breaker {name!r} is {state}: call not made ({wait})")
        self.name = name
        self.state = state
        self.retry_after = retry_after


class RateLimited(PayflowError):
    """The wait for a token would exceed ``max_wait``; ``retry_after`` is how long it would have been."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"rate limit {name!r}: next token in {retry_after:.3f}s")
        self.name = name
        self.retry_after = retry_after


class RetryExhausted(PayflowError):
    """A call failed and will not be retried again.

    ``reason`` is ``"retries_exhausted"`` (``max_attempts`` reached) or
    ``"retry_budget_empty"``, the same tokens a dead letter's reason uses;
    ``attempts`` is how many were made; ``last_error`` (also the
    ``__cause__``) is the last attempt's exception.
    """

    _WHY = {"retries_exhausted": "no attempts left", "retry_budget_empty": "retry budget empty"}

    def __init__(self, reason: str, attempts: int, last_error: BaseException) -> None:
        why = self._WHY.get(reason, reason)
        super().__init__(f"gave up after {attempts} attempt(s), {why}: {type(last_error).__name__}: {last_error}")
        self.reason = reason
        self.attempts = attempts
        self.last_error = last_error


# ------------------------------------------------------------- the hook bus
class HookBusError(PayflowError):
    """Base class of the errors the hook bus raises to emitters.

    These are the only exceptions the bus ever raises *to the emitter*. A
    handler's own exception never travels this way: it stays with the
    subscriber that ran the handler.
    """


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


# ----------------------------------------------------------------- Phase 5
class GaveUp(PayflowError):
    """An internal side effect timed out on every attempt; the message says how."""


# --------------------------------------------------------- durable delivery
class OutboxDatabaseError(ValidationError):
    """The database file cannot be used as it is. ``path`` is the file (or ``":memory:"``).

    A :class:`ValidationError` whose ``field`` is ``"db"``, so the command line
    reports it in one line with exit status 2, like any other bad argument.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__("db", f"{path}: {message}")
        self.path = path


class SchemaVersionError(OutboxDatabaseError):
    """The file was written by a newer (or unknown) schema version than this code knows."""

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(
            path,
            f"schema version {found} is unknown; this payflow-lab knows versions 1 to {known} "
            "(was the file written by a newer release?)",
        )
        self.found = found
        self.known = known


class PostgresUnavailable(PayflowError, RuntimeError):
    """No PostgreSQL here for a throw-away cluster: the message says what is missing and how to install it."""


class NotAnOutbox(OutboxDatabaseError):
    """The file is a SQLite database, but not one of ours (other tables, another application id)."""


class CorruptDatabase(OutboxDatabaseError):
    """The file is not a SQLite database at all, or its pages are damaged."""


class DatabaseLocked(OutboxDatabaseError):
    """Another process holds the write lock for longer than the busy timeout."""


class DiskFull(OutboxDatabaseError):
    """The disk (or SQLite's size limit) is full: a write was refused and its transaction rolled back."""


class ReadOnlyDatabase(OutboxDatabaseError):
    """The database cannot be written: a read-only file, folder or mount."""


class MalformedPayload(ValidationError):
    """An event's payload is not what the schema promises (bad JSON, missing fields, a bad payment)."""

    def __init__(self, message: str) -> None:
        super().__init__("payload", message)


class DeliveryError(PayflowError):
    """The receiver did not acknowledge the event. ``status`` is the HTTP status, if there was an answer."""

    retryable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeliveryFailed(DeliveryError):
    """Not acknowledged this time (5xx, 408, 425, 429, a timeout, a refused connection): worth retrying."""


class DeliveryRejected(DeliveryError):
    """Refused for good (a 4xx such as a bad signature or an unknown route): retrying would repeat the refusal."""

    retryable = False


class SignatureError(PayflowError):
    """The request is not a valid signed webhook; the message says why. Answer it with HTTP 401 or 400."""


class MissingHeader(SignatureError):
    """One of ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` is missing or empty."""


class TimestampOutOfTolerance(SignatureError):
    """The timestamp is not a number, or is further from now than the tolerance (too old, or from the future)."""


class InvalidSignature(SignatureError):
    """No ``v1`` signature matches: a wrong secret, or the body, id or timestamp was changed."""


# --------------------------------------------------------- the command line
class UsageError(PayflowError):
    """A bad command line: reported in one line, exit status 2."""


class WorkshopMissing(PayflowError, RuntimeError):
    """This installation carries no lessons (a broken wheel, or a source tree without ``lessons/``)."""


class EditedLessons(PayflowError):
    """Files the learner changed since they were copied; nothing was written.

    ``plan`` is the :class:`~payflow_lab.app.workshop.CopyPlan` that found them
    (its ``edited`` names and its ``dest`` folder make the message).
    """

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        names = ", ".join(plan.edited)
        super().__init__(
            f"{len(plan.edited)} file(s) in {plan.dest} changed since they were copied: {names}. "
            "Nothing was written. Save your work under another name, or run again with --force "
            "to overwrite them with this version's lessons"
        )
