"""Admission: all-or-nothing per emission, and the three overflow policies (reject, wait, spill)."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payflow_lab.core.errors import BusClosed, Rejected
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import Delivery, HookBus, MemorySpillStore, Spill, Wait


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def admitted(bus: HookBus) -> dict[str, int]:
    return {name: s.admitted for name, s in bus.stats().items()}


def test_a_full_subscriber_refuses_the_whole_emission(backend: str) -> None:
    async def main() -> None:
        gate = anyio.Event()

        async def blocked(p: object) -> None:
            await gate.wait()

        async def fine(p: object) -> None:
            pass

        bus = HookBus()
        bus.hook("e", fine, name="first", workers=1)
        bus.hook("e", blocked, name="full", queue_size=1, workers=1)
        bus.hook("e", fine, name="last", workers=1)
        async with bus:
            assert bus.emit("e", 1) == 3  # "full"'s worker takes it and blocks
            await anyio.sleep(0.1)
            assert bus.emit("e", 2) == 3  # "full"'s queue now holds one: it is full
            before = admitted(bus)
            with pytest.raises(Rejected) as info:
                bus.emit("e", 3)
            assert admitted(bus) == before  # nothing queued anywhere
            assert info.value.blocked_by == ("full",)
            assert info.value.reasons == {
                "first": "rejected with the emission (full: queue full)",
                "full": "queue full",
                "last": "rejected with the emission (full: queue full)",
            }
            assert "nothing was queued" in str(info.value)
            stats = bus.stats()
            assert {name: s.rejected for name, s in stats.items()} == {"first": 1, "full": 1, "last": 1}
            assert stats["full"].rejected_reasons == {"queue full": 1}
            gate.set()

    run_virtual(main, backend=backend)


def test_wait_policy_applies_backpressure_until_there_is_room(backend: str) -> None:
    async def main() -> None:
        async def slow(p: object) -> None:
            await anyio.sleep(1)

        bus = HookBus()
        bus.hook("e", slow, name="slow", queue_size=1, workers=1, overflow=Wait(max_wait=5))
        async with bus:
            start = anyio.current_time()
            bus.emit("e", 1)  # running until t=1
            await anyio.sleep(0.01)
            bus.emit("e", 2)  # queued: the queue is full
            with pytest.raises(Rejected, match="only emit_wait"):
                bus.emit("e", 3)  # a plain call cannot wait
            assert await bus.emit_wait("e", 3) == 1
            assert anyio.current_time() - start == pytest.approx(1.0)  # room came when item 2 started
            assert bus.stats()["slow"].admitted == 3

    run_virtual(main, backend=backend)


def test_wait_policy_gives_up_at_its_deadline_and_queues_nothing(backend: str) -> None:
    async def main() -> None:
        async def slow(p: object) -> None:
            await anyio.sleep(10)

        async def other(p: object) -> None:
            pass

        bus = HookBus(timeout=None)
        bus.hook("e", other, name="other")
        bus.hook("e", slow, name="slow", queue_size=1, workers=1, overflow=Wait(max_wait=0.5))
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.01)
            bus.emit("e", 2)
            before = admitted(bus)
            start = anyio.current_time()
            with pytest.raises(Rejected) as info:
                await bus.emit_wait("e", 3)
            assert anyio.current_time() - start == pytest.approx(0.5)
            assert admitted(bus) == before
            assert info.value.reasons["slow"] == "queue full for 0.5 s"
            await bus.aclose(0)

    run_virtual(main, backend=backend)


def test_a_waiting_emitter_is_told_when_the_bus_closes(backend: str) -> None:
    async def main() -> None:
        async def slow(p: object) -> None:
            await anyio.sleep(10)

        bus = HookBus(timeout=None)
        bus.hook("e", slow, name="slow", queue_size=1, workers=1, overflow=Wait(max_wait=60))
        outcome: list[str] = []

        async def waiter() -> None:
            try:
                await bus.emit_wait("e", 3)
            except BusClosed:
                outcome.append("closed")

        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.01)
            bus.emit("e", 2)
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(1)
                report = await bus.aclose(0.5)
            assert outcome == ["closed"]
            assert bus.stats()["slow"].admitted == 2
            assert report.never_started == 1 and report.cancelled == 1

    run_virtual(main, backend=backend)


def test_emit_wait_is_a_checkpoint_so_a_cancelled_caller_admits_nothing(backend: str) -> None:
    async def main() -> None:
        async def h(p: object) -> None:
            pass

        bus = HookBus()
        bus.hook("e", h)
        async with bus:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await bus.emit_wait("e", 1)
            assert bus.stats()["h"].admitted == 0

    run_virtual(main, backend=backend)


def test_spill_policy_hands_the_overflow_to_the_store_and_the_emission_succeeds(backend: str) -> None:
    async def main() -> None:
        store = MemorySpillStore(capacity=10)
        gate = anyio.Event()

        async def blocked(p: object) -> None:
            await gate.wait()

        async def audit(p: object) -> None:
            pass

        bus = HookBus(timeout=None)
        bus.hook("e", blocked, name="webhook", queue_size=1, workers=1, overflow=Spill(store))
        bus.hook("e", audit, name="audit")
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.01)
            bus.emit("e", 2)
            assert bus.emit("e", 3) == 2  # webhook spills its copy, audit queues its own
            assert store.deliveries == [Delivery("e", "webhook", 3)]
            stats = bus.stats()
            assert (stats["webhook"].admitted, stats["webhook"].spilled) == (2, 1)
            assert stats["audit"].admitted == 3
            gate.set()

    run_virtual(main, backend=backend)


def test_a_failing_spill_store_refuses_the_emission_atomically(backend: str) -> None:
    async def main() -> None:
        store = MemorySpillStore(capacity=1)
        gate = anyio.Event()

        async def blocked(p: object) -> None:
            await gate.wait()

        async def audit(p: object) -> None:
            pass

        bus = HookBus(timeout=None)
        bus.hook("e", audit, name="audit")
        bus.hook("e", blocked, name="webhook", queue_size=1, workers=1, overflow=Spill(store))
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.01)
            bus.emit("e", 2)
            bus.emit("e", 3)  # spilled: the store is now full
            before = admitted(bus)
            with pytest.raises(Rejected) as info:
                bus.emit("e", 4)
            assert admitted(bus) == before
            assert "spill store failed: OverflowError" in info.value.reasons["webhook"]
            assert len(store) == 1
            gate.set()

    run_virtual(main, backend=backend)


def test_spill_subscribers_hand_their_unstarted_work_to_the_store_at_shutdown(backend: str) -> None:
    async def main() -> None:
        store = MemorySpillStore()

        async def slow(p: object) -> None:
            await anyio.sleep(10)

        bus = HookBus(timeout=None)
        bus.hook("e", slow, name="webhook", queue_size=5, workers=1, overflow=Spill(store))
        async with bus:
            for i in range(4):
                bus.emit("e", i)
            report = await bus.aclose(1)
        assert report.subscribers["webhook"].never_started == 3
        assert report.subscribers["webhook"].spilled == 3
        assert [d.payload for d in store.deliveries] == [1, 2, 3]

    run_virtual(main, backend=backend)


# ----------------------------------------------------------------- property: all-or-nothing
subscriber_specs = st.lists(
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.sampled_from([0.5, 1.0, 3.0])), min_size=1, max_size=4
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 6)),
        st.tuples(st.just("sleep"), st.sampled_from([0.1, 0.5, 1.0, 2.0])),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=subscriber_specs, ops=operations, backend=st.sampled_from(["asyncio", "trio"]))
def test_every_emission_reaches_all_subscribers_or_none(specs: list, ops: list, backend: str) -> None:
    """Whatever the queue sizes, worker counts and timing: admitted counts move together, or not at all."""

    async def main() -> None:
        bus = HookBus(timeout=2.0)
        for k, (queue_size, workers, duration) in enumerate(specs):

            async def handler(p: object, duration: float = duration) -> None:
                await anyio.sleep(duration)

            bus.hook("e", handler, name=f"s{k}", queue_size=queue_size, workers=workers)
        emitted = rejected = 0
        async with bus:
            for op, arg in ops:
                if op == "sleep":
                    await anyio.sleep(arg)
                    continue
                for _ in range(arg):
                    before = bus.stats()
                    try:
                        served = bus.emit("e", emitted + rejected)
                    except Rejected as rejection:
                        rejected += 1
                        after = bus.stats()
                        assert all(after[n].admitted == before[n].admitted for n in after)
                        assert all(after[n].rejected == before[n].rejected + 1 for n in after)
                        assert set(rejection.reasons) == set(after)
                        assert all(before[n].queued >= before[n].queue_size for n in rejection.blocked_by)
                    else:
                        emitted += 1
                        assert served == len(specs)
                        after = bus.stats()
                        assert all(after[n].admitted == before[n].admitted + 1 for n in after)
            stats = bus.stats()
            assert all(s.admitted == emitted and s.rejected == rejected for s in stats.values())
            await bus.aclose(0)

    run_virtual(main, backend=backend)
