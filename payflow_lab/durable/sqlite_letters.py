"""Dead letters in the outbox's own database: a :class:`~payflow_lab.resilience.DeadLetterStore` on SQLite.

A delivery the dispatcher gives up on (its retries exhausted, its endpoint's
breaker open for too long, the receiver refusing it outright) becomes a dead
letter. Keeping the letters in the *same* file as the outbox has two
consequences worth the lesson:

* turning an event into a letter is one transaction: the outbox row becomes
  ``dead`` and the letter appears, together or not at all; no window in
  which the event is neither pending nor dead-lettered;
* a letter is still tied to its event (``event_id``), so re-queuing it
  (:meth:`SQLiteDeadLetters.requeue`, what ``payflow-lab replay --requeue``
  does) puts the very same event, with the same id and body, back in the
  outbox for the dispatcher, and the receivers' deduplication still applies.

The SQL is the outbox's portable subset, so the same class keeps the letters
of a :class:`~.postgres.PostgresOutbox` in its database.

It implements the same protocol as
:class:`~payflow_lab.resilience.InMemoryDeadLetters`, so
:func:`payflow_lab.resilience.replay` works on it unchanged: a letter that
replays successfully is removed, and if it belongs to an outbox event, that
event is marked delivered in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import integer, number
from payflow_lab.durable.events import OutboxEvent
from payflow_lab.resilience.dead_letters import DeadLetter, check_letter

__all__ = ["OutboxFile", "SQLiteDeadLetters"]


class OutboxFile(Protocol):
    """What the letters need of the :class:`~.outbox.Outbox` they live in (which imports this module, not back)."""

    clock: Callable[[], float]
    _lock: Any  # the outbox's lock: a letter and its event change together

    def _write(self) -> AbstractContextManager[Any]: ...

    def _notify(self, db: Any) -> None: ...

    def get(self, event_id: str) -> OutboxEvent | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> list[tuple[Any, ...]]: ...


_COLUMNS = (
    "d.id, d.key, d.kind, d.payload, d.reason, d.at, d.attempts, d.error, d.replays, d.last_replay_at, d.event_id"
)


def _letter_id(rowid: int) -> str:
    return f"dl_{rowid:06d}"


def _rowid(letter_id: str) -> int:
    if not isinstance(letter_id, str) or not letter_id.startswith("dl_") or not letter_id[3:].isdigit():
        raise ValidationError("letter_id", f"must look like 'dl_000042', got {letter_id!r}")
    return int(letter_id[3:])


class SQLiteDeadLetters:
    """The dead letters of one :class:`~.outbox.Outbox` (use ``outbox.dead_letters``).

    A letter's ``payload`` is the :class:`~.events.OutboxEvent` it was made
    from, or, for a letter added with another payload, that payload as it
    came back from JSON.
    """

    def __init__(self, outbox: OutboxFile) -> None:
        self._outbox = outbox
        #: Letters added and removed (by a successful replay) through this object.
        self.added = 0
        self.removed = 0

    def now(self) -> float:
        return self._outbox.clock()

    def _letter(self, row: tuple[Any, ...]) -> DeadLetter:
        rowid, key, kind, payload, reason, at, attempts, error, replays, last_replay_at, event_id = row
        value: Any
        if event_id is not None:
            event = self._outbox.get(event_id)
            value = event if event is not None else json.loads(payload)
        else:
            value = json.loads(payload)
        return DeadLetter(
            id=_letter_id(rowid),
            key=key,
            kind=kind,
            payload=value,
            reason=reason,
            at=at,
            attempts=attempts,
            error=error,
            replays=replays,
            last_replay_at=last_replay_at,
        )

    # ------------------------------------------------------------------ writing
    def add(
        self,
        key: str,
        payload: Any,
        reason: str,
        *,
        attempts: int,
        kind: str = "webhook",
        error: str | None = None,
        owner: str | None = None,
    ) -> DeadLetter:
        """Keep an undelivered ``payload`` with its ``reason``. An :class:`OutboxEvent` payload is also marked dead.

        ``owner``: only if that claimer still holds the event's claim (see
        :meth:`.Outbox.claim`); otherwise :class:`ValidationError` and nothing written.
        """
        check_letter(key, reason, kind, attempts)
        outbox = self._outbox
        event_id: str | None = None
        if isinstance(payload, OutboxEvent):
            event_id, body = payload.event_id, payload.body
        else:
            try:
                body = json.dumps(payload, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise ValidationError("payload", f"must be an OutboxEvent or JSON-serialisable: {exc}") from None
        now = outbox.clock()
        with outbox._lock, outbox._write() as db:
            if event_id is not None:
                sql = (
                    "UPDATE outbox SET status = 'dead', attempts = ?, last_error = ?, claimed_by = NULL, "
                    "claimed_until = NULL WHERE event_id = ? AND status = 'pending'"
                )
                params: list[Any] = [attempts, error, event_id]
                if owner is not None:
                    sql += " AND claimed_by = ?"
                    params.append(owner)
                cursor = db.execute(sql, params)
                if cursor.rowcount != 1:
                    held = "" if owner is None else f" and claimed by {owner!r}"
                    raise ValidationError("payload", f"event {event_id!r} is not pending{held} in this outbox")
            rowid = int(
                db.execute(
                    "INSERT INTO dead_letters (event_id, key, kind, payload, reason, at, attempts, error) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (event_id, key, kind, body, reason, now, attempts, error),
                ).fetchone()[0]
            )
        self.added += 1
        letter = self.get(_letter_id(rowid))
        assert letter is not None
        return letter

    def update(self, letter: DeadLetter) -> None:
        """Store a letter's new attempts, error and replay count (after a failed replay)."""
        rowid = _rowid(letter.id)
        outbox = self._outbox
        with outbox._lock, outbox._write() as db:
            cursor = db.execute(
                "UPDATE dead_letters SET attempts = ?, error = ?, replays = ?, last_replay_at = ? WHERE id = ?",
                (letter.attempts, letter.error, letter.replays, letter.last_replay_at, rowid),
            )
            if cursor.rowcount != 1:
                raise ValidationError("letter", f"no dead letter {letter.id!r} in the store")

    def remove(self, letter_id: str) -> DeadLetter | None:
        """The letter was delivered (by a replay): forget it, and mark its outbox event delivered."""
        letter = self.get(letter_id)
        if letter is None:
            return None
        outbox = self._outbox
        with outbox._lock, outbox._write() as db:
            row = db.execute("SELECT event_id FROM dead_letters WHERE id = ?", (_rowid(letter_id),)).fetchone()
            if row is None:
                return None
            if row[0] is not None:
                db.execute(
                    "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = ? WHERE event_id = ?",
                    (outbox.clock(), letter.attempts + 1, row[0]),
                )
            db.execute("DELETE FROM dead_letters WHERE id = ?", (_rowid(letter_id),))
        self.removed += 1
        return letter

    def requeue(self, letter_ids: list[str], *, due_at: float | None = None) -> list[str]:
        """Put the outbox events of these letters back in the outbox, due now; delete the letters. One transaction.

        ``due_at`` overrides "now" (the outbox's clock): ``0.0`` makes them due
        at once whatever clock the next process runs on. Returns the ids
        re-queued. Letters with no outbox event (added with another payload)
        cannot be re-queued and are refused, naming them.
        """
        rowids = [_rowid(letter_id) for letter_id in letter_ids]
        outbox = self._outbox
        now = outbox.clock() if due_at is None else float(due_at)
        done: list[str] = []
        with outbox._lock, outbox._write() as db:
            for rowid in rowids:
                row = db.execute("SELECT event_id FROM dead_letters WHERE id = ?", (rowid,)).fetchone()
                if row is None:
                    continue  # removed meanwhile (replayed by someone else)
                if row[0] is None:
                    raise ValidationError("letter", f"{_letter_id(rowid)} has no outbox event to re-queue")
                db.execute(
                    "UPDATE outbox SET status = 'pending', available_at = ?, claimed_by = NULL, claimed_until = NULL "
                    "WHERE event_id = ?",
                    (now, row[0]),
                )
                db.execute("DELETE FROM dead_letters WHERE id = ?", (rowid,))
                done.append(_letter_id(rowid))
            if done:
                outbox._notify(db)
        return done

    # ------------------------------------------------------------------ reading
    def get(self, letter_id: str) -> DeadLetter | None:
        rows = self._outbox.execute(f"SELECT {_COLUMNS} FROM dead_letters d WHERE d.id = ?", (_rowid(letter_id),))
        return self._letter(rows[0]) if rows else None

    def list(
        self,
        *,
        key: str | None = None,
        reason: str | None = None,
        kind: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Letters matching every filter given, oldest first (``older_than=60``: at least 60 s old)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("key", key), ("reason", reason), ("kind", kind)):
            if value is not None:
                clauses.append(f"d.{column} = ?")
                params.append(value)
        now = self._outbox.clock() if older_than is not None or newer_than is not None else 0.0
        if older_than is not None:
            number("older_than", older_than, minimum=0.0)
            clauses.append("d.at <= ?")
            params.append(now - older_than)
        if newer_than is not None:
            number("newer_than", newer_than, minimum=0.0)
            clauses.append("d.at > ?")
            params.append(now - newer_than)
        sql = f"SELECT {_COLUMNS} FROM dead_letters d"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY d.id"
        if limit is not None:
            integer("limit", limit, minimum=0)
            sql += " LIMIT ?"
            params.append(limit)
        return [self._letter(row) for row in self._outbox.execute(sql, params)]

    def count_by_reason(self) -> dict[str, int]:
        return {
            reason: int(n)
            for reason, n in self._outbox.execute(
                "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason"
            )
        }

    def count_by_key(self) -> dict[str, int]:
        return {
            key: int(n)
            for key, n in self._outbox.execute("SELECT key, COUNT(*) FROM dead_letters GROUP BY key ORDER BY key")
        }

    def __len__(self) -> int:
        return int(self._outbox.execute("SELECT COUNT(*) FROM dead_letters")[0][0])

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.list())
