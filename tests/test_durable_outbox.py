"""The transactional outbox: atomic recording, stable event ids, the spill interface, due events, dead letters, claims.

Every test that takes the ``outbox`` fixture runs against both stores: SQLite
(a file, embedded) and PostgreSQL (a throw-away cluster, see ``conftest.py``).
Where the two must differ (how a trigger is written, how a store is reopened)
the test says so.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import (
    MalformedPayload,
    NotAnOutbox,
    OutboxDatabaseError,
    SchemaVersionError,
    ValidationError,
)
from payflow_lab.core.vtime import run_virtual
from payflow_lab.durable import (
    DURABLE_KINDS,
    Outbox,
    OutboxEvent,
    SQLiteDeadLetters,
    decode_body,
    encode_body,
    event_id,
    open_outbox,
)
from payflow_lab.durable.postgres import PostgresOutbox
from payflow_lab.hooks import Delivery, HookBus, Spill
from payflow_lab.resilience import RETRIES_EXHAUSTED, DeadLetter, DeadLetterStore, replay


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def payment(n: int, merchant: str = "mch_00001", cents: int = 1250) -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id=merchant, amount_cents=cents, currency="EUR", created_at=50.0 + n)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str:
    """Where an outbox of this test lives: ``":memory:"`` or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return ":memory:"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def outbox(store: str) -> Any:
    box = open_outbox(store, clock=Clock(), offload=False)
    yield box
    box.close()


def fail_audit_inserts(box: Outbox) -> None:
    """Make the database refuse every audit event (a stand-in for a full disk in the middle of a transaction)."""
    if isinstance(box, PostgresOutbox):
        with box._write() as db:
            db.execute(
                "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
            db.execute(
                "CREATE TRIGGER full_disk BEFORE INSERT ON outbox FOR EACH ROW WHEN (NEW.kind = 'audit') "
                "EXECUTE FUNCTION full_disk()"
            )
    else:
        box._db.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON outbox WHEN NEW.kind = 'audit' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )


# ------------------------------------------------------------------ recording
def test_the_authorization_and_its_events_are_recorded_together(outbox: Outbox) -> None:
    events = outbox.record_authorization(payment(1))
    assert [e.kind for e in events] == list(DURABLE_KINDS)
    assert [e.event_id for e in events] == [f"evt_000000000001_{k}" for k in DURABLE_KINDS]
    assert all(e.status == "pending" and e.attempts == 0 and e.available_at == 1000.0 for e in events)
    assert events[0].key == "mch_00001" and events[1].key == "analytics"
    assert events[0].payment() == payment(1)
    assert outbox.counts() == {"payments": 1, "events": 3, "pending": 3, "delivered": 0, "dead": 0, "attempts": 0}


def test_if_any_event_cannot_be_written_nothing_is(outbox: Outbox) -> None:
    fail_audit_inserts(outbox)
    with pytest.raises((sqlite3.IntegrityError, psycopg.Error), match="disk full"):
        outbox.record_authorization(payment(1))
    assert outbox.counts()["payments"] == 0 and outbox.counts()["events"] == 0


def test_recording_is_idempotent_and_refuses_a_different_payment_with_the_same_id(outbox: Outbox) -> None:
    first = outbox.record_authorization(payment(1))
    assert outbox.record_authorization(payment(1)) == first
    with pytest.raises(ValidationError) as caught:
        outbox.record_authorization(payment(1, cents=999))
    assert caught.value.field == "payment.id"
    assert outbox.counts()["events"] == 3


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        ((), "at least one"),
        (("webhook", "email"), "unknown side effect"),
        (("audit", "audit"), "twice"),
        ("webhook", "the string"),
    ],
)
def test_bad_kinds_are_refused(kinds: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Outbox(kinds=kinds)


def test_event_bodies_are_stable_and_checked() -> None:
    body = encode_body(payment(7), "webhook")
    assert body == encode_body(payment(7), "webhook")  # the same bytes on every attempt
    assert json.loads(body) == {
        "type": "payment.authorized",
        "id": "evt_000000000007_webhook",
        "kind": "webhook",
        "data": {
            "payment_id": "pay_000000000007",
            "merchant_id": "mch_00001",
            "amount_cents": 1250,
            "currency": "EUR",
            "created_at": 57.0,
        },
    }
    assert decode_body(body) == ("evt_000000000007_webhook", "webhook", payment(7))
    assert event_id("pay_000000000007", "audit") == "evt_000000000007_audit"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "payment.authorized", "id": "x", "kind": "webhook"}', "missing data"),
        ('{"type": "refund", "id": "x", "kind": "webhook", "data": {}}', "type must be"),
        (
            '{"type": "payment.authorized", "id": "evt_000000000007_webhook", "kind": "webhook", '
            '"data": {"payment_id": "pay_000000000007", "merchant_id": "mch_00001", "amount_cents": 12.5, '
            '"currency": "EUR", "created_at": 1}}',
            "amount_cents",
        ),
        (
            '{"type": "payment.authorized", "id": "evt_000000000008_webhook", "kind": "webhook", '
            '"data": {"payment_id": "pay_000000000007", "merchant_id": "mch_00001", "amount_cents": 1, '
            '"currency": "EUR", "created_at": 1}}',
            "does not match",
        ),
    ],
)
def test_malformed_payloads_are_named(body: str, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message) as caught:
        decode_body(body)
    assert caught.value.field == "payload"


