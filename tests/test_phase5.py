"""Phase 5: breakers, rate limits, lanes, retries, deferral and dead letters on the webhook path.

Scenario runs are small (scale 0.05, memory off) so the file stays fast; the
dynamics are those of ``payflow-lab run --scenario recovery --phase 5`` at the
default scale (the figures are in the report of that command). The focused
tests drive a :class:`HardenedPipeline` directly in virtual time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

import anyio
import pytest

import payflow_lab as pf
from payflow_lab.core.domain import Payment, Tier
from payflow_lab.core.errors import Declined
from payflow_lab.core.recorder import Recorder, strip_nondeterministic
from payflow_lab.core.vtime import run_virtual
from payflow_lab.core.world import World
from payflow_lab.phases import get_phase
from payflow_lab.phases.hardened import INTERNAL_KINDS, HardenedPipeline
from payflow_lab.phases.webhook_lanes import BREAKERS, MAX_DEFER_S
from payflow_lab.resilience import REASONS
from payflow_lab.runner import RunConfig, RunResult, Simulation

SCALE = 0.05
START = 14 * 3600.0


def simulate(backend: str = "asyncio", **options: Any) -> tuple[Simulation, RunResult]:
    """A run whose simulation (world, pipeline) stays readable afterwards."""
    config = RunConfig(phase=5, scale=SCALE, memory="off", backend=backend, **options)
    simulation = Simulation(config)
    return simulation, run_virtual(simulation.run, backend=backend, seed=config.seed)


@cache
def recovery() -> tuple[Simulation, RunResult]:
    return simulate(scenario="recovery", seed=7)


@cache
def one_merchant_down() -> tuple[Simulation, RunResult, str]:
    """Five times the normal traffic; the busiest standard merchant's endpoint refuses every call."""
    world = World(seed=3, scale=SCALE, clock=lambda: START, recorder=Recorder(lambda: START))
    merchant_id = world.busiest(Tier.STANDARD).id
    simulation, result = simulate(
        scenario="normal",
        seed=3,
        duration=900,
        faults={"traffic_multiplier": 5.0, "merchants": {merchant_id: {"mode": "down"}}},
    )
    return simulation, result, merchant_id


def drive(
    body: Callable[[World, HardenedPipeline], Awaitable[None]], *, scale: float = 0.1, backend: str = "asyncio"
) -> tuple[World, HardenedPipeline]:
    """Run ``body`` against a started Phase 5 pipeline in virtual time; return the world and the pipeline."""
    box: dict[str, Any] = {}

    async def main() -> None:
        t0 = anyio.current_time()

        def clock() -> float:
            return START + anyio.current_time() - t0

        world = World(seed=11, scale=scale, clock=clock, recorder=Recorder(clock))
        async with HardenedPipeline(world) as pipeline:
            box["world"], box["pipeline"] = world, pipeline
            await body(world, pipeline)

    run_virtual(main, backend=backend, seed=11)
    return box["world"], box["pipeline"]


def payment_for(world: World, merchant_id: str, serial: int) -> Payment:
    return Payment(
        id=f"pay_{serial:012x}", merchant_id=merchant_id, amount_cents=2_500, currency="USD", created_at=world.clock()
    )


async def pay(pipeline: HardenedPipeline, payment: Payment) -> None:
    pipeline.recorder.payment_started(payment)
    try:
        await pipeline.process_payment(payment)
    except Declined:
        pipeline.recorder.payment_errored(payment, "declined")
    else:
        pipeline.recorder.payment_completed(payment)


# ----------------------------------------------------------------------------- the phase
def test_phase_5_is_registered() -> None:
    cls = get_phase(5)
    assert cls is HardenedPipeline
    assert (cls.number, cls.name, cls.title) == (5, "hardened", "Phase 5: production hardening")
    assert 5 in pf.available_phases()


# ------------------------------------------------------------------- recovery (done-when)
def test_recovery_payments_never_wait_for_webhooks() -> None:
    s = recovery()[1].summary
    assert s["payments"]["stuck"] == 0
    assert set(s["payments"]["failed_by_reason"]) <= {"declined by the card network"}
    p50, auth = s["latency_ms"]["p50"], s["authorization_ms"]["p50"]
    assert auth <= p50 <= 1.10 * auth
    assert s["latency_ms"]["max"] < 1_000


