"""Handlers: timeouts enforced by cancellation, errors kept and isolated, callbacks that cannot hurt."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import HookBus, HookFailure, Outcome


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def test_a_hanging_handler_is_cancelled_at_the_global_timeout_and_frees_its_worker(backend: str) -> None:
    async def main() -> None:
        finished: list[tuple[float, str]] = []

        async def maybe_hang(payload: str) -> None:
            if payload == "hang":
                await anyio.sleep_forever()  # never checks anything: only cancellation can end it
            finished.append((anyio.current_time(), payload))

        bus = HookBus(timeout=5.0)
        bus.hook("e", maybe_hang, workers=1)
        async with bus:
            start = anyio.current_time()
            bus.emit("e", "hang")
            bus.emit("e", "fine")
            await anyio.sleep(6)
            stats = bus.stats()["maybe_hang"]
            assert stats.timed_out == 1 and stats.completed == 1
            assert finished == [(start + 5.0, "fine")]  # the worker was free again at exactly 5 s
            assert stats.latency["max_ms"] == 5000.0

    run_virtual(main, backend=backend)


def test_per_subscriber_timeouts_override_the_global_one(backend: str) -> None:
    async def main() -> None:
        async def three_seconds(payload: object) -> None:
            await anyio.sleep(3)

        bus = HookBus(timeout=5.0)
        bus.hook("e", three_seconds, name="strict", timeout=1.0)
        bus.hook("e", three_seconds, name="global")
        bus.hook("e", three_seconds, name="unbounded", timeout=None)
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(4)
            stats = bus.stats()
            assert (stats["strict"].timed_out, stats["strict"].completed) == (1, 0)
            assert (stats["global"].timed_out, stats["global"].completed) == (0, 1)
            assert (stats["unbounded"].timed_out, stats["unbounded"].completed) == (0, 1)

    run_virtual(main, backend=backend)


def test_a_handlers_own_timeout_error_is_a_failure_not_a_bus_timeout(backend: str) -> None:
    async def main() -> None:
        async def pool_timeout(payload: object) -> None:
            raise TimeoutError("no database connection within 1 s")

        bus = HookBus(timeout=5.0)
        bus.hook("e", pool_timeout)
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.1)
            stats = bus.stats()["pool_timeout"]
            assert (stats.failed, stats.timed_out) == (1, 0)
            assert stats.failures_by_type == {"TimeoutError": 1}

    run_virtual(main, backend=backend)


def test_an_error_is_kept_with_its_traceback_passed_on_and_never_reaches_the_emitter(backend: str) -> None:
    async def main() -> None:
        reported: list[HookFailure] = []
        delivered: list[object] = []

        async def broken_endpoint(payload: object) -> None:
            raise ValueError(f"merchant endpoint returned garbage for {payload}")

        async def audit(payload: object) -> None:
            delivered.append(payload)

        bus = HookBus(on_error=reported.append)
        bus.hook("e", broken_endpoint, workers=1)
        bus.hook("e", audit)
        async with bus:
            for i in range(3):
                assert bus.emit("e", i) == 2  # the emitter never sees the error
            await anyio.sleep(0.1)
            assert sorted(delivered) == [0, 1, 2]  # the other subscriber is unaffected
            stats = bus.stats()["broken_endpoint"]
            assert (stats.failed, stats.completed) == (3, 0)
            assert stats.failures_by_type == {"ValueError": 3}
            assert [f.message for f in reported] == [f"merchant endpoint returned garbage for {i}" for i in range(3)]
            failure = reported[0]
            assert (failure.subscriber, failure.event, failure.error_type) == ("broken_endpoint", "e", "ValueError")
            assert "Traceback (most recent call last)" in failure.traceback
            assert "in broken_endpoint" in failure.traceback
            assert bus.failures("broken_endpoint") == reported
            assert "traceback" not in failure.as_dict() and "traceback" in failure.as_dict(with_traceback=True)
            # The worker survived three failures in a row and still serves the queue.
            assert bus.emit("e", 3) == 2

    run_virtual(main, backend=backend)


def test_the_failure_history_is_bounded(backend: str) -> None:
    async def main() -> None:
        async def broken(payload: object) -> None:
            raise RuntimeError(str(payload))

        bus = HookBus(failure_history=3)
        bus.hook("e", broken)
        async with bus:
            for i in range(10):
                bus.emit("e", i)
            await anyio.sleep(0.1)
            assert len(bus.failures()) == 3
            assert bus.stats()["broken"].failed == 10

    run_virtual(main, backend=backend)


def test_callbacks_that_raise_are_counted_and_cannot_kill_a_worker(backend: str) -> None:
    async def main() -> None:
        def bad_callback(_: object) -> None:
            raise RuntimeError("the logging backend is down")

        async def broken(payload: object) -> None:
            raise ValueError("boom")

        async def fine(payload: object) -> None:
            pass

        bus = HookBus(on_error=bad_callback, on_outcome=bad_callback)
        bus.hook("e", broken, workers=1)
        bus.hook("e", fine, workers=1)
        async with bus:
            bus.emit("e", 1)
            bus.emit("e", 2)
            await anyio.sleep(0.1)
            stats = bus.stats()
            assert stats["broken"].failed == 2 and stats["fine"].completed == 2
            assert bus.callback_errors == 2 + 2 + 2  # on_error twice, on_outcome four times

    run_virtual(main, backend=backend)


def test_on_outcome_sees_every_admitted_delivery_exactly_once(backend: str) -> None:
    async def main() -> None:
        seen: list[Outcome] = []

        async def handler(payload: int) -> None:
            if payload == 1:
                raise KeyError("one")
            await anyio.sleep(payload)

        bus = HookBus(timeout=2.5, on_outcome=seen.append)
        bus.hook("e", handler, workers=1)
        async with bus:
            for p in (0, 1, 2, 3, 4):
                bus.emit("e", p)
            await anyio.sleep(2.1)
            report = await bus.aclose(1)
        by_payload = {o.payload: o.status for o in seen}
        assert by_payload == {0: "completed", 1: "failed", 2: "completed", 3: "cancelled", 4: "never_started"}
        assert len(seen) == 5
        failed = next(o for o in seen if o.status == "failed")
        assert failed.failure is not None and failed.failure.error_type == "KeyError"
        assert report.subscribers["handler"].never_started == 1

    run_virtual(main, backend=backend)


def test_a_handler_that_never_awaits_does_not_starve_the_loop(backend: str) -> None:
    async def main() -> None:
        count = 0

        async def instant(payload: object) -> None:
            nonlocal count
            count += 1

        bus = HookBus(queue_size=1000)
        bus.hook("e", instant, workers=1)
        async with bus:
            for i in range(100):
                bus.emit("e", i)
            await anyio.lowlevel.checkpoint()  # one turn for us...
            await anyio.lowlevel.checkpoint()
            assert 0 < count < 100  # ...while the worker is still going: it yields per delivery
            await anyio.sleep(0.1)
            assert count == 100

    run_virtual(main, backend=backend)
