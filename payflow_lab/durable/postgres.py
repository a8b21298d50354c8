"""The outbox in PostgreSQL: the same contract as the SQLite one, for dispatchers in several processes.

One dispatcher process is a single point of failure and a ceiling: when it
dies, nothing is delivered until it is back; when the receivers are slow, its
workers are all it has. The answer in production is not a home-made cluster
but the database the payments are already in. :class:`PostgresOutbox` is
:class:`~.outbox.Outbox` (the same methods, the same SQL) on PostgreSQL, and
three things come with the server:

``FOR UPDATE SKIP LOCKED``
    several dispatchers claim due events at once without waiting for each
    other: a row another claimer is taking is skipped, not queued behind.
    This is the pattern River, Oban, pgqueuer and procrastinate are built on.
Leases (:meth:`~.outbox.Outbox.claim`)
    a claim lasts ``lease`` seconds. A dispatcher that is SIGKILLed mid-run
    holds nothing once its leases lapse; another one takes its events over.
``LISTEN``/``NOTIFY``
    recording an event notifies ``payflow_outbox`` in the same transaction
    (delivered on commit); a dispatcher waiting in :meth:`Listener.wait`
    wakes at once instead of at its next poll. Polling stays as the
    fallback: a notification can be missed while a listener reconnects.

Blocking calls, and trio
========================

psycopg 3's async connections run on asyncio only. The engine runs on trio
as well, so this store uses psycopg's *blocking* API from worker threads
(:meth:`~.outbox.Outbox.run` with ``offload=True``, the default here, through
:func:`anyio.to_thread.run_sync`), which works the same on both backends. A
:class:`psycopg_pool.ConnectionPool` gives each call its own connection, so
calls from several threads run side by side (``pool_size`` of them).

Timestamps are Unix seconds by default: several processes, one clock. The
tables are created on first use (under an advisory lock, so two processes
starting together do not race) and stamped with the schema version; a
database with an ``outbox`` table that is not ours is refused.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from typing import Any

from payflow_lab.core.errors import NotAnOutbox, OutboxDatabaseError, SchemaVersionError, ValidationError
from payflow_lab.core.validation import Clock, integer, number
from payflow_lab.durable.events import DURABLE_KINDS
from payflow_lab.durable.outbox import Outbox, is_postgres_url
from payflow_lab.durable.schema import SCHEMA_VERSION

__all__ = ["CHANNEL", "Listener", "PostgresOutbox", "redact"]

#: The ``NOTIFY`` channel on which new events are announced.
CHANNEL = "payflow_outbox"

_LOCK_KEY = 0x50464C42  # the advisory lock that serialises creating the tables: "PFLB", as in SQLite's stamp

_TABLES = (
    """CREATE TABLE payflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE payments (
        id TEXT PRIMARY KEY,
        merchant_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL,
        currency TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        authorized_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payment_id TEXT NOT NULL REFERENCES payments(id),
        merchant_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered_at DOUBLE PRECISION,
        available_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION,
        claims INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX outbox_due ON outbox (status, kind, available_at, seq)",
    "CREATE INDEX outbox_pending ON outbox (available_at, seq) WHERE status = 'pending'",
    """CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY,
        event_id TEXT UNIQUE REFERENCES outbox(event_id),
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        reason TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        replays INTEGER NOT NULL DEFAULT 0,
        last_replay_at DOUBLE PRECISION
    )""",
    "CREATE INDEX dead_letters_by_key ON dead_letters (key, id)",
    "CREATE TABLE runs (run BIGSERIAL PRIMARY KEY, started_at DOUBLE PRECISION NOT NULL, mode TEXT NOT NULL)",
)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """The outbox's SQL uses ``?`` (SQLite's style); psycopg's is ``%s``. The SQL holds no other ``?`` or ``%``."""
    return sql.replace("?", "%s")


