"""The delivery function and the dispatcher, in virtual time: done only when done, retried, deferred, dead-lettered.

A scripted transport stands in for the receivers: it applies each event to a
:class:`ReceiverLedger` (deduplicating, as a real receiver does) and fails,
hangs or refuses as each test says.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import DeliveryFailed, DeliveryRejected, ValidationError
from payflow_lab.core.recorder import strip_nondeterministic
from payflow_lab.core.vtime import run_virtual
from payflow_lab.durable import (
    RETRY_ON,
    Deliverer,
    Dispatcher,
    Outbox,
    OutboxEvent,
    ReceiverLedger,
    SimulatedTransport,
    Transport,
)
from payflow_lab.durable.pipeline import crash_demo, run_durable
from payflow_lab.resilience import (
    BreakerConfig,
    KeyedCircuitBreaker,
    KeyedRateLimiter,
    RateLimit,
    RetryPolicy,
)


def payment(n: int, merchant: str = "mch_00001") -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id=merchant, amount_cents=100 * n, currency="USD", created_at=0.0)


class Scripted:
    """A transport whose behaviour is ``plan(event, now) -> "ok" | "fail" | "reject" | "hang" | "ack-hang"``."""

    def __init__(self, plan: Callable[[OutboxEvent, float], str]) -> None:
        self.plan = plan
        self.ledger = ReceiverLedger()
        self.calls = 0

    async def send(self, event: OutboxEvent) -> None:
        self.calls += 1
        await anyio.sleep(0.1)
        what = self.plan(event, anyio.current_time())
        if what == "fail":
            raise DeliveryFailed("HTTP 503", status=503)
        if what == "reject":
            raise DeliveryRejected("HTTP 410", status=410)
        if what == "hang":
            await anyio.sleep_forever()
        self.ledger.apply(event.event_id, event.kind, event.payment(), at=anyio.current_time())
        if what == "ack-hang":  # applied, but the answer never comes back
            await anyio.sleep_forever()


def deliverer(transport: Any, **options: Any) -> Deliverer:
    options.setdefault(
        "retry", RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=2.0, rng=random.Random(1), retry_on=RETRY_ON)
    )
    return Deliverer(transport, timeout=5.0, **options)


def one_event(outbox: Outbox, kind: str = "webhook") -> OutboxEvent:
    [event] = outbox.record_authorization(payment(1), kinds=(kind,))
    return event


# --------------------------------------------------------------------- the delivery function
def test_the_delivery_function_reports_instead_of_raising() -> None:
    outbox = Outbox(clock=lambda: 0.0)
    event = one_event(outbox)

    def go(plan: Callable[[OutboxEvent, float], str], **options: Any) -> tuple[Any, Scripted]:
        transport = Scripted(plan)
        return run_virtual(deliverer(transport, **options).deliver, event), transport

    result, transport = go(lambda e, t: "ok")
    assert (result.status, result.attempts) == ("delivered", 1) and transport.ledger.has(event.event_id)
    calls: list[float] = []

    def fail_once(e: OutboxEvent, t: float) -> str:
        calls.append(t)
        return "fail" if len(calls) == 1 else "ok"

    result, _ = go(fail_once)  # the first attempt fails, the retry succeeds
    assert (result.status, result.attempts) == ("delivered", 2)
    result, _ = go(lambda e, t: "fail")
    assert (result.status, result.attempts, result.reason) == ("retry", 3, "retries_exhausted")
    assert result.error == "DeliveryFailed: HTTP 503"
    result, _ = go(lambda e, t: "reject")
    assert (result.status, result.attempts, result.reason) == ("rejected", 1, "rejected_by_receiver")
    result, _ = go(lambda e, t: "hang")
    assert (result.status, result.attempts, result.error) == ("retry", 3, "timeout")


def test_an_open_breaker_or_an_empty_bucket_defers_without_calling() -> None:
    outbox = Outbox(clock=lambda: 0.0)
    event = one_event(outbox)

    async def main() -> tuple[Any, Any, int]:
        transport = Scripted(lambda e, t: "fail")
        breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(
            BreakerConfig(failure_ratio=None, consecutive_failures=2, break_duration=30.0)
        )
        d = deliverer(transport, breakers=breakers)
        first = await d.deliver(event)  # two failures open the breaker; the third attempt is refused
        second = await d.deliver(event)  # refused at once: no call made
        return first, second, transport.calls

    first, second, calls = run_virtual(main)
    assert (first.status, first.attempts, first.reason) == ("deferred", 2, "breaker_open_too_long")
    assert (second.status, second.attempts) == ("deferred", 0) and 29 < second.retry_after <= 30
    assert calls == 2

    async def limited() -> list[str]:
        transport = Scripted(lambda e, t: "ok")
        limiter: KeyedRateLimiter[str] = KeyedRateLimiter(RateLimit(rate_per_s=0.1, burst=1))
        d = deliverer(transport, limiter=limiter, max_rate_wait=1.0)
        return [(await d.deliver(event)).status for _ in range(2)]

    assert run_virtual(limited) == ["delivered", "deferred"]


def test_the_delivery_function_checks_its_parts() -> None:
    for bad, field in [
        (dict(timeout=0), "timeout"),
        (dict(breakers=object()), "breakers"),
        (dict(retry="twice"), "retry"),
        (dict(max_rate_wait=-1), "max_rate_wait"),
    ]:
        with pytest.raises(ValidationError) as caught:
            Deliverer(Scripted(lambda e, t: "ok"), **bad)
        assert caught.value.field == field
    with pytest.raises(ValidationError, match="send"):
        Deliverer(object())  # type: ignore[arg-type]
    assert isinstance(Scripted(lambda e, t: "ok"), Transport)


# ---------------------------------------------------------------------------- the dispatcher
def dispatch(
    plan: Callable[[OutboxEvent, float], str],
    *,
    payments: int = 20,
    run_for: float = 120.0,
    outbox: Outbox | None = None,
    transport: Scripted | None = None,
    deadline: float = 5.0,
    with_breakers: bool = True,
    **options: Any,
) -> tuple[Outbox, Scripted, Dispatcher]:
    box = outbox or Outbox(clock=anyio.current_time)
    transport = transport or Scripted(plan)
    breakers: KeyedCircuitBreaker[str] | None = (
        KeyedCircuitBreaker(BreakerConfig(minimum_throughput=5, window_size=10.0, break_duration=5.0))
        if with_breakers
        else None
    )
    d = Dispatcher(
        box,
        deliverer(transport, breakers=breakers),
        workers=4,
        poll_interval=1.0,
        shutdown_deadline=deadline,
        backoff_base=1.0,
        backoff_cap=10.0,
        rng=random.Random(3),
        **options,
    )

    async def main() -> None:
        async with d:
            for n in range(1, payments + 1):
                box.record_authorization(payment(n, merchant=f"mch_0000{1 + n % 3}"))
                d.notify()
                await anyio.sleep(0.5)
            await d.drain(run_for)

    run_virtual(main)
    return box, transport, d


def test_everything_is_delivered_and_marked_once_when_receivers_are_healthy() -> None:
    box, transport, d = dispatch(lambda e, t: "ok")
    assert box.counts() == {"payments": 20, "events": 60, "pending": 0, "delivered": 60, "dead": 0, "attempts": 60}
    assert transport.ledger.stats() == {"deliveries": 60, "applied": 60, "duplicates": 0}
    assert d.actions["delivered"] == 60 and d.claimed == 60 and d.in_flight == 0


def test_a_failing_endpoint_is_deferred_behind_its_breaker_and_delivered_after_it_recovers() -> None:
    def plan(event: OutboxEvent, now: float) -> str:
        return "fail" if event.kind == "webhook" and event.merchant_id == "mch_00002" and now < 30 else "ok"

    box, transport, d = dispatch(plan)
    assert box.counts()["delivered"] == 60 and box.counts()["dead"] == 0
    assert d.actions["deferred"] > 0  # waited in the outbox while the breaker was open
    stats = transport.ledger.stats()
    assert stats["applied"] == 60 and stats["duplicates"] == 0
    assert {t.name for t in d.deliverer.breakers.transitions} == {"mch_00002"}  # type: ignore[union-attr]


def test_an_endpoint_that_never_recovers_ends_in_the_dead_letters_with_its_reason() -> None:
    def plan(event: OutboxEvent, now: float) -> str:
        if event.kind == "audit":
            return "reject"
        return "fail" if event.kind == "analytics" and event.payment_id.endswith("1") else "ok"

    box, _, d = dispatch(plan, payments=3, max_attempts=6, run_for=600, with_breakers=False)
    letters = {(letter.kind, letter.reason, letter.attempts) for letter in box.dead_letters.list()}
    assert letters == {("audit", "rejected_by_receiver", 1), ("analytics", "retries_exhausted", 6)}
    assert box.counts()["dead"] == 4 and box.counts()["delivered"] == 5 and box.counts()["pending"] == 0
    assert d.actions["rescheduled"] == 1  # 3 attempts, rescheduled, 3 more: 6 in all


def test_an_event_is_marked_done_only_after_its_receiver_answered() -> None:
    box = Outbox(clock=anyio.current_time)
    transport = Scripted(lambda e, t: "ack-hang")
    # The receiver applies every event but never answers; the process stops after a few seconds.
    dispatch(lambda e, t: "ack-hang", payments=2, run_for=3.0, outbox=box, transport=transport, deadline=0.0)
    assert box.counts()["pending"] == 6 and box.counts()["delivered"] == 0
    assert transport.ledger.stats()["applied"] == 6
    # The restart sends them again; the receiver recognises every one and applies nothing twice.
    transport.plan = lambda e, t: "ok"
    dispatch(lambda e, t: "ok", payments=0, outbox=box, transport=transport)
    assert box.counts()["delivered"] == 6
    assert transport.ledger.stats() == {"deliveries": 12, "applied": 6, "duplicates": 6}


def test_a_corrupt_event_goes_to_the_dead_letters_instead_of_looping() -> None:
    box = Outbox(clock=anyio.current_time)
    box.record_authorization(payment(1), authorized_at=0.0)
    box._db.execute("UPDATE outbox SET payload = '{\"type\": \"payment.authorized\"' WHERE kind = 'audit'")

    def plan(event: OutboxEvent, now: float) -> str:
        event.payment()  # a receiver parses the body (and the simulated one does so before calling)
        return "ok"

    _, transport, d = dispatch(plan, payments=0, outbox=box)
    [letter] = box.dead_letters.list()
    assert (letter.kind, letter.reason, letter.attempts) == ("audit", "malformed_payload", 1)
    assert "not JSON" in (letter.error or "") and box.counts()["delivered"] == 2 and d.claimed == 3


def test_dispatcher_settings_are_checked() -> None:
    box = Outbox()
    d = deliverer(Scripted(lambda e, t: "ok"))
    for bad, field in [
        (dict(workers=0), "workers"),
        (dict(workers={"webhook": 2}), "workers"),
        (dict(poll_interval=0), "poll_interval"),
        (dict(max_attempts=0), "max_attempts"),
        (dict(shutdown_deadline=-1), "shutdown_deadline"),
        (dict(queue_size=0), "queue_size"),
        (dict(max_defer=float("nan")), "max_defer"),
    ]:
        with pytest.raises(ValidationError) as caught:
            Dispatcher(box, d, **bad)
        assert caught.value.field == field


# ------------------------------------------------------------------------ in the simulation
def test_the_durable_pipeline_is_deterministic_and_delivers_everything(tmp_path: Any) -> None:
    first = run_durable("recovery", seed=3, scale=0.02, duration=900, memory="off")
    second = run_durable("recovery", seed=3, scale=0.02, duration=900, memory="off")
    assert strip_nondeterministic(first.summary) == strip_nondeterministic(second.summary)
    s = first.summary
    assert s["phase"] == 6 and s["phase_name"] == "durable_outbox"
    events = s["outbox"]["events"]
    assert events == 3 * s["payments"]["authorized"] > 100
    assert s["outbox"]["delivered"] + s["outbox"]["dead"] + s["outbox"]["pending"] == events
    assert s["receivers"]["applied"] == s["outbox"]["delivered"]
    assert s["side_effects"]["delivered"] == s["outbox"]["delivered"]
    # The failing merchant's breaker opened; the critical path never waited for a webhook.
    assert s["breaker_transitions"] > 0 and s["latency_ms"]["p50"] < 200
    assert "outbox_pending" in first.series


def test_the_same_delivery_function_runs_over_the_simulated_world() -> None:
    from payflow_lab.core.recorder import Recorder
    from payflow_lab.core.world import World
    from payflow_lab.durable import HttpTransport, Routes

    async def main() -> tuple[str, bool]:
        world = World(seed=1, scale=0.01, clock=anyio.current_time, recorder=Recorder(anyio.current_time))
        box = Outbox(clock=anyio.current_time)
        [event] = box.record_authorization(payment(1, merchant="mch_00001"), kinds=("webhook",))
        transport = SimulatedTransport(world)
        result = await deliverer(transport).deliver(event)
        return result.status, transport.ledger.has(event.event_id)

    assert run_virtual(main) == ("delivered", True)
    # The very same class takes the HTTP transport: only the transport (and the clock) differ.
    http = HttpTransport(Routes.from_dict({"webhook": [{"url": "http://127.0.0.1:1/", "secret": "whsec_AAAAAAAA"}]}))
    assert isinstance(http, Transport) and deliverer(http).transport is http


def test_after_a_crash_the_outbox_loses_nothing_where_memory_loses_work() -> None:
    demo = crash_demo(seed=7, scale=0.05)
    assert demo.crash_at == "14:05:00"
    assert demo.in_memory["lost"] > 0
    box = demo.outbox
    assert box["lost"] == 0 and box["pending_at_crash"] > 0
    assert box["applied_in_all"] + box["still_pending"] + box["dead_lettered"] >= box["events_in_all"]
    assert crash_demo(seed=7, scale=0.05).as_dict() == demo.as_dict()  # deterministic