def test_recovery_opens_only_the_failing_merchants_breaker() -> None:
    simulation, result = recovery()
    failing = simulation.world.busiest(Tier.PREMIUM).id
    breakers = result.summary["breakers"]
    assert set(breakers) == {failing}
    moves = breakers[failing]["transitions"]
    assert moves[0]["from"] == "closed" and moves[0]["to"] == "open"
    assert "14:15:00" <= moves[0]["at"] < "14:30:00"  # opened during the outage ...
    assert moves[-1]["to"] == "closed" and moves[-1]["at"] >= "14:30:00"  # ... and closed after it
    assert breakers[failing]["state"] == "closed"


def test_recovery_every_webhook_is_delivered_or_dead_lettered_with_a_reason() -> None:
    simulation, result = recovery()
    s = result.summary
    webhook = s["side_effects"]["by_kind"]["webhook"]
    assert webhook["pending"] == 0 and webhook["failed"] == webhook["dropped"] == 0
    assert webhook["started"] == webhook["delivered"] + webhook["dead_lettered"] == s["payments"]["authorized"]
    assert s["dead_letters"]["total"] == webhook["dead_lettered"] == sum(s["dead_letters"]["by_reason"].values())
    assert set(s["dead_letters"]["by_reason"]) <= set(REASONS)
    letters = simulation.pipeline.webhooks.dead_letters.list()
    assert all(letter.reason and letter.error for letter in letters)
    failing = simulation.world.busiest(Tier.PREMIUM).id
    assert Counter(letter.key for letter in letters)[failing] >= 0.8 * len(letters)  # the outage's, mostly


def test_recovery_is_measured_from_the_endpoints_return_to_its_backlog_delivered() -> None:
    simulation, result = recovery()
    s = result.summary
    failing = simulation.world.busiest(Tier.PREMIUM).id
    (measured,) = s["recovery"]["slowest"]
    assert measured["merchant"] == failing and measured["endpoint_back_at"] == "14:30:00"
    assert measured["backlog_at_recovery"] > 10
    assert measured["delivered_after_recovery"] >= measured["backlog_at_recovery"] - 5
    assert measured["breaker_closed_at"] <= measured["backlog_delivered_at"]
    # premium breaks last 30 s, then the backlog drains at the merchant's rate: about a minute, not hours
    assert BREAKERS[Tier.PREMIUM].break_duration <= s["recovery_seconds"] <= 300
    assert s["recovery_seconds"] == measured["seconds"]
    after_deferral = s["webhooks"]["by_tier"]["premium"]["delivered_after_deferral"]
    assert after_deferral >= measured["backlog_at_recovery"] - 5


def test_recovery_enterprise_webhooks_stay_fast() -> None:
    latency = recovery()[1].summary["webhook_latency_ms_by_tier"]
    assert latency["enterprise"]["delivered"] > 100
    assert latency["enterprise"]["p99"] < 2_000
    assert latency["premium"]["p99"] > 60_000  # the failing merchant's deferred webhooks waited minutes
    assert set(latency) == {tier.value for tier in Tier}


# --------------------------------------------------------- isolation and degradation
def test_a_single_failing_merchant_opens_only_its_own_breaker() -> None:
    simulation, result, failing = one_merchant_down()
    s = result.summary
    assert set(s["breakers"]) == {failing}
    letters = simulation.pipeline.webhooks.dead_letters.list()
    assert letters and {letter.key for letter in letters} == {failing}
    # every other merchant's webhooks were delivered
    webhook = s["side_effects"]["by_kind"]["webhook"]
    assert webhook["delivered"] == webhook["started"] - len(letters)
    assert s["webhooks"]["by_tier"]["standard"]["deferrals"]["breaker_open"] > 0


