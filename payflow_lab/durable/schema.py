"""The outbox database: its schema, its version, and the path from every older version to this one.

A durable store outlives the code that wrote it, so the file says which
schema it holds and the code knows how to bring an older file up to date:

* ``PRAGMA application_id`` marks the file as payflow-lab's (:data:`APPLICATION_ID`,
  ASCII ``PFLB``), so a stray SQLite file is refused instead of altered;
* ``PRAGMA user_version`` is the schema version (:data:`SCHEMA_VERSION`);
* :data:`MIGRATIONS` maps each version to the step that takes a file to the
  next one. Each step runs in one transaction together with the version bump,
  so a crash mid-migration leaves the file at the old version, intact.

A new file is created at version 1 and migrated like any old one, so the
migration path is exercised on every fresh database, not only on the rare old
file. A file from a *newer* version is refused (:class:`~.errors.SchemaVersionError`):
guessing at a schema we do not know could lose the very events the outbox
exists to keep.

The versions
============

1. ``payments`` (the authorization record) and ``outbox`` (one row per side
   effect to deliver, with a ``status`` of ``pending``, ``delivered`` or
   ``failed``).
2. Retries and dead letters: ``outbox`` gains ``available_at`` (the earliest
   time of the next attempt, for backoff and breaker deferral that survive a
   restart) and ``last_error``; ``failed`` rows become dead letters in the new
   ``dead_letters`` table (reason ``retries_exhausted``, as version 1 only
   gave up after its retries); ``runs`` counts the processes that opened the
   file, so each can number its payments apart from the others'.
3. Claims with leases, for several dispatchers on one outbox: ``outbox``
   gains ``claimed_by`` (the dispatcher holding the event), ``claimed_until``
   (when that claim lapses and another dispatcher may take the event) and
   ``claims`` (how many times it was claimed: more than once means a
   dispatcher died, paused or gave it back).

Connections run with ``isolation_level=None`` (autocommit) and every write is
an explicit ``BEGIN IMMEDIATE ... COMMIT``: the write lock is taken at the
start of the transaction, so a busy database is noticed before anything is
half done. Files use WAL journaling (readers never block the writer) with
``synchronous=NORMAL``, which loses nothing when a *process* dies (SIGKILL,
a crash, a deploy); only a power cut or OS crash may lose the last commits.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from payflow_lab.core.errors import (
    CorruptDatabase,
    DatabaseLocked,
    DiskFull,
    NotAnOutbox,
    OutboxDatabaseError,
    ReadOnlyDatabase,
    SchemaVersionError,
)
from payflow_lab.core.validation import integer, number

__all__ = [
    "APPLICATION_ID",
    "MEMORY",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "connect",
    "create_version",
    "schema_version",
    "transaction",
]

#: ``PRAGMA application_id`` of every payflow-lab outbox: the bytes ``PFLB``.
APPLICATION_ID = 0x50464C42
#: The schema version this code writes.
SCHEMA_VERSION = 3
#: The path that asks for a private, in-memory database (fast; gone with the process).
MEMORY = ":memory:"

_V1 = (
    """CREATE TABLE payments (
        id TEXT PRIMARY KEY,
        merchant_id TEXT NOT NULL,
        amount_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        created_at REAL NOT NULL,
        authorized_at REAL NOT NULL
    )""",
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payment_id TEXT NOT NULL REFERENCES payments(id),
        merchant_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered_at REAL
    )""",
    "CREATE INDEX outbox_by_status ON outbox (status, seq)",
)


