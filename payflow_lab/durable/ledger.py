"""A receiver's ledger: exactly-once effects on top of at-least-once delivery.

At-least-once delivery means a receiver will, sooner or later, get the same
event twice: the sender crashed after the receiver answered but before it
wrote "done", or the answer was lost on the way back. The cure is on the
receiving side, and it is small: remember the ids of the events already
applied, and apply an event and remember its id *in one transaction*. A
repeat then finds its id and changes nothing, and the receiver answers 200 as
if it had applied it (it has, once).

:class:`ReceiverLedger` is that memory, on SQLite: a table of applied event
ids (the primary key does the deduplication) and, as the "effect" itself, a
running total per merchant and side effect, updated only when the id is new.
A duplicated effect would show up as a total larger than the sum of the
payments, which is exactly what the crash test checks.

The same ledger serves the real HTTP receiver (:mod:`.receiver`, a file per
receiver) and the simulated one (:class:`~.transport.SimulatedTransport`, in
memory), so both deduplicate with the same code.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import NotAnOutbox, SchemaVersionError
from payflow_lab.durable.schema import MEMORY, _translate, refuse_foreign, transaction

__all__ = ["LEDGER_APPLICATION_ID", "ReceiverLedger"]

#: ``PRAGMA application_id`` of a receiver ledger: ``PFLR``.
LEDGER_APPLICATION_ID = 0x50464C52
_VERSION = 1


class ReceiverLedger:
    """The applied events of one receiver, at ``path`` (a file, or ``":memory:"``)."""

    def __init__(self, path: str | os.PathLike[str] = MEMORY, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        refuse_foreign(
            self.path,
            LEDGER_APPLICATION_ID,
            "payflow-lab receiver ledger",
            frozenset({"effects", "totals", "counters"}),
        )
        db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            if self.path != MEMORY:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            with transaction(db, self.path):
                app = int(db.execute("PRAGMA application_id").fetchone()[0])
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if app == 0 and version == 0:  # new (refuse_foreign let only an empty database through)
                    db.execute(
                        "CREATE TABLE effects (event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                        "payment_id TEXT NOT NULL, merchant_id TEXT NOT NULL, amount_cents INTEGER NOT NULL, "
                        "applied_at REAL NOT NULL)"
                    )
                    db.execute(
                        "CREATE TABLE totals (merchant_id TEXT NOT NULL, kind TEXT NOT NULL, "
                        "payments INTEGER NOT NULL, amount_cents INTEGER NOT NULL, "
                        "PRIMARY KEY (merchant_id, kind))"
                    )
                    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
                    db.executemany("INSERT INTO counters VALUES (?, 0)", [("deliveries",), ("duplicates",)])
                    db.execute(f"PRAGMA application_id = {LEDGER_APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {_VERSION}")
                elif app != LEDGER_APPLICATION_ID:
                    raise NotAnOutbox(self.path, "is not a payflow-lab receiver ledger")
                elif version != _VERSION:
                    raise SchemaVersionError(self.path, version, _VERSION)
        except sqlite3.Error as exc:
            db.close()
            translated = _translate(exc, self.path)
            raise translated from exc
        except BaseException:
            db.close()
            raise
        self._db = db

    def apply(self, event_id: str, kind: str, payment: Payment, *, at: float) -> bool:
        """Apply the event once: ``True`` if it was new (the effect happened now), ``False`` for a repeat."""
        with self._lock, transaction(self._db, self.path) as db:
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'deliveries'")
            cursor = db.execute(
                "INSERT OR IGNORE INTO effects VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, kind, payment.id, payment.merchant_id, payment.amount_cents, at),
            )
            if cursor.rowcount == 0:
                db.execute("UPDATE counters SET value = value + 1 WHERE name = 'duplicates'")
                return False
            db.execute(
                "INSERT INTO totals VALUES (?, ?, 1, ?) ON CONFLICT (merchant_id, kind) DO UPDATE SET "
                "payments = payments + 1, amount_cents = amount_cents + excluded.amount_cents",
                (payment.merchant_id, kind, payment.amount_cents),
            )
            return True

    def has(self, event_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM effects WHERE event_id = ?", (event_id,)))

    def event_ids(self) -> list[str]:
        return [row[0] for row in self._query("SELECT event_id FROM effects ORDER BY event_id")]

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(merchant, kind) -> (payments applied, cents applied)."""
        return {
            (m, k): (int(p), int(c))
            for m, k, p, c in self._query(
                "SELECT merchant_id, kind, payments, amount_cents FROM totals ORDER BY merchant_id, kind"
            )
        }

    def stats(self) -> dict[str, int]:
        """``deliveries`` received (valid ones), ``applied`` effects, ``duplicates`` acknowledged without effect."""
        counters = dict(self._query("SELECT name, value FROM counters"))
        applied = self._query("SELECT COUNT(*) FROM effects")[0][0]
        return {
            "deliveries": int(counters["deliveries"]),
            "applied": int(applied),
            "duplicates": int(counters["duplicates"]),
        }

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReceiverLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
