"""The Prometheus collector exports what the resilience parts counted, under conventional names."""

from __future__ import annotations

import random

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from payflow_lab.core.errors import RetryExhausted, ValidationError
from payflow_lab.core.vtime import run_virtual
from payflow_lab.resilience import (
    BreakerConfig,
    InMemoryDeadLetters,
    KeyedCircuitBreaker,
    KeyedRateLimiter,
    RateLimit,
    RetryBudget,
    RetryPolicy,
)
from payflow_lab.resilience.collector import ResilienceCollector, resilience_registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def samples(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_scraped_metrics_match_what_the_parts_did() -> None:
    clock = FakeClock()
    breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(
        BreakerConfig(failure_ratio=None, consecutive_failures=2, break_duration=5.0), clock=clock
    )
    for _ in range(3):
        permit = breakers["mch_00002"].allow()
        if permit is not None:
            permit.record_failure()
    permit = breakers["mch_00001"].allow()
    assert permit is not None
    permit.record_success()
    limiters: KeyedRateLimiter[str] = KeyedRateLimiter(RateLimit(1.0, 2), clock=clock)
    granted = [limiters.try_acquire("mch_00001") for _ in range(3)]
    assert granted == [True, True, False]
    letters = InMemoryDeadLetters(clock=clock)
    letters.add("mch_00002", None, "breaker_open_too_long", attempts=1)
    letters.add("mch_00002", None, "retries_exhausted", attempts=4)
    letters.remove("dl_000001")
    budget = RetryBudget(max_tokens=2)
    policy = RetryPolicy(max_attempts=3, rng=random.Random(0), budget=budget)

    async def down() -> None:
        raise ConnectionError

    async def deliver_twice() -> None:
        for _ in range(2):
            with pytest.raises(RetryExhausted):
                await policy.run(down)

    run_virtual(deliver_twice)
    registry, _ = resilience_registry(
        breakers=breakers,
        limiters=limiters,
        retries={"webhook": policy},
        budgets={"webhook": budget},
        dead_letters=letters,
    )
    got = samples(registry)
    assert got[("payflow_circuit_breaker_state", (("breaker", "mch_00002"), ("state", "open")))] == 1.0
    assert got[("payflow_circuit_breaker_state", (("breaker", "mch_00002"), ("state", "closed")))] == 0.0
    assert got[("payflow_circuit_breaker_state", (("breaker", "mch_00001"), ("state", "closed")))] == 1.0
    assert (
        got[
            (
                "payflow_circuit_breaker_transitions_total",
                (("breaker", "mch_00002"), ("from_state", "closed"), ("to_state", "open")),
            )
        ]
        == 1.0
    )
    assert got[("payflow_circuit_breaker_calls_total", (("breaker", "mch_00002"), ("decision", "rejected")))] == 1.0
    assert got[("payflow_rate_limiter_requests_total", (("key", "mch_00001"), ("result", "immediate")))] == 2.0
    assert got[("payflow_rate_limiter_requests_total", (("key", "mch_00001"), ("result", "rejected")))] == 1.0
    assert got[("payflow_retry_attempts_total", (("policy", "webhook"),))] == 2 + 2  # 2 calls, 2 retries paid for
    assert got[("payflow_retries_total", (("policy", "webhook"),))] == 2.0
    assert got[("payflow_retry_giveups_total", (("policy", "webhook"), ("reason", "retries_exhausted")))] == 1.0
    assert got[("payflow_retry_giveups_total", (("policy", "webhook"), ("reason", "retry_budget_empty")))] == 1.0
    assert got[("payflow_retry_budget_refusals_total", (("budget", "webhook"),))] == 1.0
    assert got[("payflow_dead_letters", (("reason", "retries_exhausted"),))] == 1.0
    assert ("payflow_dead_letters", (("reason", "breaker_open_too_long"),)) not in got
    assert got[("payflow_dead_letters_added_total", ())] == 2.0
    assert got[("payflow_dead_letters_removed_total", ())] == 1.0


def test_scrapes_follow_the_parts_and_each_run_has_its_own_registry() -> None:
    clock = FakeClock()
    limiters: KeyedRateLimiter[str] = KeyedRateLimiter(RateLimit(1.0, 1), clock=clock)
    first, _ = resilience_registry(limiters=limiters)
    second, _ = resilience_registry(limiters=limiters)  # a rerun cell: no duplicate-metric error
    assert samples(first) == samples(second) and not any(k[0].startswith("payflow_rate") for k in samples(first))
    limiters.try_acquire("mch_00009")
    assert (
        samples(first)[("payflow_rate_limiter_requests_total", (("key", "mch_00009"), ("result", "immediate")))] == 1.0
    )


def test_bad_parts_are_refused_at_construction() -> None:
    with pytest.raises(ValidationError) as caught:
        ResilienceCollector(breakers=[1, 2])  # type: ignore[arg-type]
    assert caught.value.field == "breakers"
    with pytest.raises(ValidationError) as caught:
        ResilienceCollector(dead_letters=object())  # type: ignore[arg-type]
    assert caught.value.field == "dead_letters"
    with pytest.raises(ValidationError) as caught:
        ResilienceCollector(namespace="pay-flow")
    assert caught.value.field == "namespace"
