"""Per-subscriber metrics: counters, queue depth, latency histogram, and the accounting identity."""

from __future__ import annotations

import json
import math

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payflow_lab.core.errors import Rejected
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import HookBus, LatencyHistogram


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------------- the histogram
def test_percentiles_are_within_four_percent_of_the_exact_value() -> None:
    values = [0.001 * 1.013**k for k in range(700)]  # 1 ms to about 9 s, log-spread
    h = LatencyHistogram()
    for v in values:
        h.observe(v)
    ordered = sorted(values)
    for q in (1, 10, 50, 90, 99, 99.9):
        exact = ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]
        assert h.percentile(q) == pytest.approx(exact, rel=0.04), q
    assert h.percentile(100) == max(values) and h.percentile(0) == pytest.approx(min(values), rel=0.04)
    assert h.count == 700 and h.mean == pytest.approx(sum(values) / 700)


def test_histogram_extremes_and_cumulative_buckets() -> None:
    h = LatencyHistogram()
    assert math.isnan(h.percentile(50)) and h.summary()["p50_ms"] is None
    for v in (0.0, 0.00001, 0.004, 0.005, 0.2, 7.0, 100_000.0):
        h.observe(v)
    buckets = h.cumulative()
    assert buckets["le_0.005"] == 4  # Prometheus "le": 0.005 itself is in the 0.005 bucket
    assert buckets["le_0.25"] == 5 and buckets["le_10"] == 6 and buckets["le_60"] == 6
    assert buckets["le_+Inf"] == 7
    assert list(buckets.values()) == sorted(buckets.values())
    assert h.percentile(100) == 100_000.0 and h.percentile(1) == 0.0
    with pytest.raises(ValueError, match="seconds must be a finite, non-negative"):
        h.observe(-1.0)
    with pytest.raises(ValueError, match="q must be between 0 and 100"):
        h.percentile(101)


# ------------------------------------------------------------------- subscriber statistics
def test_stats_report_queue_depth_running_and_latency_per_subscriber(backend: str) -> None:
    async def main() -> None:
        async def slow(p: object) -> None:
            await anyio.sleep(2)

        async def quick(p: object) -> None:
            await anyio.sleep(0.05)

        bus = HookBus(timeout=10)
        slow_handle = bus.hook("e", slow, workers=2, queue_size=10)
        bus.hook("e", quick, workers=1)
        async with bus:
            for i in range(6):
                bus.emit("e", i)
            await anyio.sleep(1)
            stats = bus.stats()
            assert (stats["slow"].running, stats["slow"].queued) == (2, 4)
            assert slow_handle.queued == 4 and slow_handle.running == 2
            assert (stats["quick"].running, stats["quick"].queued, stats["quick"].completed) == (0, 0, 6)
            await anyio.sleep(10)
            stats = bus.stats()
        assert stats["slow"].latency["p50_ms"] == pytest.approx(2000, rel=0.04)
        assert stats["quick"].latency["p99_ms"] == pytest.approx(50, rel=0.04)
        assert stats["slow"].latency_buckets["le_2.5"] == 6 and stats["slow"].latency_buckets["le_1"] == 0
        summary = bus.summary()
        assert json.loads(json.dumps(summary)) == summary  # plain JSON, ready for a run summary
        assert summary["subscribers"]["slow"]["completed"] == 6
        assert "latency_buckets" not in summary["subscribers"]["slow"]  # in stats(), for exporters

    run_virtual(main, backend=backend)


# ------------------------------------------------------------------- property: accounting
behaviours = st.sampled_from(["ok", "slow", "fail", "hang"])
subscriber_specs = st.lists(
    st.tuples(
        st.integers(1, 5),
        st.integers(1, 3),
        st.sampled_from([None, 0.5, 2.0]),
        st.lists(behaviours, min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 5)),
        st.tuples(st.just("sleep"), st.sampled_from([0.05, 0.3, 1.0, 3.0])),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=subscriber_specs,
    plan=steps,
    close_after=st.sampled_from([0.0, 0.4, 1.5, 10.0]),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_admitted_always_equals_settled_plus_queued_plus_running(
    specs: list, plan: list, close_after: float, backend: str
) -> None:
    """admitted = completed + failed + timed_out + cancelled + queued + running, at every step and after close."""

    async def main() -> None:
        outcomes: dict[str, int] = {}

        def count(outcome) -> None:  # type: ignore[no-untyped-def]
            outcomes[outcome.subscriber] = outcomes.get(outcome.subscriber, 0) + 1

        bus = HookBus(on_outcome=count)
        for k, (queue_size, workers, timeout, script) in enumerate(specs):

            async def handler(p: int, script: list = script) -> None:
                kind = script[p % len(script)]
                if kind == "slow":
                    await anyio.sleep(0.7)
                elif kind == "fail":
                    await anyio.sleep(0.1)
                    raise RuntimeError("boom")
                elif kind == "hang":
                    await anyio.sleep_forever()

            bus.hook("e", handler, name=f"s{k}", queue_size=queue_size, workers=workers, timeout=timeout)

        def check() -> None:
            for stats in bus.stats().values():
                assert stats.balanced, stats
                assert stats.admitted == stats.settled + stats.queued + stats.running

        serial = 0
        async with bus:
            for op, arg in plan:
                if op == "sleep":
                    await anyio.sleep(arg)
                else:
                    for _ in range(arg):
                        try:
                            bus.emit("e", serial)
                        except Rejected:
                            pass
                        serial += 1
                check()
            report = await bus.aclose(close_after, cancel_grace=0.1)
            check()
        for name, stats in bus.stats().items():
            assert stats.queued == stats.running == 0
            assert stats.admitted == stats.completed + stats.failed + stats.timed_out + stats.cancelled
            assert stats.admitted + stats.rejected == serial
            assert outcomes.get(name, 0) == stats.admitted
            shut = report.subscribers[name]
            assert shut.abandoned == 0
            assert shut.never_started <= stats.never_started and shut.cancelled + shut.never_started <= stats.cancelled

    run_virtual(main, backend=backend)
