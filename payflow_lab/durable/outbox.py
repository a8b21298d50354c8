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
:meth:`Outbox.claim` / :meth:`Outbox.release`
    for several dispatchers on one outbox: take due events with a *lease*
    (nobody else gets them until it lapses; a dispatcher that dies loses
    them when it does), and settle them with the ``owner`` that claimed
    them, so a dispatcher whose lease was taken over cannot overwrite the
    outcome another one wrote.

Two stores, one contract
========================

This class keeps the outbox in SQLite: one file, embedded, nothing to run.
:class:`~.postgres.PostgresOutbox` keeps it in PostgreSQL, for dispatchers in
several processes or on several machines. The SQL is written once, here, in
the part of the language both databases speak (``ON CONFLICT DO NOTHING``,
``RETURNING``, row values); a store differs only in how it connects, how a
transaction starts, and the ``FOR UPDATE SKIP LOCKED`` that lets concurrent
claimers pass each other's rows instead of queueing behind them (SQLite has
one writer at a time, so its claims never race).
:func:`~.stores.open_outbox` picks the store from the address: a
``postgresql://`` URL, or a file path.

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
from payflow_lab.core.validation import Clock, default_clock, integer, number
from payflow_lab.core.world import SIDE_EFFECT_KINDS
from payflow_lab.durable.events import DURABLE_KINDS, OutboxEvent, encode_body, event_id
from payflow_lab.durable.schema import MEMORY, connect, transaction
from payflow_lab.durable.sqlite_letters import SQLiteDeadLetters
from payflow_lab.hooks.overflow import Delivery

__all__ = ["EVENT_COLUMNS", "Outbox", "STATUSES", "is_postgres_url"]

T = TypeVar("T")

#: The states of an outbox row.
STATUSES = ("pending", "delivered", "dead")
#: The columns that make an :class:`~.events.OutboxEvent`, in its field order.
EVENT_COLUMNS = (
    "seq, event_id, kind, payment_id, merchant_id, payload, created_at, status, attempts, available_at, last_error"
)


