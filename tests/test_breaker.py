"""The circuit breaker against its stated semantics: windows, thresholds, half-open probes, pure reads."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payflow_lab.core.errors import BreakerOpen, ValidationError
from payflow_lab.core.vtime import BACKENDS, run_virtual
from payflow_lab.resilience import BreakerConfig, BreakerState, CircuitBreaker, KeyedCircuitBreaker, Transition

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outcome(breaker: CircuitBreaker, failed: bool) -> None:
    permit = breaker.allow()
    assert permit is not None, f"breaker {breaker.name} rejected a call while {breaker.state}"
    if failed:
        permit.record_failure()
    else:
        permit.record_success()


def tripped(clock: FakeClock | None = None, **config: object) -> tuple[CircuitBreaker, FakeClock]:
    """A breaker opened by consecutive failures at t=0 (break 10 s unless overridden)."""
    clock = clock or FakeClock()
    settings_ = {"failure_ratio": None, "consecutive_failures": 1, "break_duration": 10.0, **config}
    breaker = CircuitBreaker(BreakerConfig(**settings_), name="mch_00001", clock=clock)  # type: ignore[arg-type]
    outcome(breaker, failed=True)
    assert breaker.state is OPEN
    return breaker, clock


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"failure_ratio": 0.0}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"failure_ratio": -0.1}, "failure_ratio"),
        ({"failure_ratio": float("nan")}, "failure_ratio"),
        ({"minimum_throughput": 0}, "minimum_throughput"),
        ({"minimum_throughput": -3}, "minimum_throughput"),
        ({"minimum_throughput": 2.5}, "minimum_throughput"),
        ({"window_type": "count", "window_size": 5, "minimum_throughput": 10}, "window_size"),
        ({"window_type": "count", "window_size": 7.5}, "window_size"),
        ({"window_type": "time", "window_size": 0}, "window_size"),
        ({"window_type": "time", "window_size": float("inf")}, "window_size"),
        ({"window_type": "sliding"}, "window_type"),
        ({"break_duration": 0}, "break_duration"),
        ({"break_duration": -1.0}, "break_duration"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"failure_ratio": None, "consecutive_failures": None}, "failure_ratio"),
    ],
)
def test_bad_configuration_is_refused_naming_the_setting(config: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BreakerConfig(**config)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"config": "fast"}, "config"),
        ({"name": ""}, "name"),
        ({"clock": 3.0}, "clock"),
        ({"failure_on": "Exception"}, "failure_on"),
        ({"on_transition": 1}, "on_transition"),
    ],
)
def test_bad_breaker_arguments_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_defaults_are_the_documented_ones() -> None:
    config = BreakerConfig()
    assert (
        config.failure_ratio,
        config.minimum_throughput,
        config.window_type,
        config.window_size,
        config.consecutive_failures,
        config.break_duration,
        config.half_open_probes,
    ) == (0.5, 10, "time", 30.0, None, 10.0, 1)


# ------------------------------------------------------------------ window arithmetic
def test_count_window_opens_at_the_ratio_once_minimum_throughput_is_reached() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_ratio=0.5, minimum_throughput=4, window_type="count", window_size=4), clock=clock
    )
    for failed in (True, True, True):  # 3 of 3 failed, but fewer than 4 calls: no verdict yet
        outcome(breaker, failed)
    assert breaker.state is CLOSED and breaker.window().calls == 3
    outcome(breaker, False)  # 3 of 4 failed, but the last call succeeded: successes never open
    assert breaker.state is CLOSED
    outcome(breaker, True)  # window now F F S F (the first F slid out): 3/4 >= 0.5
    assert breaker.state is OPEN
    assert "3 of 4 calls failed" in breaker.transitions[-1].reason


def test_count_window_slides_old_failures_out() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(failure_ratio=0.5, minimum_throughput=4, window_type="count", window_size=4), clock=FakeClock()
    )
    for failed in (True, False, False, False, False, True):
        outcome(breaker, failed)
    stats = breaker.window()
    assert (stats.calls, stats.failures) == (4, 1)  # the first failure left the window
    assert breaker.state is CLOSED


def test_ratio_exactly_at_the_threshold_opens() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(failure_ratio=0.4, minimum_throughput=5, window_type="count", window_size=5), clock=FakeClock()
    )
    for failed in (False, False, False, True, True):  # 2/5 = 0.4
        outcome(breaker, failed)
    assert breaker.state is OPEN


def test_time_window_forgets_outcomes_exactly_window_seconds_later() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_ratio=0.5, minimum_throughput=4, window_type="time", window_size=10.0), clock=clock
    )
    for at in (0.0, 1.0, 2.0):
        clock.now = at
        outcome(breaker, True)
    clock.now = 9.999
    assert breaker.window().calls == 3
    clock.now = 10.0  # the failure recorded at t=0 is exactly 10 s old: gone
    assert (breaker.window().calls, breaker.window().failures) == (2, 2)
    outcome(breaker, True)  # 3 calls in the window: below minimum_throughput
    assert breaker.state is CLOSED
    clock.now = 10.5
    outcome(breaker, True)  # 4 calls (t=1, 2, 10, 10.5), all failed
    assert breaker.state is OPEN


def test_reading_the_time_window_does_not_evict() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_ratio=0.5, minimum_throughput=2, window_type="time", window_size=5.0), clock=clock
    )
    outcome(breaker, True)
    clock.now = 100.0
    assert breaker.window().calls == 0
    clock.now = 3.0  # a clock never goes back, but if reading had evicted, the entry would be gone now
    assert breaker.window().calls == 1


def test_time_window_below_minimum_throughput_never_opens_however_bad() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_ratio=0.1, minimum_throughput=10, window_size=30.0), clock=clock)
    for i in range(50):  # a failure every 4 s: never 10 in a 30 s window
        clock.now = 4.0 * i
        outcome(breaker, True)
    assert breaker.state is CLOSED and breaker.window().calls == 8


def test_consecutive_failures_mode() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_ratio=None, consecutive_failures=3), clock=FakeClock())
    for failed in (True, True, False, True, True):
        outcome(breaker, failed)
    assert breaker.state is CLOSED
    outcome(breaker, True)
    assert breaker.state is OPEN
    assert breaker.transitions[-1].reason == "3 consecutive failures"


# ------------------------------------------------------------------ open, half-open, pure reads
def test_open_rejects_with_retry_after_until_the_break_ends() -> None:
    breaker, clock = tripped(break_duration=10.0)
    clock.now = 4.0
    assert breaker.allow() is None
    with pytest.raises(BreakerOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after == pytest.approx(6.0)
    assert caught.value.state is OPEN
    assert breaker.rejected == 2


def test_reading_state_never_changes_it() -> None:
    seen: list[Transition] = []
    breaker, clock = tripped(break_duration=10.0)
    breaker.add_listener(seen.append)
    clock.now = 25.0
    for _ in range(100):
        assert breaker.state is HALF_OPEN  # what a call would meet now
        assert breaker.retry_after == 0.0
        breaker.window()
    assert breaker.recorded_state is OPEN  # but nothing moved
    assert [t.to_state for t in breaker.transitions] == [OPEN]
    assert seen == []
    clock.now = 31.0
    permit = breaker.allow()  # the transition happens on the call attempt
    assert permit is not None and permit.probe
    assert breaker.transitions[-1].to_state is HALF_OPEN
    assert breaker.transitions[-1].at == 31.0
    assert seen == [breaker.transitions[-1]]


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_admits_exactly_the_configured_probes(probes: int) -> None:
    breaker, clock = tripped(half_open_probes=probes)
    clock.now = 10.0
    permits = [breaker.allow() for _ in range(probes + 5)]
    admitted = [p for p in permits if p is not None]
    assert len(admitted) == probes
    with pytest.raises(BreakerOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after is None  # verdict pending: no promise
    for permit in admitted[:-1]:
        permit.record_success()
    assert breaker.state is HALF_OPEN and breaker.allow() is None  # successes hold their slots
    admitted[-1].record_success()
    assert breaker.state is CLOSED
    assert breaker.transitions[-1].reason == f"{probes} probe(s) succeeded"


def test_a_failed_probe_reopens_for_another_break() -> None:
    breaker, clock = tripped(half_open_probes=2, break_duration=10.0)
    clock.now = 12.0
    first, second = breaker.allow(), breaker.allow()
    assert first is not None and second is not None
    first.record_success()
    clock.now = 13.0
    second.record_failure()
    assert breaker.state is OPEN
    assert breaker.retry_after == pytest.approx(10.0)
    clock.now = 22.9
    assert breaker.allow() is None
    clock.now = 23.0
    assert breaker.allow() is not None


def test_a_released_probe_frees_its_slot_and_counts_nothing() -> None:
    breaker, clock = tripped()
    clock.now = 10.0
    probe = breaker.allow()
    assert probe is not None and breaker.allow() is None
    probe.release()
    assert breaker.state is HALF_OPEN
    again = breaker.allow()
    assert again is not None
    again.record_success()
    assert breaker.state is CLOSED


def test_a_late_outcome_from_an_earlier_period_is_ignored() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_ratio=None, consecutive_failures=2, half_open_probes=1), clock=clock)
    slow = breaker.allow()  # admitted while closed; will answer late
    outcome(breaker, True)
    outcome(breaker, True)
    assert breaker.state is OPEN
    assert slow is not None
    slow.record_success()  # a late success must not close an open breaker
    assert breaker.recorded_state is OPEN and breaker.stale_outcomes == 1
    with pytest.raises(RuntimeError):
        slow.record_failure()  # one outcome per permit


def test_closing_starts_with_an_empty_window() -> None:
    breaker, clock = tripped(
        failure_ratio=0.5, consecutive_failures=None, minimum_throughput=1, window_type="count", window_size=2
    )
    clock.now = 10.0
    outcome(breaker, False)
    assert breaker.state is CLOSED
    assert breaker.window().calls == 0


def test_transitions_carry_times_and_reach_listeners_in_order() -> None:
    seen: list[Transition] = []
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_ratio=None, consecutive_failures=1, break_duration=5.0),
        name="mch_00042",
        clock=clock,
        on_transition=seen.append,
    )
    clock.now = 1.0
    outcome(breaker, True)
    clock.now = 7.0
    probe = breaker.allow()
    assert probe is not None
    clock.now = 7.5
    probe.record_success()
    assert seen == list(breaker.transitions)
    assert [(t.at, t.from_state, t.to_state) for t in seen] == [
        (1.0, CLOSED, OPEN),
        (7.0, OPEN, HALF_OPEN),
        (7.5, HALF_OPEN, CLOSED),
    ]
    assert seen[0].as_dict()["name"] == "mch_00042"


# ------------------------------------------------------------------ in virtual time, on both backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_guard_counts_errors_and_timeouts_but_not_outside_cancellation(backend: str) -> None:
    async def main() -> list[BreakerState]:
        breaker = CircuitBreaker(BreakerConfig(failure_ratio=None, consecutive_failures=2, break_duration=30.0))
        states = []

        async def hang() -> None:
            with anyio.fail_after(5):  # the timeout inside the guard: a failure
                await anyio.sleep_forever()

        with anyio.move_on_after(1):  # cancelled from outside: no verdict
            with breaker.guard():
                await anyio.sleep_forever()
        states.append(breaker.state)
        assert breaker.window().calls == 0
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await breaker.run(hang)
        states.append(breaker.state)
        with pytest.raises(BreakerOpen) as caught:
            await breaker.run(hang)
        assert caught.value.retry_after == pytest.approx(30.0)
        await anyio.sleep(30)
        states.append(breaker.state)

        async def fine() -> str:
            return "delivered"

        assert await breaker.run(fine) == "delivered"
        states.append(breaker.state)
        assert [t.at for t in breaker.transitions] == [pytest.approx(11.0), pytest.approx(41.0), pytest.approx(41.0)]
        return states

    assert run_virtual(main, backend=backend) == [CLOSED, OPEN, HALF_OPEN, CLOSED]


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_on_limits_what_counts(backend: str) -> None:
    async def main() -> None:
        breaker = CircuitBreaker(BreakerConfig(failure_ratio=None, consecutive_failures=1), failure_on=OSError)

        async def bad_payload() -> None:
            raise ValueError("the merchant's fault, not the endpoint's")

        with pytest.raises(ValueError):
            await breaker.run(bad_payload)
        assert breaker.state is CLOSED

        async def refused() -> None:
            raise ConnectionRefusedError

        with pytest.raises(ConnectionRefusedError):
            await breaker.run(refused)
        assert breaker.state is OPEN

    run_virtual(main, backend=backend)


@settings(max_examples=25, deadline=None)
@given(
    probes=st.integers(1, 5),
    arrivals=st.lists(st.floats(0.0, 4.0), min_size=1, max_size=40),
    backend=st.sampled_from(BACKENDS),
)
def test_many_concurrent_callers_in_half_open_get_exactly_n_probes(
    probes: int, arrivals: list[float], backend: str
) -> None:
    """Callers arrive during half-open while the probes are still out: exactly ``probes`` are admitted."""

    async def main() -> tuple[int, int, BreakerState]:
        breaker = CircuitBreaker(
            BreakerConfig(failure_ratio=None, consecutive_failures=1, break_duration=10.0, half_open_probes=probes)
        )
        outcome(breaker, True)
        await anyio.sleep(10)
        admitted: list[bool] = []

        async def caller(delay: float) -> None:
            await anyio.sleep(delay)
            permit = breaker.allow()
            if permit is None:
                return
            admitted.append(True)
            await anyio.sleep(5.0)  # every probe is still out when the last caller arrives
            permit.record_success()

        async with anyio.create_task_group() as tg:
            for delay in arrivals:
                tg.start_soon(caller, delay)
        return len(admitted), breaker.rejected, breaker.state

    admitted, rejected, state = run_virtual(main, backend=backend)
    assert admitted == min(probes, len(arrivals))
    assert rejected == len(arrivals) - admitted
    assert state is (CLOSED if len(arrivals) >= probes else HALF_OPEN)


@settings(max_examples=25, deadline=None)
@given(
    probes=st.integers(1, 4),
    calls=st.lists(st.tuples(st.floats(0.0, 60.0), st.floats(0.01, 8.0), st.booleans()), min_size=1, max_size=60),
    backend=st.sampled_from(BACKENDS),
)
def test_half_open_never_has_more_than_n_probes_whatever_the_outcomes(
    probes: int, calls: list[tuple[float, float, bool]], backend: str
) -> None:
    """Random arrivals, durations and outcomes: per half-open period, at most ``probes`` probes are admitted."""

    async def main() -> list[int]:
        periods = [0]  # probes admitted in each half-open period
        breaker = CircuitBreaker(
            BreakerConfig(
                failure_ratio=0.5, minimum_throughput=2, window_size=10.0, break_duration=3.0, half_open_probes=probes
            ),
            on_transition=lambda t: periods.append(0) if t.to_state is HALF_OPEN else None,
        )

        async def caller(delay: float, duration: float, fails: bool) -> None:
            await anyio.sleep(delay)
            permit = breaker.allow()
            if permit is None:
                return
            if permit.probe:
                periods[-1] += 1
            await anyio.sleep(duration)
            permit.record_failure() if fails else permit.record_success()

        async with anyio.create_task_group() as tg:
            for delay, duration, fails in calls:
                tg.start_soon(caller, delay, duration, fails)
        return periods

    periods = run_virtual(main, backend=backend)
    assert all(count <= probes for count in periods)


# ------------------------------------------------------------------ one breaker per merchant
@pytest.mark.parametrize("backend", BACKENDS)
def test_keyed_breakers_isolate_merchants(backend: str) -> None:
    async def main() -> tuple[KeyedCircuitBreaker[str], dict[str, BreakerState]]:
        breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(
            BreakerConfig(failure_ratio=0.5, minimum_throughput=5, window_size=30.0)
        )
        for _ in range(20):
            for merchant in ("mch_00001", "mch_00002", "mch_00003"):
                permit = breakers[merchant].allow()
                if permit is None:
                    continue
                permit.record_failure() if merchant == "mch_00002" else permit.record_success()
            await anyio.sleep(1)
        return breakers, breakers.not_closed()

    breakers, not_closed = run_virtual(main, backend=backend)
    assert not_closed == {"mch_00002": OPEN}
    assert [t.name for t in breakers.transitions] == ["mch_00002"] * len(breakers.transitions)
    assert len(breakers) == 3 and "mch_00004" not in breakers and breakers.get("mch_00004") is None