def test_payments_keep_succeeding_when_every_webhook_fails() -> None:
    _, result = simulate(
        scenario="normal", seed=3, duration=600, faults={"traffic_multiplier": 10.0, "webhook_error_rate": 1.0}
    )
    s = result.summary
    assert s["payments"]["stuck"] == 0
    assert s["latency_ms"]["p50"] <= 1.10 * s["authorization_ms"]["p50"]
    fx = s["side_effects"]["by_kind"]
    assert fx["webhook"]["delivered"] == 0 and fx["webhook"]["dead_lettered"] == fx["webhook"]["started"] > 0
    for kind in INTERNAL_KINDS:
        assert fx[kind]["dropped"] == 0 and fx[kind]["delivered"] >= 0.9 * fx[kind]["started"]
    assert len(s["breakers"]) > 10


def test_priority_lanes_keep_enterprise_fast_while_standard_endpoints_hang() -> None:
    _, result = simulate(
        scenario="normal", seed=3, duration=900, faults={"traffic_multiplier": 10.0, "tier_modes": {"standard": "hang"}}
    )
    s = result.summary
    latency = s["webhook_latency_ms_by_tier"]
    assert latency["standard"]["delivered"] == 0
    assert latency["enterprise"]["delivered"] > 50 and latency["enterprise"]["p99"] < 2_000
    assert s["webhooks"]["by_tier"]["standard"]["deferrals"]["breaker_open"] > 0
    assert s["side_effects"]["by_kind"]["audit"]["dropped"] == 0


def test_a_full_lane_spills_into_the_backlog_and_never_costs_an_audit_write() -> None:
    burst = 40  # more than the enterprise lane holds at scale 0.1 (3 workers + 30 slots), less than audit

    async def body(world: World, pipeline: HardenedPipeline) -> None:
        merchant_id = world.busiest(Tier.ENTERPRISE).id
        async with anyio.create_task_group() as tg:
            for serial in range(burst):
                tg.start_soon(pay, pipeline, payment_for(world, merchant_id, serial))
        await anyio.sleep(120)

    world, pipeline = drive(body)
    stats = pipeline.bus.stats()
    assert stats["webhook_enterprise"].spilled > 0 and stats["webhook_enterprise"].rejected == 0
    assert pipeline.webhooks.tiers[Tier.ENTERPRISE].deferrals["lane_full"] == stats["webhook_enterprise"].spilled
    authorized = world.recorder.authorized
    fx = world.recorder.side_effects
    assert stats["audit"].rejected == 0 and fx["audit"]["delivered"] == authorized
    assert fx["webhook"]["delivered"] == authorized  # the spilled ones went out later, from the backlog


# ------------------------------------------------------------------ dead letters, replay
def test_dead_letters_keep_their_reason_and_replay_once_the_endpoint_is_back() -> None:
    report: dict[str, Any] = {}

    async def body(world: World, pipeline: HardenedPipeline) -> None:
        merchant_id = world.busiest(Tier.STANDARD).id
        world.faults.apply({"merchants": {merchant_id: {"mode": "down"}}})
        for serial in range(12):
            await pay(pipeline, payment_for(world, merchant_id, serial))
            await anyio.sleep(15)
        await anyio.sleep(MAX_DEFER_S + 60)  # the deferred ones wait too long
        report["before"] = pipeline.webhooks.dead_letters.count_by_reason()
        world.faults.apply({"merchants": {merchant_id: None}})
        await anyio.sleep(BREAKERS[Tier.STANDARD].break_duration)  # the break ends: the replay's first is the probe
        report["replay"] = await pipeline.replay_dead_letters(key=merchant_id)

    world, pipeline = drive(body)
    before = report["before"]
    assert set(before) <= {"retries_exhausted", "retry_budget_empty", "breaker_open_too_long"}
    assert before.get("breaker_open_too_long", 0) > 0 and sum(before.values()) == 12
    replay = report["replay"]
    assert len(replay.replayed) == 12 and not replay.failed and not replay.skipped
    assert len(pipeline.webhooks.dead_letters) == 0
    s = pipeline.summary()
    assert s["dead_letters"]["replayed"] == 12 and s["dead_letters"]["held"] == 0
    assert world.recorder.side_effects["webhook"]["dead_lettered"] == 12  # history does not change


def test_webhooks_still_waiting_at_shutdown_become_dead_letters() -> None:
    _, result = simulate(scenario="blackfriday", seed=5, duration=2100)  # ends at 14:25, endpoints hanging
    s = result.summary
    assert s["dead_letters"]["by_reason"].get("shutdown", 0) > 0
    assert s["side_effects"]["pending"] == 0
    assert any("kept as dead letters" in e["what"] for e in s["events"])
    assert s["payments"]["stuck"] == 0 and s["latency_ms"]["p50"] <= 1.10 * s["authorization_ms"]["p50"]