# ------------------------------------------------------------------ due, done, later
def test_due_events_come_oldest_first_and_a_cursor_reads_only_what_is_new(outbox: Outbox) -> None:
    clock: Clock = outbox.clock  # type: ignore[assignment]
    for n in range(1, 4):
        outbox.record_authorization(payment(n), kinds=("webhook",))
        clock.now += 1
    first = outbox.due("webhook", 2)
    assert [e.payment_id for e in first] == ["pay_000000000001", "pay_000000000002"]
    after = (first[-1].available_at, first[-1].seq)
    assert [e.payment_id for e in outbox.due("webhook", 10, after=after)] == ["pay_000000000003"]
    assert outbox.reschedule(first[0].event_id, available_at=clock.now + 60, attempts=2, error="HTTP 503")
    assert [e.payment_id for e in outbox.due("webhook", 10)] == ["pay_000000000002", "pay_000000000003"]
    later = outbox.due("webhook", 10, now=clock.now + 61)
    assert later[-1].event_id == first[0].event_id and later[-1].attempts == 2 and later[-1].last_error == "HTTP 503"
    assert outbox.next_due_at() == 1001.0
    assert outbox.mark_delivered(first[1].event_id, attempts=1)
    assert not outbox.mark_delivered(first[1].event_id)  # already done: a redelivery's mark changes nothing
    assert outbox.counts()["delivered"] == 1 and outbox.pending() == 2


# ---------------------------------------------------------------------- spill
def test_the_outbox_is_the_hook_bus_spill_store_for_overflow_and_shutdown(outbox: Outbox) -> None:
    box = outbox

    async def main() -> Any:
        release = anyio.Event()

        async def slow_webhook(p: Payment) -> None:
            await release.wait()

        bus = HookBus(timeout=None, queue_size=1, workers=1)
        bus.hook("payment.authorized", slow_webhook, name="webhook", overflow=Spill(box))
        async with bus:
            for n in range(1, 5):
                bus.emit("payment.authorized", payment(n))
                await anyio.lowlevel.checkpoint()  # the worker takes the first one; the queue holds one more
            report = await bus.aclose(0)
        return bus.stats()["webhook"], report

    stats, report = run_virtual(main)
    # 1 running (cancelled at the deadline), 1 queued (never started: spilled), 2 overflowed (spilled at once).
    assert stats.spilled == 2 and report.subscribers["webhook"].spilled == 1
    assert [e.payment_id for e in box.events()] == ["pay_000000000003", "pay_000000000004", "pay_000000000002"]
    assert box.spilled == {"webhook": 3}
    assert box.counts()["payments"] == 3


def test_a_spilled_batch_with_a_bad_payload_is_refused_whole(outbox: Outbox) -> None:
    good = Delivery("payment.authorized", "webhook", payment(1))
    with pytest.raises(ValidationError) as caught:
        outbox.spill([good, Delivery("payment.authorized", "webhook", {"id": "pay_1"})])
    assert caught.value.field == "payload"
    with pytest.raises(ValidationError, match="not a side effect"):
        outbox.spill([Delivery("payment.authorized", "email", payment(1))])
    assert outbox.counts()["events"] == 0
    [event] = outbox.record_authorization(payment(2), kinds=("webhook",))
    outbox.spill([Delivery("outbox.webhook", "webhook", event)])  # already kept: stays pending, due
    assert outbox.due("webhook", 5) == [event]
    stranger = OutboxEvent(99, "evt_000000000063_webhook", "webhook", "pay_000000000063", "mch_00001", "{}", 1.0)
    with pytest.raises(ValidationError, match="not in this outbox"):
        outbox.spill([Delivery("outbox.webhook", "webhook", stranger)])


