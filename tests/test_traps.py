"""The asyncio trap next to Phase 2, shown for real: an unreferenced pending task is garbage-collected."""

from __future__ import annotations

from payflow_lab.lab.traps import demonstrate


def test_an_unreferenced_task_waiting_on_an_unreachable_event_is_collected_mid_flight():
    trap, kept, sleeping = demonstrate()
    assert trap.collected
    assert trap.loop_messages == ["Task was destroyed but it is pending!"]
    assert trap.cleanup_ran_with == "GeneratorExit"  # not CancelledError: its finally ran at GC time
    assert "garbage-collected while pending" in trap.describe()


def test_the_controls_survive():
    _, kept, sleeping = demonstrate()
    assert not kept.collected and kept.loop_messages == [] and kept.cleanup_ran_with is None
    # a sleeping task is held by the loop's timer: this is why the trap is rare, and why a demo must not sleep
    assert not sleeping.collected and sleeping.loop_messages == []


def test_it_is_deterministic():
    assert all(demonstrate()[0].collected for _ in range(10))