# ------------------------------------------------------------- the global timeout, risk
def test_internal_side_effects_get_a_second_try_after_the_global_timeout() -> None:
    phase4 = pf.run("normal", phase=4, seed=7, scale=SCALE, memory="off").summary
    phase5 = pf.run("normal", phase=5, seed=7, scale=SCALE, memory="off").summary
    risk4, risk5 = (s["side_effects"]["by_kind"]["risk"] for s in (phase4, phase5))
    assert risk4["failed"] > 0.15 * risk4["started"]  # the blunt 5 s limit, in Phase 4
    assert risk5["failed"] < 0.10 * risk5["started"]  # two tries at 5 s each
    assert phase5["timeouts"]["global_s"] == 5.0
    assert phase5["timeouts"]["second_tries"]["risk"] >= risk5["failed"]
    reasons = phase5["side_effects"]["reasons"].get("risk.failed", {})
    assert set(reasons) <= {"timeout (5 s), twice"}


# ---------------------------------------------------------------- summary and series
def test_summary_and_series_carry_the_phase_5_keys() -> None:
    _, result = recovery()
    s = result.summary
    for key in (
        "breakers",
        "dead_letters",
        "recovery_seconds",
        "webhook_latency_ms_by_tier",
        "webhooks",
        "timeouts",
        "hooks",
        "recovery",
    ):
        assert key in s, key
    for moves in s["breakers"].values():
        assert all(len(m["at"]) == 8 and m["at"].count(":") == 2 for m in moves["transitions"])
    series = result.series
    for column in (
        "breakers_open",
        "deferred_webhooks",
        "webhooks_delivered",
        "webhook_retries",
        "dead_letters",
        "lane_enterprise",
        "lane_premium",
        "lane_standard",
        "queue_audit",
    ):
        assert len(series[column]) == len(series["t"]) and None not in series[column], column
    assert max(series["breakers_open"]) == 1 and max(series["deferred_webhooks"]) > 10
    assert series["deferred_webhooks"][-1] == 0
    assert series["dead_letters"][-1] == s["dead_letters"]["total"]
    json.dumps(s)  # JSON-ready


def test_phase_5_is_deterministic_on_trio() -> None:
    runs = [
        pf.run("recovery", phase=5, seed=4, scale=0.02, duration=1500, backend="trio", memory="off") for _ in range(2)
    ]
    a, b = (json.dumps(strip_nondeterministic({**r.summary, "series": r.series}), sort_keys=True) for r in runs)
    assert a == b
    assert runs[0].summary["side_effects"]["pending"] == 0


def test_webhook_jobs_carry_their_history() -> None:
    _, result = recovery()
    by_tier = result.summary["webhooks"]["by_tier"]
    for tier, counts in by_tier.items():
        assert counts["delivered"] == (
            counts["delivered_first_attempt"] + counts["delivered_after_retry"] + counts["delivered_after_deferral"]
        ), tier
        assert counts["emitted"] == counts["delivered"] + counts["dead_lettered"], tier


# ----------------------------------------- RetryPolicy's fast path (resilience/retry.py, for Phase 5)
def test_a_first_attempt_that_succeeds_never_enters_the_retry_loop(monkeypatch: Any) -> None:
    import random

    import payflow_lab.resilience.retry as retry_module
    from payflow_lab.resilience import RetryBudget, RetryPolicy

    class Forbidden:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("the retry loop's state was built for a call that succeeded at once")

    budget = RetryBudget(ratio=0.5, max_tokens=5, initial_tokens=1)
    policy = RetryPolicy(max_attempts=3, rng=random.Random(1), budget=budget)

    async def fine() -> str:
        return "ok"

    monkeypatch.setattr(retry_module, "RetryCallState", Forbidden)
    assert anyio.run(policy.run, fine) == "ok"
    assert (policy.calls, policy.attempts, policy.retries) == (1, 1, 0)
    assert budget.tokens == 1.5 and budget.deposits == 1