def _v1_to_v2(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE outbox ADD COLUMN available_at REAL NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE outbox ADD COLUMN last_error TEXT")
    db.execute("UPDATE outbox SET available_at = created_at")
    db.execute("DROP INDEX outbox_by_status")
    db.execute("CREATE INDEX outbox_due ON outbox (status, kind, available_at, seq)")
    db.execute("""CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT UNIQUE REFERENCES outbox(event_id),
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        replays INTEGER NOT NULL DEFAULT 0,
        last_replay_at REAL
    )""")
    db.execute("CREATE INDEX dead_letters_by_key ON dead_letters (key, id)")
    db.execute("""INSERT INTO dead_letters (event_id, key, kind, payload, reason, at, attempts, error)
                  SELECT event_id, CASE kind WHEN 'webhook' THEN merchant_id ELSE kind END, kind, payload,
                         'retries_exhausted', COALESCE(delivered_at, created_at), attempts,
                         'failed under schema version 1 (no error kept)'
                  FROM outbox WHERE status = 'failed' ORDER BY seq""")
    db.execute("UPDATE outbox SET status = 'dead' WHERE status = 'failed'")
    db.execute(
        "CREATE TABLE runs (run INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, mode TEXT NOT NULL)"
    )


def _v2_to_v3(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE outbox ADD COLUMN claimed_by TEXT")
    db.execute("ALTER TABLE outbox ADD COLUMN claimed_until REAL")
    db.execute("ALTER TABLE outbox ADD COLUMN claims INTEGER NOT NULL DEFAULT 0")


#: Version ``n`` -> the step that turns a version-``n`` file into a version-``n + 1`` one.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


def _name(path: str | os.PathLike[str]) -> str:
    return str(path)


@contextmanager
def transaction(db: sqlite3.Connection, path: str = "database") -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error); a busy file raises :class:`DatabaseLocked`."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _translate(exc, path) from exc
    try:
        yield db
    except BaseException:
        _rollback(db)
        raise
    try:
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(db)  # a failing ROLLBACK must not hide why the COMMIT failed
        raise _translate(exc, path) from exc


def _rollback(db: sqlite3.Connection) -> None:
    """Undo the open transaction; if there is none left (SQLite already rolled back), that is fine too."""
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _translate(exc: sqlite3.Error, path: str) -> Exception:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return DatabaseLocked(path, f"the database is locked by another connection or process ({text})")
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return CorruptDatabase(path, f"not a usable SQLite database ({text})")
    if "disk is full" in text or "database or disk is full" in text:
        return DiskFull(
            path,
            f"the disk is full: nothing more can be written ({text}); the last transaction "
            "was rolled back, what was committed before is intact",
        )
    if "readonly" in text or "read-only" in text:
        return ReadOnlyDatabase(
            path,
            f"the database cannot be written: the file or its folder is read-only, or "
            f"the file was opened read-only ({text})",
        )
    return exc


def _as_corrupt(exc: sqlite3.Error, path: str, what: str) -> Exception:
    """``exc`` as one of our errors: its own kind when it has one (locked, disk full, ...), else ``what``."""
    translated = _translate(exc, path)
    return CorruptDatabase(path, f"{what} ({exc})") if translated is exc else translated


def _user_tables(db: sqlite3.Connection) -> list[str]:
    return [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def schema_version(db: sqlite3.Connection) -> int:
    """The file's ``user_version``."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _create(db: sqlite3.Connection, version: int) -> None:
    for statement in _V1:
        db.execute(statement)
    for step in range(1, version):
        MIGRATIONS[step](db)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {version}")


def create_version(db: sqlite3.Connection, version: int, path: str = "database") -> None:
    """Create the schema of ``version`` (1 or later) in an empty database, stamping id and version.

    New files are created at version 1 and then migrated (see the module
    docstring); the tests use this to make an old file to migrate.
    """
    integer("version", version, minimum=1, maximum=SCHEMA_VERSION)
    with transaction(db, path):
        _create(db, version)


def _migrate(db: sqlite3.Connection, path: str) -> list[int]:
    """Bring the file to :data:`SCHEMA_VERSION`; return the versions it passed through."""
    passed: list[int] = []
    with transaction(db, path):  # decide and create under the write lock: two processes may open a new file
        version = schema_version(db)
        app = int(db.execute("PRAGMA application_id").fetchone()[0])
        if app == 0 and version == 0:
            tables = _user_tables(db)
            if tables:
                raise NotAnOutbox(
                    path,
                    f"is a SQLite database with other tables ({', '.join(tables)}), "
                    "not a payflow-lab outbox; refusing to touch it",
                )
            _create(db, 1)
            version, app = 1, APPLICATION_ID
    if app != APPLICATION_ID:
        raise NotAnOutbox(path, f"has application id {app:#x}, not payflow-lab's {APPLICATION_ID:#x}")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(path, version, SCHEMA_VERSION)
    if version < 1:
        raise CorruptDatabase(path, f"carries payflow-lab's application id but schema version {version}")
    while version < SCHEMA_VERSION:
        with transaction(db, path):
            current = schema_version(db)
            if current == version:  # not migrated meanwhile by another process
                MIGRATIONS[version](db)
                db.execute(f"PRAGMA user_version = {version + 1}")
        passed.append(version)
        version = schema_version(db)
    return passed


#: The tables an outbox file holds (at every schema version).
OUTBOX_TABLES = frozenset({"payments", "outbox", "dead_letters", "runs"})


def refuse_foreign(path: str, application_id: int, what: str, own_tables: frozenset[str] = frozenset()) -> None:
    """Refuse a file that is not ``what`` (an outbox, a receiver ledger) *before* anything writes to it.

    Opening a SQLite file for writing already changes it (switching to WAL
    journaling, creating tables), so the check reads first, through a
    read-only connection: a missing or empty file is new and fine; a file
    that is not SQLite, a database with other tables, or one stamped with
    another application id is refused with the reason, and left untouched.
    """
    if path == MEMORY or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return
    try:
        ro = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise OutboxDatabaseError(path, f"cannot open the file to check it ({exc})") from exc
    try:
        app = int(ro.execute("PRAGMA application_id").fetchone()[0])
        version = int(ro.execute("PRAGMA user_version").fetchone()[0])
        tables = _user_tables(ro)
    except sqlite3.DatabaseError as exc:
        raise _as_corrupt(exc, path, "is not a SQLite database; refusing to touch it") from exc
    finally:
        ro.close()
    # Only our own tables and no stamp yet: another process is creating the file this very moment (its
    # creation is decided under the write lock, see _migrate), not a foreign database.
    if app == 0 and version == 0 and tables and not set(tables) <= own_tables:
        raise NotAnOutbox(
            path, f"is a SQLite database with other tables ({', '.join(tables)}), not a {what}; refusing to touch it"
        )
    if app not in (0, application_id):
        raise NotAnOutbox(
            path, f"has application id {app:#x}, not a {what}'s {application_id:#x}; refusing to touch it"
        )


def connect(
    path: str | os.PathLike[str] = MEMORY, *, busy_timeout: float = 5.0, migrate: bool = True
) -> sqlite3.Connection:
    """Open (creating if need be) the outbox database at ``path`` and bring it to the current schema.

    ``busy_timeout`` is how long a write waits for another process's lock
    before :class:`~.errors.DatabaseLocked`. With ``migrate=False`` an older
    file is left as it is (for inspection) but still checked.

    The connection may be used from several threads (``check_same_thread=False``);
    the caller serialises its use (the :class:`~.outbox.Outbox` holds a lock).
    """
    name = _name(path)
    number("busy_timeout", busy_timeout, minimum=0, maximum=600, unit=" seconds")
    if name != MEMORY:
        parent = Path(name).parent
        if not parent.is_dir():
            raise OutboxDatabaseError(name, f"the directory {str(parent)!r} does not exist")
        if Path(name).is_dir():
            raise OutboxDatabaseError(name, "is a directory, not a database file")
    refuse_foreign(name, APPLICATION_ID, "payflow-lab outbox", OUTBOX_TABLES)
    try:
        db = sqlite3.connect(name, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise OutboxDatabaseError(name, f"cannot open the database ({exc})") from exc
    try:
        try:
            db.execute("PRAGMA user_version").fetchone()
            if name != MEMORY:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise OutboxDatabaseError(name, f"cannot switch to WAL journaling (got {mode!r})")
                db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise _as_corrupt(exc, name, "cannot be read as a SQLite database") from exc
        if migrate:
            try:
                _migrate(db, name)
            except sqlite3.DatabaseError as exc:
                raise _as_corrupt(exc, name, "damaged or inconsistent schema") from exc
        else:
            version = schema_version(db)
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(name, version, SCHEMA_VERSION)
    except BaseException:
        db.close()
        raise
    return db
