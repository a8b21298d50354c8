"""Shutdown: drain within a deadline, cancel the rest, report everything, and never hang on a stuck hook."""

from __future__ import annotations

import random

import anyio
import pytest

from payflow_lab.core.errors import BusClosed
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import HookBus, Outcome


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def sleeper(seconds: float):
    async def handler(payload: object) -> None:
        await anyio.sleep(seconds)

    return handler


def test_aclose_drains_the_queues_when_the_deadline_allows(backend: str) -> None:
    async def main() -> None:
        bus = HookBus(timeout=None)
        bus.hook("e", sleeper(1), name="one", workers=1)
        async with bus:
            for i in range(3):
                bus.emit("e", i)
            start = anyio.current_time()
            report = await bus.aclose(10)
            assert anyio.current_time() - start == pytest.approx(3.0)  # three in a row, then done
        assert report.drained
        assert report.subscribers["one"].completed == 3
        assert report.cancelled == report.never_started == report.abandoned == 0
        assert report.elapsed == pytest.approx(3.0)

    run_virtual(main, backend=backend)


def test_at_the_deadline_running_work_is_cancelled_and_queued_work_never_starts(backend: str) -> None:
    async def main() -> None:
        outcomes: list[tuple[str, object]] = []
        bus = HookBus(timeout=None, on_outcome=lambda o: outcomes.append((o.status, o.payload)))
        bus.hook("e", sleeper(10), name="slow", workers=2)
        async with bus:
            for i in range(5):
                bus.emit("e", i)
            start = anyio.current_time()
            report = await bus.aclose(1.5)
            assert anyio.current_time() - start == pytest.approx(1.5)
        assert not report.drained
        shutdown = report.subscribers["slow"]
        assert (shutdown.completed, shutdown.cancelled, shutdown.never_started, shutdown.abandoned) == (0, 2, 3, 0)
        assert sorted(outcomes) == [
            ("cancelled", 0),
            ("cancelled", 1),
            ("never_started", 2),
            ("never_started", 3),
            ("never_started", 4),
        ]
        stats = bus.stats()["slow"]
        assert stats.balanced and stats.cancelled == 5 and stats.never_started == 3

    run_virtual(main, backend=backend)


def test_a_handler_that_ignores_cancellation_cannot_hold_shutdown_hostage(backend: str) -> None:
    """hookz's Close waited for ever for a stuck hook. Here aclose returns at deadline + grace, and says who."""

    async def main() -> None:
        async def stubborn(payload: object) -> None:
            with anyio.CancelScope(shield=True):  # ignores its timeout and the shutdown alike
                await anyio.sleep(3600)

        bus = HookBus(timeout=1.0, cancel_grace=0.5)
        bus.hook("e", stubborn, workers=1)
        bus.hook("e", sleeper(0.2), name="polite", workers=1)
        async with bus:
            bus.emit("e", 1)
            bus.emit("e", 2)
            await anyio.sleep(0.1)
            start = anyio.current_time()
            report = await bus.aclose(2)
            assert anyio.current_time() - start == pytest.approx(2.5)  # deadline 2 s + grace 0.5 s
            assert report.subscribers["stubborn"].abandoned == 1
            assert report.subscribers["stubborn"].never_started == 1
            assert report.subscribers["polite"].completed == 2 and report.subscribers["polite"].abandoned == 0
            assert bus.stats()["stubborn"].running == 1
        # Python cannot kill a task: the abandoned handler ran on, and was counted when it ended.
        stats = bus.stats()["stubborn"]
        assert stats.running == 0 and stats.timed_out == 1 and stats.balanced

    run_virtual(main, backend=backend)


def test_aclose_is_idempotent_and_concurrent_callers_get_the_same_report(backend: str) -> None:
    async def main() -> None:
        reports = []
        bus = HookBus()
        bus.hook("e", sleeper(1))
        async with bus:
            bus.emit("e", 1)

            async def close() -> None:
                reports.append(await bus.aclose(5))

            async with anyio.create_task_group() as tg:
                tg.start_soon(close)
                tg.start_soon(close)
            reports.append(await bus.aclose(5))
        assert len(reports) == 3 and reports[0] is reports[1] is reports[2]
        assert bus.report is reports[0]

    run_virtual(main, backend=backend)


