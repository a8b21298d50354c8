"""The recorder's bookkeeping: outcomes always add up, series stay rectangular, percentiles are honest."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payflow_lab.core.domain import Payment
from payflow_lab.core.recorder import MemoryProbe, Recorder, hhmmss, percentile


class Clock:
    def __init__(self) -> None:
        self.now = 50_400.0

    def __call__(self) -> float:
        return self.now


def payment(n: int, cents: int = 1000) -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id="mch_00001", amount_cents=cents, currency="USD", created_at=0.0)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["complete", "decline", "die_after_auth", "hang", "hang_after_auth"]), max_size=60))
def test_outcomes_always_add_up(plan):
    clock = Clock()
    rec = Recorder(clock)
    for n, fate in enumerate(plan):
        p = payment(n, cents=100 * (n + 1))
        rec.payment_started(p)
        clock.now += 0.5
        if fate in ("complete", "die_after_auth", "hang_after_auth"):
            rec.payment_authorized(p, 0.15)
        if fate == "complete":
            rec.payment_completed(p)
        elif fate == "decline":
            rec.payment_errored(p, "declined")
        elif fate == "die_after_auth":
            rec.payment_errored(p, "boom")
    rec.close_in_flight()
    s = rec.summary()["payments"]
    assert s["attempted"] == len(plan)
    assert s["attempted"] == s["authorized"] + s["failed"] + s["stuck"]
    assert s["failed"] == plan.count("decline")
    assert s["stuck"] == plan.count("die_after_auth") + plan.count("hang") + plan.count("hang_after_auth")
    assert s["stuck_authorized"] == plan.count("die_after_auth") + plan.count("hang_after_auth")
    expected_dollars = sum((n + 1) for n, fate in enumerate(plan) if fate not in ("complete", "decline"))
    assert s["stuck_dollars"] == pytest.approx(expected_dollars)
    assert rec.in_flight_payments == 0


def test_a_payment_is_never_counted_twice():
    rec = Recorder(Clock())
    p = payment(1)
    rec.payment_started(p)
    rec.payment_completed(p)
    rec.payment_completed(p)
    rec.payment_errored(p, "late error")
    assert (rec.authorized, rec.failed, rec.stuck) == (1, 0, 0)


def test_latency_is_measured_on_the_clock():
    clock = Clock()
    rec = Recorder(clock)
    p = payment(1)
    rec.payment_started(p)
    clock.now += 13.5
    rec.payment_completed(p)
    assert rec.summary()["latency_ms"]["mean"] == pytest.approx(13_500)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200), st.floats(min_value=0, max_value=100))
def test_percentile_is_nearest_rank(values, q):
    data = sorted(values)
    p = percentile(data, q)
    assert p in data
    rank = data.index(p)
    assert sum(1 for v in data if v <= p) >= q / 100 * len(data) - 1e-9
    assert rank == 0 or data[rank - 1] < p or data.count(p) > 1 or rank <= math.ceil(q / 100 * len(data))


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_series_columns_always_have_the_same_length_even_with_late_gauges():
    clock = Clock()
    rec = Recorder(clock)
    rec.sample(0, 0)
    rec.add_gauge("queue_webhook", lambda: 7)
    clock.now += 1.0
    rec.sample(1, 0)
    lengths = {name: len(column) for name, column in rec.series.items()}
    assert set(lengths.values()) == {2}
    assert rec.series["queue_webhook"] == [None, 7]
    with pytest.raises(ValueError, match="already exists"):
        rec.add_gauge("p50_ms", lambda: 0)


def test_side_effect_outcomes_and_pending():
    rec = Recorder(Clock())
    for _ in range(5):
        rec.side_effect_started("webhook")
    rec.side_effect_finished("webhook", "delivered", latency=0.3)
    rec.side_effect_finished("webhook", "failed", reason="timeout")
    rec.side_effect_finished("webhook", "dropped", reason="lost at shutdown")
    totals = rec.side_effect_totals()
    assert totals == {"delivered": 1, "failed": 1, "dropped": 1, "dead_lettered": 0, "pending": 2}
    assert rec.summary()["side_effects"]["reasons"]["webhook.dropped"] == {"lost at shutdown": 1}
    with pytest.raises(ValueError, match="outcome"):
        rec.side_effect_finished("webhook", "vanished")


def test_events_come_out_sorted_and_marks_happen_once():
    clock = Clock()
    rec = Recorder(clock)
    rec.event("second", at=clock.now + 10)
    rec.event("first")
    assert rec.mark_once("k", "only once")
    assert not rec.mark_once("k", "only once")
    assert [e["what"] for e in rec.sorted_events()] == ["first", "only once", "second"]
    assert rec.sorted_events()[0]["at"] == "14:00:00"


def test_hhmmss_wraps_at_midnight():
    assert hhmmss(0) == "00:00:00"
    assert hhmmss(86_399.9) == "23:59:59"
    assert hhmmss(86_400 + 61) == "00:01:01"


def test_memory_probe_measures_allocations():
    with MemoryProbe("tracemalloc") as probe:
        before = probe.sample()
        hoard = [bytearray(1024) for _ in range(2000)]
        after = probe.sample()
        del hoard
    assert after - before > 2_000_000
    with MemoryProbe("rss") as probe:
        assert probe.sample() > 10_000_000
    with MemoryProbe("off") as probe:
        assert probe.sample() == 0
    with pytest.raises(ValueError, match="memory"):
        MemoryProbe("guess")


def test_a_second_sampled_twice_is_one_row_with_both_samples_counts():
    clock = Clock()
    rec = Recorder(clock)
    rec.sample(0, 0)
    clock.now += 1.0
    rec.payment_started(payment(1))
    rec.sample(3, 0)  # the ticker's row for this second
    rec.payment_started(payment(2))
    clock.now += 0.25
    rec.payment_completed(payment(1))
    rec.sample(0, 0)  # the run ends a quarter of a second later: the same second
    assert rec.series["t"] == [0.0, 1.0]  # one row per second, labelled with its second
    assert rec.series["arrivals"] == [0, 2]
    assert rec.series["completed"] == [0, 1]
    assert rec.series["db_in_use"] == [0, 0] and rec.series["in_flight_payments"] == [0, 1]