# -------------------------------------------------------------- dead letters
def test_dead_letters_live_in_the_same_file_and_filter_like_the_in_memory_store(outbox: Outbox) -> None:
    clock: Clock = outbox.clock  # type: ignore[assignment]
    store = outbox.dead_letters
    assert isinstance(store, DeadLetterStore) and isinstance(store, SQLiteDeadLetters)
    for n, merchant in enumerate(["mch_00001", "mch_00002", "mch_00001"], start=1):
        [event] = outbox.record_authorization(payment(n, merchant=merchant), kinds=("webhook",))
        store.add(
            event.key,
            event,
            RETRIES_EXHAUSTED if n != 2 else "breaker_open_too_long",
            attempts=n + 2,
            kind="webhook",
            error="HTTP 503",
        )
        clock.now += 100
    note = store.add("analytics", {"free": "form"}, "manual", attempts=0, kind="analytics")
    ids = lambda letters: [letter.id for letter in letters]  # noqa: E731
    assert ids(store.list()) == ["dl_000001", "dl_000002", "dl_000003", "dl_000004"]
    assert ids(store.list(key="mch_00001")) == ["dl_000001", "dl_000003"]
    assert ids(store.list(reason="breaker_open_too_long")) == ["dl_000002"]
    assert ids(store.list(kind="analytics")) == ["dl_000004"]
    assert ids(store.list(older_than=150)) == ["dl_000001", "dl_000002"]
    assert ids(store.list(newer_than=150)) == ["dl_000003", "dl_000004"]
    assert ids(store.list(limit=1)) == ["dl_000001"]
    assert store.count_by_reason() == {"breaker_open_too_long": 1, "manual": 1, RETRIES_EXHAUSTED: 2}
    assert store.count_by_key() == {"analytics": 1, "mch_00001": 2, "mch_00002": 1}
    assert note.payload == {"free": "form"} and len(store) == 4
    assert outbox.counts()["dead"] == 3 and outbox.counts()["pending"] == 0
    with pytest.raises(ValidationError, match="not pending"):  # one event cannot be dead-lettered twice
        store.add("mch_00001", outbox.events()[0], RETRIES_EXHAUSTED, attempts=1)
    with pytest.raises(ValidationError):
        store.add("", None, RETRIES_EXHAUSTED, attempts=1)

    # Re-queue: the same events are pending again, due now; the letters are gone.
    assert store.requeue(["dl_000001", "dl_000003"]) == ["dl_000001", "dl_000003"]
    assert [e.status for e in outbox.events()] == ["pending", "dead", "pending"]
    assert [e.event_id for e in outbox.due("webhook", 10)] == ["evt_000000000001_webhook", "evt_000000000003_webhook"]
    with pytest.raises(ValidationError, match="no outbox event"):
        store.requeue(["dl_000004"])
    assert len(store) == 2


def test_replay_from_the_resilience_parts_works_on_the_outbox_store(outbox: Outbox) -> None:
    store = outbox.dead_letters
    for n in range(1, 5):
        [event] = outbox.record_authorization(payment(n), kinds=("webhook",))
        store.add(event.key, event, RETRIES_EXHAUSTED, attempts=3)
    outbox.clock.now = 2000.0  # type: ignore[attr-defined]

    async def deliver(letter: DeadLetter) -> None:
        if int(letter.payload.payment_id[-1]) % 2:
            raise ConnectionError("still down")

    report = run_virtual(lambda: replay(store, deliver))
    assert report.replayed == ["dl_000002", "dl_000004"] and report.failed == ["dl_000001", "dl_000003"]
    left = store.list()
    assert [(letter.id, letter.attempts, letter.replays, letter.last_replay_at) for letter in left] == [
        ("dl_000001", 4, 1, 2000.0),
        ("dl_000003", 4, 1, 2000.0),
    ]
    assert left[0].error == "ConnectionError: still down"
    assert [e.status for e in outbox.events()] == ["dead", "delivered", "dead", "delivered"]


