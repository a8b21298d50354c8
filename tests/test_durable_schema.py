"""The outbox file: a versioned schema, a migration path from version 1, and clear errors for files it cannot use."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import (
    CorruptDatabase,
    DatabaseLocked,
    NotAnOutbox,
    OutboxDatabaseError,
    SchemaVersionError,
)
from payflow_lab.durable import SCHEMA_VERSION, Outbox, connect, encode_body, event_id
from payflow_lab.durable.schema import APPLICATION_ID, MIGRATIONS, create_version, schema_version, transaction


def payment(n: int, merchant: str = "mch_00001", cents: int = 1000) -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id=merchant, amount_cents=cents, currency="USD", created_at=100.0 + n)


def test_a_new_file_is_created_at_version_1_and_migrated_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    db = connect(path)
    assert schema_version(db) == SCHEMA_VERSION == max(MIGRATIONS) + 1
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"payments", "outbox", "dead_letters", "runs"} <= tables
    db.close()
    again = connect(path)  # reopening an up-to-date file changes nothing
    assert schema_version(again) == SCHEMA_VERSION
    again.close()


def test_a_version_1_file_is_migrated_with_its_rows_and_its_failures_become_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    create_version(old, 1, str(path))
    rows = []
    for n, status in [(1, "delivered"), (2, "pending"), (3, "failed")]:
        p = payment(n, merchant=f"mch_0000{n}")
        old.execute(
            "INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?)",
            (p.id, p.merchant_id, p.amount_cents, p.currency, p.created_at, p.created_at),
        )
        rows.append(
            (
                event_id(p.id, "webhook"),
                "webhook",
                p.id,
                p.merchant_id,
                encode_body(p, "webhook"),
                p.created_at,
                status,
                3 if status == "failed" else 1,
            )
        )
    old.executemany(
        "INSERT INTO outbox (event_id, kind, payment_id, merchant_id, payload, created_at, status, "
        "attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    assert schema_version(old) == 1
    old.close()

    with Outbox(path, clock=lambda: 1000.0) as outbox:
        assert schema_version(outbox._db) == SCHEMA_VERSION
        statuses = {e.payment_id: (e.status, e.available_at, e.attempts) for e in outbox.events()}
        assert statuses == {
            "pay_000000000001": ("delivered", 101.0, 1),
            "pay_000000000002": ("pending", 102.0, 1),
            "pay_000000000003": ("dead", 103.0, 3),
        }
        [letter] = outbox.dead_letters.list()
        assert (letter.key, letter.kind, letter.reason, letter.attempts) == (
            "mch_00003",
            "webhook",
            "retries_exhausted",
            3,
        )
        assert letter.payload.event_id == "evt_000000000003_webhook"
        # The migrated file works like a new one: the pending event is due.
        assert [e.event_id for e in outbox.due("webhook", 10)] == ["evt_000000000002_webhook"]


def test_a_file_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    connect(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(SchemaVersionError) as caught:
        Outbox(path)
    assert caught.value.field == "db" and caught.value.found == 99
    assert "schema version 99 is unknown" in str(caught.value) and str(path) in str(caught.value)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 99
    raw.close()


def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "crm.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    raw.commit()
    raw.close()
    with pytest.raises(NotAnOutbox, match="other tables \\(customers\\)"):
        connect(path)
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA application_id = 42")
    raw.close()
    with pytest.raises(NotAnOutbox, match="application id 0x2a"):
        connect(path)


def test_a_file_that_is_not_sqlite_is_reported_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database, just bytes " * 200)
    with pytest.raises(CorruptDatabase) as caught:
        Outbox(path)
    assert caught.value.field == "db" and str(path) in str(caught.value)


def test_bad_locations_are_named(tmp_path: Path) -> None:
    with pytest.raises(OutboxDatabaseError, match="does not exist"):
        connect(tmp_path / "missing" / "outbox.sqlite")
    with pytest.raises(OutboxDatabaseError, match="is a directory"):
        connect(tmp_path)
    with pytest.raises(ValueError, match="busy_timeout"):
        connect(tmp_path / "x.sqlite", busy_timeout=-1)


def test_a_locked_database_is_a_clear_error_and_nothing_is_half_written(tmp_path: Path) -> None:
    path = tmp_path / "busy.sqlite"
    with Outbox(path, clock=lambda: 5.0, busy_timeout=0.05) as outbox:
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            with pytest.raises(DatabaseLocked) as caught:
                outbox.record_authorization(payment(1))
            assert caught.value.field == "db" and "locked" in str(caught.value)
            with pytest.raises(DatabaseLocked):  # opening it is refused the same way
                Outbox(path, busy_timeout=0.05)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert outbox.counts()["payments"] == 0
        outbox.record_authorization(payment(1))  # the lock is gone: works
        assert outbox.counts()["events"] == 3


def test_a_migration_that_fails_leaves_the_file_at_its_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    create_version(old, 1, str(path))
    old.close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE outbox ADD COLUMN available_at REAL NOT NULL DEFAULT 0")
        raise RuntimeError("power cut halfway through the migration")

    monkeypatch.setitem(MIGRATIONS, 1, broken)
    with pytest.raises(RuntimeError, match="power cut"):
        connect(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "available_at" not in {row[1] for row in raw.execute("PRAGMA table_info(outbox)")}
    raw.close()


def test_two_threads_opening_a_new_file_at_once_both_get_one_schema(tmp_path: Path) -> None:
    path = tmp_path / "race.sqlite"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            connect(path).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = connect(path)
    assert schema_version(db) == SCHEMA_VERSION
    with transaction(db, str(path)):
        assert db.execute("SELECT COUNT(*) FROM payments").fetchone()[0] == 0
    db.close()
