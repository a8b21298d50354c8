"""The transactional outbox: atomic recording, stable event ids, the spill interface, due events, dead letters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import MalformedPayload, ValidationError
from payflow_lab.core.vtime import run_virtual
from payflow_lab.durable import (
    DURABLE_KINDS,
    Outbox,
    OutboxEvent,
    SQLiteDeadLetters,
    decode_body,
    encode_body,
    event_id,
)
from payflow_lab.hooks import Delivery, HookBus, Spill
from payflow_lab.resilience import RETRIES_EXHAUSTED, DeadLetter, DeadLetterStore, replay


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def payment(n: int, merchant: str = "mch_00001", cents: int = 1250) -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id=merchant, amount_cents=cents, currency="EUR", created_at=50.0 + n)


@pytest.fixture
def outbox() -> Any:
    box = Outbox(clock=Clock())
    yield box
    box.close()


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
    outbox._db.execute(
        "CREATE TRIGGER full_disk BEFORE INSERT ON outbox WHEN NEW.kind = 'audit' "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
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
def test_the_outbox_is_the_hook_bus_spill_store_for_overflow_and_shutdown() -> None:
    box = Outbox(clock=Clock())

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
    box.close()


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


def test_replay_from_the_resilience_parts_works_on_the_sqlite_store(outbox: Outbox) -> None:
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


def test_a_file_outbox_keeps_everything_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, clock=Clock()) as box:
        box.record_authorization(payment(1))
        assert box.start_run("test") == 1
    with Outbox(path, clock=Clock()) as box:
        assert box.counts()["pending"] == 3 and box.start_run("test") == 2