def test_a_store_keeps_everything_across_reopening(store: str, tmp_path: Path) -> None:
    where = str(tmp_path / "o.sqlite") if store == ":memory:" else store
    with open_outbox(where, clock=Clock()) as box:
        box.record_authorization(payment(1))
        [claimed] = box.claim("d1", 1, lease=30, kinds=("webhook",))
        assert box.start_run("test") == 1
    with open_outbox(where, clock=Clock()) as box:
        assert box.counts()["pending"] == 3 and box.start_run("test") == 2
        assert box.claims() == {"d1": 1} and box.get(claimed.event_id) == claimed  # a claim outlives its process


# ---------------------------------------------------------------------- claims
def test_claims_take_due_events_oldest_first_and_nobody_else_gets_them_while_the_lease_lives(outbox: Outbox) -> None:
    clock: Clock = outbox.clock  # type: ignore[assignment]
    for n in range(1, 6):
        outbox.record_authorization(payment(n), kinds=("webhook",))
        clock.now += 1
    first = outbox.claim("d1", 2, lease=10)
    assert [e.payment_id for e in first] == ["pay_000000000001", "pay_000000000002"]
    second = outbox.claim("d2", 10, lease=10)
    assert [e.payment_id for e in second] == ["pay_000000000003", "pay_000000000004", "pay_000000000005"]
    assert outbox.claim("d3", 10, lease=10) == []
    assert outbox.claims() == {"d1": 2, "d2": 3}
    assert outbox.holds("d1", first[0].event_id) and not outbox.holds("d2", first[0].event_id)
    assert outbox.claim("d3", 0, lease=10) == [] and outbox.reclaimed() == 0

    clock.now += 10  # every lease lapses: d1 and d2 died, or paused
    assert not outbox.holds("d1", first[0].event_id) and outbox.claims() == {}
    assert outbox.held_by("d1") == 2  # still on the rows until someone takes them over
    taken = outbox.claim("d3", 10, lease=10)
    assert [e.event_id for e in taken] == [e.event_id for e in first + second]
    assert outbox.reclaimed() == 5


def test_only_the_claim_that_holds_an_event_may_write_its_outcome(outbox: Outbox) -> None:
    clock: Clock = outbox.clock  # type: ignore[assignment]
    events = [outbox.record_authorization(payment(n), kinds=("webhook",))[0] for n in range(1, 4)]
    outbox.claim("old", 3, lease=5)
    clock.now += 6  # "old" paused past its lease
    outbox.claim("new", 3, lease=5)
    # The paused claimer wakes up and tries to write: every outcome is refused, nothing changes.
    assert not outbox.mark_delivered(events[0].event_id, owner="old")
    assert not outbox.reschedule(events[1].event_id, available_at=clock.now + 60, attempts=1, owner="old")
    with pytest.raises(ValidationError, match="not pending and claimed by 'old'"):
        outbox.dead_letters.add(events[2].key, events[2], RETRIES_EXHAUSTED, attempts=1, owner="old")
    assert outbox.counts()["pending"] == 3 and len(outbox.dead_letters) == 0
    assert outbox.claims() == {"new": 3}
    # The holder's writes land, and settling frees the claim.
    assert outbox.mark_delivered(events[0].event_id, owner="new")
    assert outbox.reschedule(events[1].event_id, available_at=clock.now + 60, attempts=1, owner="new")
    outbox.dead_letters.add(events[2].key, events[2], RETRIES_EXHAUSTED, attempts=1, owner="new")
    assert outbox.counts() == {"payments": 3, "events": 3, "pending": 1, "delivered": 1, "dead": 1, "attempts": 3}
    assert outbox.claims() == {}
    assert outbox.claim("new", 5, lease=5) == []  # the rescheduled one is not due for a minute
    assert [e.event_id for e in outbox.claim("new", 5, lease=5, now=clock.now + 60)] == [events[1].event_id]


def test_a_released_claim_is_free_at_once_and_a_spilled_one_too(outbox: Outbox) -> None:
    events = [outbox.record_authorization(payment(n), kinds=("webhook",))[0] for n in range(1, 4)]
    claimed = outbox.claim("d1", 3, lease=60)
    assert outbox.release("d1", [claimed[0].event_id]) == 1
    assert [e.event_id for e in outbox.claim("d2", 5, lease=60)] == [events[0].event_id]
    outbox.spill([Delivery("outbox.webhook", "webhook", claimed[1])])  # a bus shutting down hands it back
    assert [e.event_id for e in outbox.claim("d2", 5, lease=60)] == [events[1].event_id]
    assert outbox.release("d1") == 1 and outbox.claims() == {"d2": 2}