def test_a_first_failure_is_handed_to_tenacity_as_attempt_one() -> None:
    import random

    from payflow_lab.core.errors import RetryExhausted
    from payflow_lab.resilience import RetryBudget, RetryPolicy

    calls: list[float] = []

    async def flaky() -> str:
        calls.append(anyio.current_time())
        if len(calls) < 3:
            raise ConnectionError(f"call {len(calls)}")
        return "third time"

    async def main() -> tuple[str, RetryPolicy, RetryBudget]:
        budget = RetryBudget(ratio=0.1, max_tokens=5)
        policy = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=4, rng=random.Random(3), budget=budget)
        return await policy.run(flaky), policy, budget

    result, policy, budget = run_virtual(main)
    assert result == "third time" and len(calls) == 3
    assert (policy.calls, policy.attempts, policy.retries) == (1, 3, 2)
    assert budget.withdrawals == 2 and budget.deposits == 1
    assert 0 <= calls[1] - calls[0] <= 0.5 and 0 <= calls[2] - calls[1] <= 1.0  # full jitter, doubling

    async def dead() -> None:
        raise ConnectionError("down")

    async def give_up() -> RetryExhausted:
        policy = RetryPolicy(max_attempts=2, rng=random.Random(3))
        try:
            await policy.run(dead)
        except RetryExhausted as exc:
            assert policy.attempts == 2 and policy.exhausted["retries_exhausted"] == 1
            return exc
        raise AssertionError("a dead endpoint must exhaust the retries")

    error = run_virtual(give_up)
    assert error.attempts == 2 and isinstance(error.last_error, ConnectionError)


@pytest.mark.parametrize(
    ("script", "outcome", "second_tries"),
    [
        (["ok"], None, 0),
        (["hang", "ok"], None, 1),
        (["pool", "ok"], None, 1),
        (["hang", "hang"], "timeout (5 s), twice", 1),
        (["pool", "pool"], "no database connection within 1 s, twice", 1),
        (["hang", "pool"], "no database connection within 1 s, twice", 1),
        (["pool", "hang"], "timeout (5 s), twice", 1),
    ],
)
def test_an_internal_side_effect_gets_one_second_try_after_either_kind_of_timeout(
    script: list[str], outcome: str | None, second_tries: int
) -> None:
    """The handler's own clock and the pool's checkout both count as timing out; the message names the last one."""
    from payflow_lab.core.errors import GaveUp, PoolTimeout
    from payflow_lab.core.vtime import clock_of_running_loop
    from payflow_lab.phases.hardened import CALL_TIMEOUT_S, SECOND_TRY_JITTER_S
    from payflow_lab.phases.hook_bus import SIDE_EFFECT_CHECKOUT_TIMEOUT_S as CHECKOUT_S

    calls: list[tuple[float, dict[str, Any]]] = []

    async def main() -> tuple[str | None, float]:
        clock = clock_of_running_loop()
        world = World(seed=5, scale=0.02, clock=clock, recorder=Recorder(clock))
        steps = iter(script)

        async def scripted(payment: Payment, **options: Any) -> None:
            calls.append((clock(), options))
            step = next(steps)
            if step == "hang":
                await anyio.sleep_forever()
            elif step == "pool":
                await anyio.sleep(CHECKOUT_S)
                raise PoolTimeout(f"no database connection free within {CHECKOUT_S:g} s")

        world.service = lambda kind: scripted  # type: ignore[method-assign]
        pipeline = HardenedPipeline(world)
        handler = pipeline._handler("audit")
        try:
            await handler(world.new_payment())
        except GaveUp as exc:
            return str(exc), clock()
        finally:
            assert sum(pipeline.second_tries.values()) == second_tries
        return None, clock()

    message, _ = run_virtual(main)
    assert message == outcome
    assert len(calls) == len(script)
    assert all(options == {"checkout_timeout": CHECKOUT_S} for _, options in calls)  # audit is a database write
    if len(calls) == 2:
        first_took = CALL_TIMEOUT_S if script[0] == "hang" else CHECKOUT_S
        gap = calls[1][0] - calls[0][0] - first_took
        assert 0.0 <= gap <= SECOND_TRY_JITTER_S  # the second try waits a jittered moment, not in lockstep
