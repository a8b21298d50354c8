"""The SimPy twin of Phase 1 tells the engine's story to the last digit, and its benchmark says so.

The twin (``payflow_lab/app/simpy_twin.py``) shares the world, the traffic, the
scenario and the recorder with the engine and swaps only the kernel, so its
summary, less the machine's measurements and the name of the kernel, equals the
engine's, and so does the per-second series. If a change to the engine moves
these numbers, the engine's story changed: that is a change to look at, not a
test to loosen.
"""

from __future__ import annotations

import pytest
import simpy  # part of the test extra, as of the bench extra

from payflow_lab.app.simpy_twin import (
    FifoPutQueue,
    SimPyPhase1Run,
    SimPyPool,
    bench_simpy,
    comparable,
    differences,
    run_engine_phase1,
    run_simpy_phase1,
)
from payflow_lab.core.recorder import NONDETERMINISTIC_SERIES
from payflow_lab.runner import DRAIN_SECONDS, RunConfig, run_config

SCALE = 0.1


@pytest.mark.parametrize("scenario", ["normal", "blackfriday"])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_twin_tells_the_engines_story(scenario: str, seed: int) -> None:
    config = RunConfig(scenario=scenario, phase=1, seed=seed, scale=SCALE, memory="off")
    engine = run_config(config)
    twin = SimPyPhase1Run(config).run()

    assert twin.summary["backend"] == "simpy"
    assert differences(comparable(engine.summary), comparable(twin.summary)) == []
    assert comparable(engine.summary) == comparable(twin.summary)
    for column, values in engine.series.items():
        if column not in NONDETERMINISTIC_SERIES:
            assert twin.series[column] == values, column
    # Not a tie of two empty runs: the story happened.
    payments = twin.summary["payments"]
    assert payments["attempted"] > 300
    if scenario == "blackfriday":
        assert payments["stuck"] > 1000 and twin.summary["moments"]["pool_exhausted_at"] is not None
    else:
        assert payments["stuck"] == 0 and payments["authorized"] > 0.9 * payments["attempted"]


def test_the_public_functions_agree_on_a_short_freeze() -> None:
    # A tiny PayFlow through the spike: the pool freezes, the drain runs out, the rest is stuck.
    twin = run_simpy_phase1("blackfriday", 3, 0.02, duration=1800)
    engine = run_engine_phase1("blackfriday", 3, 0.02, duration=1800)
    assert comparable(twin) == comparable(engine)
    assert twin["sim_seconds"] == 1800 + DRAIN_SECONDS and twin["payments"]["stuck"] > 50
    assert twin["tasks"]["end_in_flight"] == 0


def test_the_twin_is_phase_1_only() -> None:
    with pytest.raises(ValueError, match="Phase 1 only"):
        SimPyPhase1Run(RunConfig(scenario="normal", phase=2, seed=1, scale=SCALE))


def test_comparable_ignores_the_machine_and_the_kernel_only() -> None:
    summary = {"backend": "simpy", "wall_seconds": 1.0, "memory": {"peak_bytes": 5}, "payments": {"attempted": 3}}
    assert comparable(summary) == {"payments": {"attempted": 3}}
    assert differences({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == ["a.b[1]: 2 != 3"]


def test_the_put_queue_is_first_come_first_served_and_cancels_in_place() -> None:
    env = simpy.Environment()
    pool = SimPyPool(env, 1)
    assert isinstance(pool.put_queue, FifoPutQueue)
    holder = pool.request()
    waiting = [pool.request() for _ in range(4)]
    assert holder.triggered and not any(r.triggered for r in waiting)
    assert list(pool.put_queue) == waiting and pool.put_queue[0] is waiting[0]
    waiting[1].cancel()  # a waiter gives up: out of the middle of the queue
    assert list(pool.put_queue) == [waiting[0], waiting[2], waiting[3]]
    with pytest.raises(ValueError):
        pool.put_queue.remove(waiting[1])
    pool.release(holder)
    env.run()
    assert pool.users == [waiting[0]] and list(pool.put_queue) == [waiting[2], waiting[3]]
    pool.release(waiting[0])
    env.run()
    assert pool.users == [waiting[2]]


def test_the_pool_counts_as_the_engines_pool() -> None:
    env = simpy.Environment()
    alarms: list[float] = []
    pool = SimPyPool(env, 2, checkout_timeout=1.0, on_exhausted=lambda: alarms.append(env.now))
    outcomes: list[tuple[str, float]] = []

    def customer(name: str, hold: float) -> object:
        with pool.request() as connection:
            try:
                yield from pool.checkout(connection, pool.checkout_timeout)
            except TimeoutError:
                outcomes.append((f"{name} gave up", env.now))
                return
            outcomes.append((f"{name} got one", env.now))
            yield env.timeout(hold)

    for name, hold in (("a", 3.0), ("b", 0.5), ("c", 1.0), ("d", 1.0)):
        env.process(customer(name, hold))
    env.run()
    assert outcomes == [("a got one", 0), ("b got one", 0), ("c got one", 0.5), ("d gave up", 1.0)]
    assert alarms == [0]
    assert pool.summary() == {"size": 2, "peak_in_use": 2, "checkout_timeouts": 1, "checkouts": 3}
    assert pool.in_use == 0 and pool.waiting == 0


def test_the_bench_rows_in_quick_mode() -> None:
    rows = bench_simpy(quick=True)
    by_key = {row["key"]: row for row in rows}
    assert set(by_key) == {
        "simulation.simpy_twin_matches",
        "simulation.phase1_cpu_seconds",
        "simulation.simpy_phase1_cpu_seconds",
        "simulation.phase1_over_simpy",
        "simulation.phase1_peak_heap_mib",
        "simulation.simpy_phase1_peak_heap_mib",
        "simulation.phase1_peak_memory_over_simpy",
    }
    assert by_key["simulation.simpy_twin_matches"]["value"] is True, by_key["simulation.simpy_twin_matches"]
    for row in rows:
        assert {"name", "key", "value", "unit"} <= set(row)
    for key in ("simulation.phase1_over_simpy", "simulation.phase1_peak_memory_over_simpy"):
        assert by_key[key]["value"] > 0 and "target" in by_key[key] and isinstance(by_key[key]["met"], bool)
    assert by_key["simulation.phase1_cpu_seconds"]["payments"] > 5000
    assert (
        by_key["simulation.phase1_peak_heap_mib"]["value"] > 0
        and by_key["simulation.simpy_phase1_peak_heap_mib"]["value"] > 0
    )