def test_claims_take_only_the_kinds_asked_for_and_check_their_arguments(outbox: Outbox) -> None:
    outbox.record_authorization(payment(1))
    assert [e.kind for e in outbox.claim("d1", 5, lease=5, kinds=("audit",))] == ["audit"]
    assert [e.kind for e in outbox.claim("d1", 5, lease=5)] == ["webhook", "analytics"]
    for owner in ("", None, "x" * 201):
        with pytest.raises(ValidationError) as caught:
            outbox.claim(owner, 1, lease=5)  # type: ignore[arg-type]
        assert caught.value.field == "owner"
    with pytest.raises(ValidationError, match="lease"):
        outbox.claim("d1", 1, lease=0)
    with pytest.raises(ValidationError, match="limit"):
        outbox.claim("d1", -1, lease=5)
    with pytest.raises(ValidationError, match="unknown side effect"):
        outbox.claim("d1", 1, lease=5, kinds=("email",))


def test_claimers_racing_on_postgresql_never_get_the_same_event(postgres_url: str) -> None:
    """Eight threads, each its own connection, claim in small batches at once: SKIP LOCKED, no event twice."""
    import threading

    with PostgresOutbox(postgres_url, clock=Clock(), pool_size=8) as box:
        for n in range(1, 401):
            box.record_authorization(payment(n, merchant=f"mch_{n % 7:05d}"), kinds=("webhook",))
        got: dict[str, list[str]] = {}
        start = threading.Barrier(8)

        def claimer(name: str) -> None:
            start.wait()
            mine = got.setdefault(name, [])
            while batch := box.claim(name, 7, lease=60):
                mine.extend(e.event_id for e in batch)

        threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [ident for ids in got.values() for ident in ids]
        assert len(every) == 400 and len(set(every)) == 400
        assert sum(1 for ids in got.values() if ids) >= 2  # they really did run side by side
        assert box.claims() == {name: len(ids) for name, ids in got.items() if ids}
        assert box.reclaimed() == 0


def test_new_events_are_announced_to_listeners_on_postgresql(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url, clock=Clock()) as box, box.listener() as listener:
        assert not listener.wait(0.05)
        box.record_authorization(payment(1))
        assert listener.wait(5.0)
        [event] = box.record_authorization(payment(2), kinds=("webhook",))
        box.dead_letters.add(event.key, event, RETRIES_EXHAUSTED, attempts=1)
        assert listener.wait(5.0)
        box.dead_letters.requeue(["dl_000001"])  # a re-queued letter is new work too
        assert listener.wait(5.0) and listener.received == 3


def test_a_postgresql_database_that_is_not_an_outbox_is_refused_untouched(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE outbox (id INT)")
    with pytest.raises(NotAnOutbox, match="no payflow_meta"):
        PostgresOutbox(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables == ["outbox"]


def test_a_newer_postgresql_schema_is_refused(postgres_url: str) -> None:
    PostgresOutbox(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE payflow_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        PostgresOutbox(postgres_url)


def test_an_unreachable_or_misspelt_postgresql_is_named_clearly() -> None:
    with pytest.raises(OutboxDatabaseError) as caught:
        PostgresOutbox("postgresql://nobody:secret@127.0.0.1:9/nowhere", connect_timeout=2)
    assert "127.0.0.1:9" in str(caught.value) and "secret" not in str(caught.value)
    assert caught.value.field == "db"
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        PostgresOutbox("outbox.sqlite")
    with pytest.raises(ValidationError, match="pool_size"):
        PostgresOutbox("postgresql://x@127.0.0.1:9/y", pool_size=0)


def test_truncate_empties_a_store_and_numbering_starts_again(outbox: Outbox) -> None:
    [event] = outbox.record_authorization(payment(1), kinds=("webhook",))
    outbox.dead_letters.add(event.key, event, RETRIES_EXHAUSTED, attempts=1)
    outbox.start_run("test")
    outbox.truncate()
    assert outbox.counts() == {"payments": 0, "events": 0, "pending": 0, "delivered": 0, "dead": 0, "attempts": 0}
    assert len(outbox.dead_letters) == 0
    [again] = outbox.record_authorization(payment(2), kinds=("webhook",))
    assert again.seq == 1 and outbox.start_run("test") == 1
