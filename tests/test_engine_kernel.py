"""The kernel's speed measures hold what they promise: the collector comes back, the clock is the loop's,
the virtual loop still hears other threads, and timers due together still run in creation order."""

from __future__ import annotations

import gc
import threading

import anyio
import anyio.lowlevel
import pytest

import payflow_lab as pf
from payflow_lab.core.gcpolicy import RUN_MIDDLE_THRESHOLD, RUN_THRESHOLD, fewer_collections
from payflow_lab.core.recorder import DEFAULT_MEMORY
from payflow_lab.core.vtime import BACKENDS, VirtualTimeLoop, clock_of_running_loop, run_virtual, sleep_of_running_loop


@pytest.fixture
def default_thresholds():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_fewer_collections_raises_the_first_two_thresholds_and_restores_them(default_thresholds: None) -> None:
    with fewer_collections():
        assert gc.get_threshold() == (RUN_THRESHOLD, RUN_MIDDLE_THRESHOLD, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_process_that_already_collects_more_rarely_is_not_made_to_collect_more_often(
    default_thresholds: None,
) -> None:
    gc.set_threshold(700, 500, 10)
    with fewer_collections():
        assert gc.get_threshold() == (RUN_THRESHOLD, 500, 10)
    assert gc.get_threshold() == (700, 500, 10)


def test_overlapping_runs_share_the_setting_until_the_last_one_ends(default_thresholds: None) -> None:
    first, second = fewer_collections(), fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the live run is still on: a quick cell ending must not lower it
    assert gc.get_threshold()[0] == RUN_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_disabled_collector_stays_disabled(default_thresholds: None) -> None:
    gc.set_threshold(0, 10, 10)
    with fewer_collections():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold()[0] == 0


def test_a_run_restores_the_threshold_even_when_it_fails(default_thresholds: None) -> None:
    def boom(simulation: object) -> None:
        assert gc.get_threshold()[0] == RUN_THRESHOLD  # on while the run is
        raise RuntimeError("a tick callback that fails")

    with pytest.raises(RuntimeError, match="fails"):
        pf.run_config(pf.RunConfig(phase=1, scale=0.02, duration=30, memory="off"), on_tick=boom)
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize(
    ("memory", "threshold"), [("off", RUN_THRESHOLD), ("rss", RUN_THRESHOLD), ("tracemalloc", 700)]
)
def test_a_traced_heap_keeps_the_usual_collections(default_thresholds: None, memory: str, threshold: int) -> None:
    """Garbage waiting for a rarer collection would be counted by tracemalloc: traced runs keep the default."""
    seen = set()
    pf.run_config(
        pf.RunConfig(phase=1, scale=0.02, duration=30, memory=memory), on_tick=lambda _: seen.add(gc.get_threshold()[0])
    )
    assert seen == {threshold}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_loops_clock_is_anyios_clock(backend: str) -> None:
    async def main() -> list[tuple[float, float]]:
        now = clock_of_running_loop()
        seen = []
        for pause in (0.0, 1.5, 3600.0):
            await anyio.sleep(pause)
            seen.append((now(), anyio.current_time()))
        return seen

    seen = run_virtual(main, backend=backend)
    assert [a for a, _ in seen] == [b for _, b in seen]
    assert seen[-1][0] - seen[0][0] == pytest.approx(3601.5)


def test_the_loops_clock_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        clock_of_running_loop()


def test_another_thread_still_wakes_the_virtual_loop() -> None:
    """The loop looks at real file descriptors only every 64th turn: a thread's call_soon_threadsafe still gets in."""
    import time

    loop = VirtualTimeLoop()

    async def main() -> float:
        first = loop.create_future()
        threading.Thread(target=lambda: loop.call_soon_threadsafe(first.set_result, None), daemon=True).start()
        await first  # no timer at all meanwhile: the loop waits for real
        second = loop.create_future()
        threading.Timer(0.05, lambda: loop.call_soon_threadsafe(second.set_result, None)).start()
        started = time.monotonic()
        while not second.done():  # busy in virtual time, a simulated second per turn
            await anyio.sleep(1.0)
            assert time.monotonic() - started < 30, "the second wake-up was never heard"
        return anyio.current_time()

    try:
        virtual_seconds = loop.run_until_complete(main())
    finally:
        loop.close()
    assert virtual_seconds > 0


def test_timers_due_together_still_run_in_creation_order() -> None:
    async def main() -> list[int]:
        order: list[int] = []

        async def at(when: float, label: int) -> None:
            await anyio.sleep(when)
            order.append(label)

        async with anyio.create_task_group() as group:
            for label, when in enumerate([2.0, 1.0, 2.0, 1.0, 2.0, 0.5, 1.0]):
                group.start_soon(at, when, label)
        return order

    assert run_virtual(main) == [5, 1, 3, 6, 0, 2, 4]


def test_runs_measure_resident_memory_by_default() -> None:
    assert DEFAULT_MEMORY == "rss"
    assert pf.RunConfig().memory == "rss"
    result = pf.run("normal", phase=4, scale=0.02, duration=120)
    memory = result["memory"]
    assert memory["how"].startswith("rss")
    assert memory["peak_bytes"] >= memory["start_bytes"] > 10 * 2**20  # a Python process is tens of MiB resident


def test_cancelled_timers_leave_the_heap_and_the_rest_keep_their_order() -> None:
    """Most of a run's timers are cancelled before they fire (every timeout that is not reached): they must go."""
    loop = VirtualTimeLoop()
    fired: list[int] = []

    async def main() -> tuple[int, int]:
        timers = [loop.call_later(1.0 + (i % 7), fired.append, i) for i in range(300)]
        for i, timer in enumerate(timers):
            if i % 3:
                timer.cancel()
        await anyio.lowlevel.checkpoint()  # one turn: more than half cancelled, so the heap is swept
        left = len(loop._timers)
        await anyio.sleep(10.0)
        return left, len(loop._timers)

    try:
        left, after = loop.run_until_complete(main())
    finally:
        loop.close()
    kept = [i for i in range(300) if i % 3 == 0]
    assert left == len(kept)
    assert after == 0
    assert fired == sorted(kept, key=lambda i: (1.0 + (i % 7), i))  # by time, then in creation order


def test_the_clock_lands_exactly_on_each_timer() -> None:
    async def main() -> list[float]:
        seen = []
        for delay in (0.1, 0.2, 1e-9, 86_400.0 * 3, 0.3):
            await anyio.sleep(delay)
            seen.append(anyio.current_time())
        return seen

    seen = run_virtual(main)
    expected, now = [], 0.0
    for delay in (0.1, 0.2, 1e-9, 86_400.0 * 3, 0.3):
        now += delay
        expected.append(now)
    assert seen == expected  # to the last bit: the loop jumps to the timer's time, it does not add a wait


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_loops_sleep_is_the_one_anyio_awaits(backend: str) -> None:
    async def main() -> tuple[str, float, bool]:
        sleep = sleep_of_running_loop()
        start = anyio.current_time()
        await sleep(2.5)
        with anyio.move_on_after(1.0) as scope:  # cancelled by anyio's scopes like anyio.sleep
            await sleep(10.0)
        return sleep.__module__, anyio.current_time() - start, scope.cancelled_caught

    module, elapsed, cancelled = run_virtual(main, backend=backend)
    assert module.split(".")[0] == backend
    assert elapsed == pytest.approx(3.5)
    assert cancelled


def test_the_loops_sleep_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        sleep_of_running_loop()


def test_the_world_waits_with_the_sleep_it_is_given() -> None:
    from payflow_lab.core.recorder import Recorder
    from payflow_lab.core.world import World

    waits: list[float] = []

    async def counted(delay: float) -> None:
        waits.append(delay)
        await anyio.sleep(delay)

    async def main() -> float:
        clock = clock_of_running_loop()
        world = World(seed=3, scale=0.02, clock=clock, recorder=Recorder(clock), sleep=counted)
        payment = world.new_payment()
        await world.db_query(payment)
        await world.update_risk_score(payment)
        return clock()

    elapsed = run_virtual(main)
    assert len(waits) == 2
    assert elapsed == pytest.approx(sum(waits))


def _fields(handle: object) -> dict[str, object]:
    slots = [slot for cls in type(handle).__mro__ for slot in getattr(cls, "__slots__", ()) if slot != "__weakref__"]
    return {slot: getattr(handle, slot) for slot in slots}  # AttributeError: a field asyncio has and ours lacks


def test_the_virtual_loops_handles_carry_every_field_asyncios_own_do() -> None:
    """The loop builds its handles without asyncio's constructor: a Python that adds a field must fail here."""
    import asyncio
    import contextvars

    loop = VirtualTimeLoop()
    try:
        context = contextvars.copy_context()
        soon = loop.call_soon(print, "soon", context=context)
        assert type(soon) is asyncio.Handle
        assert _fields(soon) == _fields(asyncio.Handle(print, ("soon",), loop, context))
        later = loop.call_at(5.0, print, "later", context=context)
        assert type(later) is asyncio.TimerHandle
        expected = _fields(asyncio.TimerHandle(5.0, print, ("later",), loop, context))
        assert _fields(later) == {**expected, "_scheduled": True}  # ours is on the heap
        assert loop.call_soon(print)._context is not None  # no context given: a copy of the current one
        soon.cancel()
        later.cancel()
    finally:
        loop.close()


@pytest.mark.parametrize("debug", [False, True])
def test_a_failing_callback_is_reported_and_the_loop_goes_on(debug: bool) -> None:
    import asyncio

    loop = VirtualTimeLoop()
    loop.set_debug(debug)
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def main() -> float:
        loop.call_soon(lambda: 1 / 0)
        loop.call_later(0.5, lambda: {}["missing"])
        await asyncio.sleep(1.0)
        return loop.time()

    try:
        assert loop.run_until_complete(main()) == 1.0
    finally:
        loop.close()
    assert [type(context["exception"]) for context in reported] == [ZeroDivisionError, KeyError]
    assert all(str(context["message"]).startswith("Exception in callback") for context in reported)
