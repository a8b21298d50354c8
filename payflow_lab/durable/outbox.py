"""The transactional outbox: a payment's authorization and its events, written in one SQLite transaction.

The problem it solves: "authorize, then emit" has a gap. If the process dies
between the two (a crash, SIGKILL, a deploy, a full in-memory queue), the
money has moved and the merchant's webhook, the analytics row and the audit
entry are gone: the payment is real, its side effects are not. The outbox
closes the gap by writing the events *in the same transaction* as the
authorization record. Either both are on disk or neither is; afterwards a
dispatcher (:mod:`.dispatcher`) delivers the events at its own pace and marks
each one done only after its receiver said so. A crash in between means the
event is sent again (at least once), never lost.

What it offers
==============

:meth:`Outbox.record_authorization`
    the authorization record and one event per side effect, atomically.
:meth:`Outbox.due` / :meth:`Outbox.mark_delivered` / :meth:`Outbox.reschedule`
    what the dispatcher reads and writes: due events, done, try again later.
:meth:`Outbox.spill`
    the hook bus's :class:`~payflow_lab.hooks.SpillStore`: a bus whose
    subscriber's queue is full, or that is shutting down with deliveries
    never started, hands them here and they are kept instead of lost.
:attr:`Outbox.dead_letters`
    the dead letters, in the same file (:mod:`.sqlite_letters`), a
    :class:`~payflow_lab.resilience.DeadLetterStore`.

Blocking calls, and time
========================

``sqlite3`` blocks. Each call here is one short transaction (a few inserts or
one update), so the choice is about *where* it blocks:

* in virtual time (``offload=False``, the default) it runs inline on the event
  loop. A blocking call takes no simulated time at all, and a thread would
  break determinism: the virtual clock jumps ahead while a thread works.
* in real time (``offload=True``) :meth:`Outbox.run` sends it to a worker
  thread with :func:`anyio.to_thread.run_sync`, one at a time (a
  :class:`~anyio.CapacityLimiter` of 1), so the event loop keeps serving
  HTTP while SQLite writes. :meth:`spill` stays inline even then: the bus
  calls it synchronously from ``emit``, and it is one short transaction.

The connection is shared by those threads behind a lock. Timestamps come from
``clock`` (the simulation's story clock, or Unix time in real time: a file
outlives the process, and ages such as ``replay --older-than`` must mean the
same thing to the next process that opens it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import Clock, default_clock
from payflow_lab.core.world import SIDE_EFFECT_KINDS
from payflow_lab.durable.events import DURABLE_KINDS, OutboxEvent, encode_body, event_id
from payflow_lab.durable.schema import MEMORY, connect, transaction
from payflow_lab.durable.sqlite_letters import SQLiteDeadLetters
from payflow_lab.hooks.overflow import Delivery

__all__ = ["EVENT_COLUMNS", "Outbox", "STATUSES"]

T = TypeVar("T")

#: The states of an outbox row.
STATUSES = ("pending", "delivered", "dead")
#: The columns that make an :class:`~.events.OutboxEvent`, in its field order.
EVENT_COLUMNS = (
    "seq, event_id, kind, payment_id, merchant_id, payload, created_at, status, attempts, available_at, last_error"
)


def _event(row: Sequence[Any]) -> OutboxEvent:
    return OutboxEvent(*row)


def _check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        raise ValidationError("kinds", f"must be a sequence of side effects, got the string {kinds!r}")
    checked = tuple(kinds)
    if not checked:
        raise ValidationError("kinds", "must name at least one side effect")
    for kind in checked:
        if kind not in SIDE_EFFECT_KINDS:
            raise ValidationError("kinds", f"unknown side effect {kind!r}; known: {', '.join(SIDE_EFFECT_KINDS)}")
    if len(set(checked)) != len(checked):
        raise ValidationError("kinds", f"names a side effect twice: {checked!r}")
    return checked


class Outbox:
    """The outbox at ``path`` (a file, or ``":memory:"``). See the module docstring.

    ``kinds`` are the side effects recorded for every authorization (default
    webhook, analytics and audit). ``busy_timeout`` is how long a write waits
    for another process's lock before :class:`~.errors.DatabaseLocked`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = MEMORY,
        *,
        clock: Clock | None = None,
        kinds: Iterable[str] = DURABLE_KINDS,
        offload: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        self.kinds = _check_kinds(kinds)
        self.path = str(path)
        self.clock = default_clock(clock)
        self.offload = bool(offload)
        self._db = connect(self.path, busy_timeout=busy_timeout)
        self._lock = threading.RLock()
        self._limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        #: Deliveries handed over by a hook bus (overflow or shutdown), by subscriber.
        self.spilled: dict[str, int] = {}
        self.dead_letters = SQLiteDeadLetters(self)

    # ---------------------------------------------------------------- plumbing
    def now(self) -> float:
        return self.clock()

    def _write(self) -> Any:
        return transaction(self._db, self.path)

    def close(self) -> None:
        """Close the connection (idempotent). WAL files are checkpointed by SQLite on the last close."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only query and return its rows (for reports and tests)."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call one of this outbox's blocking methods from async code: inline, or in a worker thread if ``offload``."""
        if not self.offload:
            return fn(*args)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # ----------------------------------------------------------------- writing
    def record_authorization(
        self, payment: Payment, *, kinds: Iterable[str] | None = None, authorized_at: float | None = None
    ) -> list[OutboxEvent]:
        """Record ``payment`` as authorized and queue one event per side effect, in one transaction.

        Idempotent: recording the same payment again returns its events and
        writes nothing; a *different* payment with the same id is refused.
        """
        if not isinstance(payment, Payment):
            raise ValidationError("payment", f"must be a Payment, got {type(payment).__name__}")
        chosen = self.kinds if kinds is None else _check_kinds(kinds)
        now = self.clock() if authorized_at is None else float(authorized_at)
        rows = [
            (event_id(payment.id, kind), kind, payment.id, payment.merchant_id, encode_body(payment, kind), now, now)
            for kind in chosen
        ]
        with self._lock, self._write() as db:
            existing = db.execute(
                "SELECT merchant_id, amount_cents, currency, created_at FROM payments WHERE id = ?", (payment.id,)
            ).fetchone()
            if existing is not None:
                if tuple(existing) != (payment.merchant_id, payment.amount_cents, payment.currency, payment.created_at):
                    raise ValidationError("payment.id", f"{payment.id} is already recorded with other details")
            else:
                db.execute(
                    "INSERT INTO payments (id, merchant_id, amount_cents, currency, created_at, authorized_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (payment.id, payment.merchant_id, payment.amount_cents, payment.currency, payment.created_at, now),
                )
            db.executemany(
                "INSERT OR IGNORE INTO outbox (event_id, kind, payment_id, merchant_id, payload, "
                "created_at, available_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            found = db.execute(
                f"SELECT {EVENT_COLUMNS} FROM outbox WHERE payment_id = ? ORDER BY seq", (payment.id,)
            ).fetchall()
        return [_event(row) for row in found if row[2] in chosen]

    def spill(self, deliveries: Sequence[Delivery]) -> None:
        """The hook bus's :class:`~payflow_lab.hooks.SpillStore`: keep every delivery, in one transaction, or raise.

        A delivery's ``subscriber`` names the side effect. Its payload is
        either a :class:`~payflow_lab.core.domain.Payment` (a bus that emits
        payments, like Phase 4's: the payment and its event are recorded) or
        an :class:`~.events.OutboxEvent` (the dispatcher's own bus: the event
        is already here, so it simply stays pending, due now). Anything else
        is refused and nothing of the batch is kept.
        """
        now = self.clock()
        payments: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        requeue: list[tuple[Any, ...]] = []
        for delivery in deliveries:
            if not isinstance(delivery, Delivery):
                raise ValidationError("deliveries", f"must hold hook-bus Delivery objects, got {delivery!r}")
            payload, kind = delivery.payload, delivery.subscriber
            if isinstance(payload, OutboxEvent):
                requeue.append((now, payload.event_id))
            elif isinstance(payload, Payment):
                if kind not in SIDE_EFFECT_KINDS:
                    raise ValidationError(
                        "subscriber",
                        f"{kind!r} is not a side effect the outbox can keep (known: {', '.join(SIDE_EFFECT_KINDS)})",
                    )
                payments.append(
                    (payload.id, payload.merchant_id, payload.amount_cents, payload.currency, payload.created_at, now)
                )
                events.append(
                    (
                        event_id(payload.id, kind),
                        kind,
                        payload.id,
                        payload.merchant_id,
                        encode_body(payload, kind),
                        now,
                        now,
                    )
                )
            else:
                raise ValidationError(
                    "payload",
                    f"cannot spill a {type(payload).__name__} for {kind!r}: expected a Payment or an OutboxEvent",
                )
        with self._lock, self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO payments (id, merchant_id, amount_cents, currency, created_at, "
                "authorized_at) VALUES (?, ?, ?, ?, ?, ?)",
                payments,
            )
            db.executemany(
                "INSERT OR IGNORE INTO outbox (event_id, kind, payment_id, merchant_id, payload, "
                "created_at, available_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            for at, ident in requeue:
                if db.execute("SELECT 1 FROM outbox WHERE event_id = ?", (ident,)).fetchone() is None:
                    raise ValidationError("payload", f"event {ident!r} is not in this outbox ({self.path})")
                db.execute(
                    "UPDATE outbox SET available_at = MIN(available_at, ?) WHERE event_id = ? AND status = 'pending'",
                    (at, ident),
                )
        for delivery in deliveries:
            self.spilled[delivery.subscriber] = self.spilled.get(delivery.subscriber, 0) + 1

    def mark_delivered(self, event_id: str, *, attempts: int = 1) -> bool:
        """The receiver acknowledged ``event_id``: mark it delivered. False if it was not pending (already done)."""
        with self._lock, self._write() as db:
            cursor = db.execute(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?, "
                "attempts = attempts + ?, last_error = NULL WHERE event_id = ? AND status = 'pending'",
                (self.clock(), attempts, event_id),
            )
            return cursor.rowcount == 1

    def reschedule(self, event_id: str, *, available_at: float, attempts: int = 0, error: str | None = None) -> bool:
        """Not delivered this time: try again no earlier than ``available_at``. False if it was not pending."""
        with self._lock, self._write() as db:
            cursor = db.execute(
                "UPDATE outbox SET available_at = ?, attempts = attempts + ?, "
                "last_error = COALESCE(?, last_error) WHERE event_id = ? AND status = 'pending'",
                (available_at, attempts, error, event_id),
            )
            return cursor.rowcount == 1

    def start_run(self, mode: str) -> int:
        """Note that a process opened the outbox (``mode`` says what it does); return its run number (1, 2, ...)."""
        with self._lock, self._write() as db:
            cursor = db.execute("INSERT INTO runs (started_at, mode) VALUES (?, ?)", (self.clock(), mode))
            return int(cursor.lastrowid or 0)

    # ----------------------------------------------------------------- reading
    def due(
        self, kind: str, limit: int, now: float | None = None, after: tuple[float, int] | None = None
    ) -> list[OutboxEvent]:
        """Up to ``limit`` pending events of ``kind`` whose time has come, in ``(available_at, seq)`` order.

        ``after`` skips events at or before that ``(available_at, seq)``
        position: a reader that remembers the last event it took reads only
        what is new (an index range scan, not the whole backlog again).
        """
        at = self.clock() if now is None else now
        sql = f"SELECT {EVENT_COLUMNS} FROM outbox WHERE status = 'pending' AND kind = ? AND available_at <= ?"
        params: list[Any] = [kind, at]
        if after is not None:
            sql += " AND (available_at, seq) > (?, ?)"
            params.extend(after)
        sql += " ORDER BY available_at, seq LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_event(row) for row in rows]

    def next_due_at(self) -> float | None:
        """When the earliest pending event becomes due (``None`` if nothing is pending)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(available_at) FROM outbox WHERE status = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def get(self, event_id: str) -> OutboxEvent | None:
        with self._lock:
            row = self._db.execute(f"SELECT {EVENT_COLUMNS} FROM outbox WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else _event(row)

    def events(self, *, status: str | None = None, kind: str | None = None) -> list[OutboxEvent]:
        """Every event (with ``status`` and/or of ``kind``), in the order they were recorded."""
        if status is not None and status not in STATUSES:
            raise ValidationError("status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {EVENT_COLUMNS} FROM outbox {where} ORDER BY seq", params).fetchall()
        return [_event(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Events by status (every status present, zeros included), plus ``payments`` and ``attempts``."""
        with self._lock:
            by_status = dict(self._db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall())
            payments = self._db.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
            attempts = self._db.execute("SELECT COALESCE(SUM(attempts), 0) FROM outbox").fetchone()[0]
        counts = {status: int(by_status.get(status, 0)) for status in STATUSES}
        return {"payments": int(payments), "events": sum(counts.values()), **counts, "attempts": int(attempts)}

    def counts_by_kind(self) -> dict[str, dict[str, int]]:
        """Events by side effect and status."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, status, COUNT(*) FROM outbox GROUP BY kind, status ORDER BY kind"
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for kind, status, n in rows:
            result.setdefault(kind, {s: 0 for s in STATUSES})[status] = int(n)
        return result

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()[0])

    def __repr__(self) -> str:
        return f"<Outbox {self.path!r}>"