def is_postgres_url(db: object) -> bool:
    """True if ``db`` names a PostgreSQL database (``postgresql://...`` or ``postgres://...``), not a file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def _event(row: Sequence[Any]) -> OutboxEvent:
    return OutboxEvent(*row)


def _owner(owner: object) -> str:
    if not isinstance(owner, str) or not 1 <= len(owner) <= 200:
        raise ValidationError("owner", f"must name the claimer in 1 to 200 characters, got {owner!r}")
    return owner


def _owned(sql: str, params: list[Any], owner: str | None) -> tuple[str, list[Any]]:
    """``sql`` narrowed to rows ``owner`` still claims (unchanged when ``owner`` is None)."""
    if owner is None:
        return sql, params
    return sql + " AND claimed_by = ?", [*params, _owner(owner)]


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
        self._lock: Any = threading.RLock()
        self._db = self._open(busy_timeout=busy_timeout)
        self._limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        #: Deliveries handed over by a hook bus (overflow or shutdown), by subscriber.
        self.spilled: dict[str, int] = {}
        self.dead_letters = SQLiteDeadLetters(self)

    #: What the claim's inner query adds to lock the rows it picks (PostgreSQL: skip rows another claimer holds).
    _lock_rows = ""

    # ---------------------------------------------------------------- plumbing
    def _open(self, *, busy_timeout: float) -> Any:
        return connect(self.path, busy_timeout=busy_timeout)

    def _notify(self, db: Any) -> None:
        """New events are due: tell dispatchers in other processes (PostgreSQL's NOTIFY; nothing in SQLite)."""

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
                "INSERT INTO outbox (event_id, kind, payment_id, merchant_id, payload, "
                "created_at, available_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )
            self._notify(db)
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
            if payments:
                db.executemany(
                    "INSERT INTO payments (id, merchant_id, amount_cents, currency, created_at, "
                    "authorized_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    payments,
                )
            if events:
                db.executemany(
                    "INSERT INTO outbox (event_id, kind, payment_id, merchant_id, payload, "
                    "created_at, available_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    events,
                )
            for at, ident in requeue:
                if db.execute("SELECT 1 FROM outbox WHERE event_id = ?", (ident,)).fetchone() is None:
                    raise ValidationError("payload", f"event {ident!r} is not in this outbox ({self.path})")
                db.execute(
                    "UPDATE outbox SET available_at = CASE WHEN available_at > ? THEN ? ELSE available_at END, "
                    "claimed_by = NULL, claimed_until = NULL WHERE event_id = ? AND status = 'pending'",
                    (at, at, ident),
                )
            self._notify(db)
        for delivery in deliveries:
            self.spilled[delivery.subscriber] = self.spilled.get(delivery.subscriber, 0) + 1

    def mark_delivered(self, event_id: str, *, attempts: int = 1, owner: str | None = None) -> bool:
        """The receiver acknowledged ``event_id``: mark it delivered. False if it was not pending (already done).

        With ``owner`` (a claimer's name, see :meth:`claim`) only that
        claimer's claim is settled: False if the lease lapsed and another
        dispatcher took the event over (it will write the outcome).
        """
        sql, params = _owned(
            "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + ?, last_error = NULL, "
            "claimed_by = NULL, claimed_until = NULL WHERE event_id = ? AND status = 'pending'",
            [self.clock(), attempts, event_id],
            owner,
        )
        with self._lock, self._write() as db:
            return db.execute(sql, params).rowcount == 1

    def reschedule(
        self,
        event_id: str,
        *,
        available_at: float,
        attempts: int = 0,
        error: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """Not delivered this time: try again no earlier than ``available_at``. False if it was not pending.

        The event's claim is released; ``owner`` as in :meth:`mark_delivered`.
        """
        sql, params = _owned(
            "UPDATE outbox SET available_at = ?, attempts = attempts + ?, last_error = COALESCE(?, last_error), "
            "claimed_by = NULL, claimed_until = NULL WHERE event_id = ? AND status = 'pending'",
            [available_at, attempts, error, event_id],
            owner,
        )
        with self._lock, self._write() as db:
            return db.execute(sql, params).rowcount == 1

    def truncate(self) -> None:
        """Delete every payment, event, dead letter and run (a fresh start for a test, a bench or a lesson)."""
        with self._lock, self._write() as db:
            for table in ("dead_letters", "outbox", "payments", "runs"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM sqlite_sequence")

    def start_run(self, mode: str) -> int:
        """Note that a process opened the outbox (``mode`` says what it does); return its run number (1, 2, ...)."""
        with self._lock, self._write() as db:
            row = db.execute(
                "INSERT INTO runs (started_at, mode) VALUES (?, ?) RETURNING run", (self.clock(), mode)
            ).fetchone()
            return int(row[0])

    # ----------------------------------------------------------------- claims
    def claim(
        self,
        owner: str,
        limit: int,
        *,
        lease: float,
        kinds: Iterable[str] | None = None,
        now: float | None = None,
    ) -> list[OutboxEvent]:
        """Take up to ``limit`` due events for ``owner``, oldest first, each for ``lease`` seconds.

        An event is claimable when it is pending, due, and nobody holds it (no
        claim, or one whose lease has lapsed: its claimer died or paused).
        Claiming writes the owner and the lease's end on the row, in one
        transaction; two claimers never get the same event while a lease
        lives. The claimer settles each event with ``owner=`` (delivered,
        rescheduled, dead-lettered) or gives it back with :meth:`release`.
        """
        owner = _owner(owner)
        limit = integer("limit", limit, minimum=0, maximum=100_000)
        lease = number("lease", lease, above=0, maximum=86_400, unit=" seconds")
        chosen = self.kinds if kinds is None else _check_kinds(kinds)
        at = self.clock() if now is None else float(now)
        if limit == 0:
            return []
        marks = ", ".join("?" for _ in chosen)
        # The picked rows are materialized first: as a plain subquery, PostgreSQL may run it again per row and
        # claim more than ``limit``.
        sql = (
            "WITH picked AS MATERIALIZED ("
            f"SELECT seq FROM outbox WHERE status = 'pending' AND kind IN ({marks}) AND available_at <= ? "
            "AND (claimed_until IS NULL OR claimed_until <= ?) "
            f"ORDER BY available_at, seq LIMIT ?{self._lock_rows}) "
            "UPDATE outbox SET claimed_by = ?, claimed_until = ?, claims = claims + 1 "
            f"WHERE seq IN (SELECT seq FROM picked) RETURNING {EVENT_COLUMNS}"
        )
        with self._lock, self._write() as db:
            rows = db.execute(sql, [*chosen, at, at, limit, owner, at + lease]).fetchall()
        return sorted((_event(row) for row in rows), key=lambda e: (e.available_at, e.seq))

    def release(self, owner: str, event_ids: Iterable[str] | None = None) -> int:
        """Give back ``owner``'s claims (all of them, or those ``event_ids``) so others may take them now."""
        owner = _owner(owner)
        with self._lock, self._write() as db:
            if event_ids is None:
                cursor = db.execute(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                    "WHERE claimed_by = ? AND status = 'pending'",
                    (owner,),
                )
                return int(cursor.rowcount)
            released = 0
            for ident in event_ids:
                cursor = db.execute(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                    "WHERE event_id = ? AND claimed_by = ? AND status = 'pending'",
                    (ident, owner),
                )
                released += int(cursor.rowcount)
            return released

    def holds(self, owner: str, event_id: str, now: float | None = None) -> bool:
        """True if ``owner``'s lease on pending ``event_id`` is still alive at ``now``."""
        at = self.clock() if now is None else float(now)
        rows = self.execute(
            "SELECT 1 FROM outbox WHERE event_id = ? AND status = 'pending' AND claimed_by = ? AND claimed_until > ?",
            (event_id, _owner(owner), at),
        )
        return bool(rows)

    def claims(self, now: float | None = None) -> dict[str, int]:
        """Live claims (pending events whose lease has not lapsed at ``now``), by owner."""
        at = self.clock() if now is None else float(now)
        rows = self.execute(
            "SELECT claimed_by, COUNT(*) FROM outbox WHERE status = 'pending' AND claimed_by IS NOT NULL "
            "AND claimed_until > ? GROUP BY claimed_by ORDER BY claimed_by",
            (at,),
        )
        return {str(owner): int(n) for owner, n in rows}

    def held_by(self, owner: str) -> int:
        """Pending events whose row still names ``owner``, lease lapsed or not (0: all settled or taken over)."""
        rows = self.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND claimed_by = ?", (_owner(owner),))
        return int(rows[0][0])

    def reclaimed(self) -> int:
        """Events claimed more than once: a lease lapsed (its dispatcher died or paused) or a claim was given back."""
        return int(self.execute("SELECT COUNT(*) FROM outbox WHERE claims > 1")[0][0])

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
        return [_event(row) for row in self.execute(sql, params)]

    def next_due_at(self) -> float | None:
        """When the earliest pending event becomes due (``None`` if nothing is pending)."""
        row = self.execute("SELECT MIN(available_at) FROM outbox WHERE status = 'pending'")[0]
        return None if row[0] is None else float(row[0])

    def get(self, event_id: str) -> OutboxEvent | None:
        rows = self.execute(f"SELECT {EVENT_COLUMNS} FROM outbox WHERE event_id = ?", (event_id,))
        return _event(rows[0]) if rows else None

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
        return [_event(row) for row in self.execute(f"SELECT {EVENT_COLUMNS} FROM outbox {where} ORDER BY seq", params)]

    def counts(self) -> dict[str, int]:
        """Events by status (every status present, zeros included), plus ``payments`` and ``attempts``."""
        by_status = dict(self.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
        payments = self.execute("SELECT COUNT(*) FROM payments")[0][0]
        attempts = self.execute("SELECT COALESCE(SUM(attempts), 0) FROM outbox")[0][0]
        counts = {status: int(by_status.get(status, 0)) for status in STATUSES}
        return {"payments": int(payments), "events": sum(counts.values()), **counts, "attempts": int(attempts)}

    def counts_by_kind(self) -> dict[str, dict[str, int]]:
        """Events by side effect and status."""
        rows = self.execute("SELECT kind, status, COUNT(*) FROM outbox GROUP BY kind, status ORDER BY kind")
        result: dict[str, dict[str, int]] = {}
        for kind, status, n in rows:
            result.setdefault(kind, {s: 0 for s in STATUSES})[status] = int(n)
        return result

    def pending(self) -> int:
        return int(self.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")[0][0])

    def __repr__(self) -> str:
        return f"<Outbox {self.path!r}>"