class _Connection:
    """A psycopg connection that takes the outbox's ``?`` SQL, like :class:`sqlite3.Connection` does."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(_placeholders(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cursor = self._conn.cursor()
        cursor.executemany(_placeholders(sql), rows)
        return cursor


class PostgresOutbox(Outbox):
    """The outbox in the PostgreSQL database at ``url`` (``postgresql://user@host:port/name``).

    ``pool_size`` connections at most (calls from that many threads run at
    once); ``connect_timeout`` seconds to reach the server before
    :class:`~payflow_lab.core.errors.OutboxDatabaseError`. Other options as
    :class:`~.outbox.Outbox`; ``offload`` defaults to True (blocking calls in
    worker threads), ``clock`` to Unix time.
    """

    _lock_rows = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        kinds: Sequence[str] = DURABLE_KINDS,
        offload: bool = True,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if not is_postgres_url(url):
            raise ValidationError("db", f"must be a postgresql:// URL, got {url!r}")
        self.url = url
        self.pool_size = integer("pool_size", pool_size, minimum=1, maximum=100)
        super().__init__(
            url,
            clock=time.time if clock is None else clock,
            kinds=kinds,
            offload=offload,
            busy_timeout=number("connect_timeout", connect_timeout, above=0, maximum=600, unit=" seconds"),
        )
        self.path = redact(url)

    # ---------------------------------------------------------------- plumbing
    def _open(self, *, busy_timeout: float) -> Any:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as exc:  # pragma: no cover - both are dependencies of the package
            raise OutboxDatabaseError(redact(self.url), f"psycopg is not installed ({exc})") from None
        self._errors = psycopg.Error
        self._lock = nullcontext()  # every call takes its own connection from the pool: nothing to serialise
        # One plain connection first: an unreachable server or a refused login is named at once, not after the
        # pool's reconnection attempts; the same connection creates the tables.
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, round(busy_timeout))) as conn:
                self._create_tables(conn)
        except psycopg.OperationalError as exc:
            raise OutboxDatabaseError(redact(self.url), f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
        pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(busy_timeout))},
            timeout=busy_timeout,
            open=False,
            name="payflow-outbox",
        )
        try:
            pool.open(wait=True, timeout=busy_timeout)
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise OutboxDatabaseError(
                redact(self.url), f"cannot connect to PostgreSQL within {busy_timeout:g} s ({exc})"
            ) from None
        return pool

    def _create_tables(self, conn: Any) -> None:
        name = redact(self.url)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            if "payflow_meta" not in tables:
                if tables & {"outbox", "payments", "dead_letters", "runs"}:
                    raise NotAnOutbox(
                        name,
                        f"has tables named like an outbox's ({', '.join(sorted(tables))}) but no payflow_meta "
                        "stamp: not a payflow-lab outbox; refusing to touch it",
                    )
                for statement in _TABLES:
                    conn.execute(statement)
                conn.execute("INSERT INTO payflow_meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
                return
            row = conn.execute("SELECT value FROM payflow_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
        if version > SCHEMA_VERSION or version < 1:
            raise SchemaVersionError(name, version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:  # the PostgreSQL store starts at version 3: there is nothing older
            raise SchemaVersionError(name, version, SCHEMA_VERSION)

    @contextmanager
    def _write(self) -> Iterator[_Connection]:
        try:
            with self._db.connection() as conn, conn.transaction():
                yield _Connection(conn)
        except self._errors as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> BaseException:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            return OutboxDatabaseError(self.path, f"PostgreSQL: {str(exc).strip()}")
        return exc

    def _notify(self, db: Any) -> None:
        db.execute(f"NOTIFY {CHANNEL}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only query and return its rows (``?`` placeholders, as in SQLite)."""
        try:
            with self._db.connection() as conn:
                return list(conn.execute(_placeholders(sql), params).fetchall())
        except self._errors as exc:
            raise self._translate(exc) from exc

    async def run(self, fn: Any, *args: Any) -> Any:
        """Call a blocking method from async code: in a worker thread (``offload``), up to ``pool_size`` at once."""
        if self.offload and self._limiter is None:
            import anyio

            self._limiter = anyio.CapacityLimiter(self.pool_size)
        return await super().run(fn, *args)

    def close(self) -> None:
        """Close the pool's connections (idempotent)."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def listener(self) -> Listener:
        """A connection that listens for new events (see :class:`Listener`); close it when done."""
        return Listener(self.url)

    def truncate(self) -> None:
        """Delete every payment, event, letter and run (for tests and the lesson's fresh start)."""
        with self._write() as db:
            db.execute("TRUNCATE dead_letters, outbox, payments, runs RESTART IDENTITY")

    def __repr__(self) -> str:
        return f"<PostgresOutbox {self.path!r}>"


class Listener:
    """``LISTEN payflow_outbox`` on a connection of its own; :meth:`wait` blocks until a notification or a timeout.

    Blocking: call it from a worker thread (``anyio.to_thread.run_sync(listener.wait, 1.0,
    abandon_on_cancel=True)``), with a short timeout so that a cancelled wait ends soon.
    """

    def __init__(self, url: str) -> None:
        import psycopg

        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise OutboxDatabaseError(redact(url), f"PostgreSQL: {str(exc).strip()}") from None
        self._conn.execute(f"LISTEN {CHANNEL}")
        #: Notifications received so far.
        self.received = 0

    def wait(self, timeout: float) -> bool:
        """True as soon as new events were announced; False after ``timeout`` seconds of silence."""
        got = False
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            got = True
            self.received += 1
        return got

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
