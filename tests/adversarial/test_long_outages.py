"""Issue 18, point 6: a long outage must not grow the process without bound.

On main before the fix, every breaker kept every transition it ever made and
the dead-letter store kept every letter in memory: Phase 5 on Black Friday grew
about 12 MB per simulated hour. Now a breaker keeps its last few transitions
and counts all of them, and the store moves old letters to a spill file.
Nothing is lost on the way: the counts, the metrics and every letter stay.
The memory target itself (RSS at hour 4 against hour 1) is a benchmark row,
``memory.phase5_blackfriday_4h.*`` in ``payflow-lab bench --only memory``.
"""

from __future__ import annotations

import pickle
from unittest import mock

import pytest
from prometheus_client import CollectorRegistry

import payflow_lab as pf
from payflow_lab.core.vtime import run_virtual
from payflow_lab.phases import webhook_lanes as delivery
from payflow_lab.resilience import BreakerConfig, BreakerState, CircuitBreaker, InMemoryDeadLetters, KeyedCircuitBreaker
from payflow_lab.resilience.breaker import HISTORY
from payflow_lab.resilience.collector import ResilienceCollector

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def flap(breaker: CircuitBreaker, clock: Clock, cycles: int) -> None:
    """Open the breaker, then let a probe fail ``cycles`` times (two transitions each) and finally pass."""
    permit = breaker.allow()
    assert permit is not None
    permit.record_failure()  # consecutive_failures=1: open
    for _ in range(cycles):
        clock.now += breaker.config.break_duration
        probe = breaker.allow()  # open -> half_open
        assert probe is not None
        probe.record_failure()  # half_open -> open
    clock.now += breaker.config.break_duration
    probe = breaker.allow()
    assert probe is not None
    probe.record_success()  # half_open -> closed


def test_a_flapping_breaker_keeps_its_last_transitions_and_counts_them_all() -> None:
    clock = Clock()
    seen = []
    breaker = CircuitBreaker(
        BreakerConfig(consecutive_failures=1, break_duration=30.0),
        name="mch_00006",
        clock=clock,
        on_transition=seen.append,
    )
    flap(breaker, clock, 5_000)
    total = 1 + 2 * 5_000 + 2
    assert len(seen) == total  # listeners still see every transition
    assert breaker.transitions_total == total
    assert len(breaker.transitions) == HISTORY
    assert list(breaker.transitions) == seen[-HISTORY:]
    assert breaker.times_opened == 1 + 5_000
    assert breaker.transition_counts == {
        (CLOSED, OPEN): 1,
        (OPEN, HALF_OPEN): 5_001,
        (HALF_OPEN, OPEN): 5_000,
        (HALF_OPEN, CLOSED): 1,
    }