def test_leaving_async_with_shuts_down_with_the_default_deadline(backend: str) -> None:
    async def main() -> None:
        bus = HookBus(timeout=None, shutdown_deadline=2.0)
        bus.hook("e", sleeper(5), name="slow", workers=1)
        async with bus:
            bus.emit("e", 1)
            start = anyio.current_time()
        assert anyio.current_time() - start == pytest.approx(2.0)
        assert bus.state == "closed"
        assert bus.report is not None and bus.report.cancelled == 1

    run_virtual(main, backend=backend)


def test_leaving_async_with_on_an_error_stops_at_once_and_still_accounts(backend: str) -> None:
    async def main() -> None:
        bus = HookBus(timeout=None, shutdown_deadline=60)
        bus.hook("e", sleeper(5), name="slow", workers=1)
        start = anyio.current_time()
        with pytest.raises(ZeroDivisionError):
            async with bus:
                bus.emit("e", 1)
                bus.emit("e", 2)
                await anyio.sleep(0.5)
                1 / 0
        assert anyio.current_time() - start == pytest.approx(0.5)
        assert bus.report is not None
        assert (bus.report.cancelled, bus.report.never_started) == (1, 1)

    run_virtual(main, backend=backend)


def test_a_cancelled_owner_still_gets_every_delivery_accounted(backend: str) -> None:
    async def main() -> None:
        seen: list[Outcome] = []
        bus = HookBus(timeout=None, shutdown_deadline=60, on_outcome=seen.append)
        bus.hook("e", sleeper(5), name="slow", workers=1)
        with anyio.move_on_after(1):
            async with bus:
                for i in range(3):
                    bus.emit("e", i)
                await anyio.sleep_forever()
        stats = bus.stats()["slow"]
        assert stats.balanced and stats.queued == stats.running == 0
        assert len(seen) == 3 and bus.state == "closed"

    run_virtual(main, backend=backend)


def test_emit_racing_close_never_crashes_and_never_loses_an_admitted_item(backend: str) -> None:
    """hookz's Close could panic when racing Emit. Here every emit is admitted-and-counted, or refused."""

    async def main() -> None:
        rng = random.Random(4)
        outcomes: list[Outcome] = []
        bus = HookBus(timeout=0.8, on_outcome=outcomes.append)

        async def work(payload: object) -> None:
            await anyio.sleep(rng.choice([0.05, 0.3, 1.5]))

        bus.hook("e", work, name="a", queue_size=20, workers=2)
        bus.hook("e", work, name="b", queue_size=50, workers=3)
        accepted = refused = rejected = 0

        async def emitter() -> None:
            nonlocal accepted, refused, rejected
            while True:
                try:
                    bus.emit("e", accepted)
                    accepted += 1
                except BusClosed:
                    refused += 1
                    return
                except Exception:  # a full queue: refused, counted; keep going
                    rejected += 1
                await anyio.sleep(rng.choice([0, 0.01, 0.05]))

        async with bus:
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(emitter)
                await anyio.sleep(2)
                report = await bus.aclose(0.5)
        assert refused == 4 and bus.rejected_after_close == 4
        assert accepted > 0 and report.never_started + report.cancelled > 0  # the race did leave work behind
        for name, stats in bus.stats().items():
            assert stats.admitted == accepted
            assert stats.rejected == rejected
            assert stats.queued == stats.running == 0
            assert stats.completed + stats.failed + stats.timed_out + stats.cancelled == accepted
            assert sum(o.subscriber == name for o in outcomes) == accepted

    run_virtual(main, backend=backend)


def test_a_deadline_of_zero_cancels_at_once(backend: str) -> None:
    async def main() -> None:
        bus = HookBus(timeout=None)
        bus.hook("e", sleeper(1), name="s", workers=1)
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.5)
            report = await bus.aclose(0)
        assert report.subscribers["s"].cancelled == 1

    run_virtual(main, backend=backend)