def test_the_transitions_metric_counts_what_the_breaker_no_longer_keeps() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        BreakerConfig(consecutive_failures=1, break_duration=30.0), name="mch_00006", clock=clock, history=3
    )
    flap(breaker, clock, 100)
    registry = CollectorRegistry()
    registry.register(ResilienceCollector(breakers={"mch_00006": breaker}))
    counted = {
        (s.labels["from_state"], s.labels["to_state"]): s.value
        for metric in registry.collect()
        if metric.name == "payflow_circuit_breaker_transitions"
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert counted == {
        ("closed", "open"): 1,
        ("open", "half_open"): 101,
        ("half_open", "open"): 100,
        ("half_open", "closed"): 1,
    }
    assert len(breaker.transitions) == 3


def test_a_keyed_breaker_bounds_its_shared_history_too() -> None:
    clock = Clock()
    breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(
        BreakerConfig(consecutive_failures=1, break_duration=30.0), clock=clock, keyed_history=50
    )
    for merchant in ("mch_00001", "mch_00002"):
        flap(breakers[merchant], clock, 200)
    assert breakers.transitions_total == 2 * (1 + 2 * 200 + 2)
    assert len(breakers.transitions) == 50
    assert {t.name for t in breakers.transitions} == {"mch_00002"}


@pytest.mark.parametrize("history", [0, -1, 2.5, True])
def test_a_history_must_be_a_positive_whole_number(history: object) -> None:
    with pytest.raises(pf.ValidationError, match="history"):
        CircuitBreaker(history=history)  # type: ignore[arg-type]


def test_dead_letters_past_the_bound_spill_to_disk_and_none_is_lost() -> None:
    clock = Clock()
    store = InMemoryDeadLetters(clock=clock, keep_in_memory=10)
    for i in range(100):
        clock.now = float(i)
        store.add(
            f"mch_{i % 3:05d}",
            {"payment": f"pay_{i:04d}", "amount": i},
            "retries_exhausted",
            attempts=3,
            error="HTTP 503",
        )
    assert len(store) == 100 and store.spilled == 90
    letters = store.list()
    assert [letter.payload["payment"] for letter in letters] == [f"pay_{i:04d}" for i in range(100)]
    assert [letter.at for letter in letters] == [float(i) for i in range(100)]
    assert store.count_by_key() == {"mch_00000": 34, "mch_00001": 33, "mch_00002": 33}
    assert store.list(key="mch_00001", limit=2)[1].payload["payment"] == "pay_0004"
    assert [x.id for x in store.list(older_than=95)] == [f"dl_{i + 1:06d}" for i in range(5)]

    spilled = store.get("dl_000005")
    assert spilled is not None and spilled.payload == {"payment": "pay_0004", "amount": 4}
    store.update(
        spilled.__class__(
            **{**{f: getattr(spilled, f) for f in spilled.__slots__}, "attempts": 4, "reason": "shutdown"}
        )
    )
    assert store.get("dl_000005").attempts == 4  # type: ignore[union-attr]
    assert store.count_by_reason() == {"retries_exhausted": 99, "shutdown": 1}
    assert store.remove("dl_000005") is not None and store.get("dl_000005") is None
    assert len(store) == 99 and store.spilled == 89 and store.removed == 1
    store.close()
    assert len(store) == 10 and store.count_by_reason() == {"retries_exhausted": 10}


def test_a_payload_that_cannot_be_spilled_is_refused_and_the_store_stays_whole() -> None:
    store = InMemoryDeadLetters(clock=Clock(), keep_in_memory=1)
    store.add("mch_00001", lambda: None, "shutdown", attempts=0)  # in memory: fine
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        store.add("mch_00001", "second", "shutdown", attempts=0)  # would spill the lambda: refused
    assert len(store) == 1 and store.count_by_reason() == {"shutdown": 1} and store.spilled == 0


def test_spilled_letters_replay_like_the_others() -> None:
    clock = Clock()
    store = InMemoryDeadLetters(clock=clock, keep_in_memory=5)
    for i in range(20):
        store.add("mch_00001", i, "breaker_open_too_long", attempts=1)
    delivered: list[int] = []

    async def deliver(letter) -> None:  # type: ignore[no-untyped-def]
        if letter.payload % 4 == 0:
            raise ConnectionError("still down")
        delivered.append(letter.payload)

    report = run_virtual(lambda: store.replay(deliver))
    assert delivered == [i for i in range(20) if i % 4]
    assert len(report.failed) == 5 and len(store) == 5
    assert [letter.payload for letter in store.list()] == [0, 4, 8, 12, 16]
    assert all(letter.attempts == 2 and letter.replays == 1 for letter in store.list())


def test_phase5_spills_its_dead_letters_and_replays_them_through_the_pipeline() -> None:
    """A recovery run with room for only 5 letters in memory: the rest spill, and the replay still delivers."""

    class ReplayAtStop(pf.get_phase(5)):  # type: ignore[misc]
        async def stop(self) -> None:
            self.report = await self.replay_dead_letters(stop_after_failures=None)
            await super().stop()

    with mock.patch.object(delivery, "DEAD_LETTERS_IN_MEMORY", 5):
        sim = pf.Simulation(pf.RunConfig(scenario="recovery", phase=5, seed=7, memory="off"), pipeline_cls=ReplayAtStop)
        summary = run_virtual(sim.run)
    webhooks = sim.pipeline.webhooks  # type: ignore[union-attr]
    report = sim.pipeline.report  # type: ignore[union-attr]
    assert webhooks.dead_letters.added > 10
    assert len(report.replayed) + len(report.failed) == webhooks.dead_letters.added
    assert len(report.replayed) > 5  # spilled letters (copies read back from disk) were delivered
    assert summary["dead_letters"]["held"] == len(webhooks.dead_letters) == len(report.failed)


def test_an_empty_bound_is_refused_by_name() -> None:
    for bad in (0, -5, 1.5, "10"):
        with pytest.raises(pf.ValidationError, match="keep_in_memory"):
            InMemoryDeadLetters(keep_in_memory=bad)  # type: ignore[arg-type]


def test_a_long_run_keeps_its_measurements_whole_but_mostly_on_disk() -> None:
    """Three hours of Black Friday: every per-second row and latency is there, few of them in memory."""
    sim = pf.Simulation(
        pf.RunConfig(scenario="blackfriday", phase=5, seed=7, scale=0.02, duration=3 * 3600, memory="off")
    )
    summary = run_virtual(sim.run)
    recorder = sim.recorder
    assert recorder is not None
    rows = len(recorder.series["t"])
    assert rows >= 3 * 3600
    for name, column in recorder.series.items():
        assert len(column) == rows, name
        assert column.in_memory < column.chunk, name
    assert len(recorder.latencies) == summary["payments"]["authorized"]
    assert recorder.latencies.in_memory < recorder.latencies.chunk
    # what the summary reports is computed from every value, disk and memory alike
    assert summary["latency_ms"]["max"] == pytest.approx(max(recorder.latencies) * 1000, abs=0.001)
