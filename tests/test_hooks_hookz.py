"""One test per measured defect of hookz (the Go hook library of the story), showing this bus does not have it.

DESIGN.md, "Anchors": a full queue rejects part of a fan-out after some hooks
were queued; timeouts are cooperative only; Close has no deadline and can
panic when racing Emit; hook errors and panics are counted and thrown away;
one slow subscriber starves the others; no per-hook latency metrics.
"""

from __future__ import annotations

import anyio
import pytest

from payflow_lab.core.errors import BusClosed, Rejected
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import HookBus, HookFailure


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def test_no_partial_fan_out_when_one_queue_is_full(backend: str) -> None:
    """hookz queued the first hooks of an emission, then hit the full queue and failed the rest."""

    async def main() -> None:
        gate = anyio.Event()

        async def webhook(p: object) -> None:
            await gate.wait()

        async def audit(p: object) -> None:
            await gate.wait()

        bus = HookBus(timeout=None)
        bus.hook("payment.authorized", audit, queue_size=10, workers=1)  # has room: hookz would queue it
        bus.hook("payment.authorized", webhook, queue_size=2, workers=1)  # full after three emissions
        async with bus:
            for i in range(3):
                bus.emit("payment.authorized", i)
                await anyio.sleep(0.01)
            with pytest.raises(Rejected):
                bus.emit("payment.authorized", 3)
            stats = bus.stats()
            assert stats["audit"].admitted == stats["webhook"].admitted == 3
            assert stats["audit"].queued == 2  # payment 3 was not queued for audit either
            gate.set()

    run_virtual(main, backend=backend)


def test_timeouts_do_not_depend_on_the_handler_cooperating(backend: str) -> None:
    """hookz passed a context with a deadline; a handler that never looked at it ran for ever."""

    async def main() -> None:
        async def oblivious(p: object) -> None:
            await anyio.sleep(3600)  # never checks a deadline, a context, anything

        bus = HookBus(timeout=5.0)
        bus.hook("e", oblivious)
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(5.5)
            stats = bus.stats()["oblivious"]
            assert (stats.timed_out, stats.running) == (1, 0)

    run_virtual(main, backend=backend)


def test_close_has_a_deadline_even_for_a_stuck_hook(backend: str) -> None:
    """hookz's Close waited for every hook to return: one stuck hook, and shutdown never ended."""

    async def main() -> None:
        async def stuck(p: object) -> None:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(24 * 3600)

        bus = HookBus(timeout=5.0, cancel_grace=1.0)
        bus.hook("e", stuck)
        async with bus:
            bus.emit("e", 1)
            start = anyio.current_time()
            report = await bus.aclose(10)
            assert anyio.current_time() - start == pytest.approx(11.0)
            assert report.abandoned == 1 and not report.drained

    run_virtual(main, backend=backend)


def test_emit_racing_close_gets_a_clear_error_not_a_panic(backend: str) -> None:
    """hookz could panic (send on a closed channel) when Emit raced Close."""

    async def main() -> None:
        async def h(p: object) -> None:
            await anyio.sleep(0.5)

        bus = HookBus()
        bus.hook("e", h, workers=1)
        results: list[str] = []

        async def emit_forever() -> None:
            while True:
                try:
                    bus.emit("e", 1)
                except BusClosed:
                    results.append("closed")
                    return
                results.append("admitted")
                await anyio.sleep(0.01)

        async with bus:
            async with anyio.create_task_group() as tg:
                tg.start_soon(emit_forever)
                await anyio.sleep(0.105)
                report = await bus.aclose(0.2)
        admitted = results.count("admitted")
        assert results[-1] == "closed" and admitted > 0
        stats = bus.stats()["h"]
        assert stats.admitted == admitted == stats.completed + stats.cancelled  # every admitted item counted
        assert report.never_started > 0

    run_virtual(main, backend=backend)


def test_errors_are_kept_and_reported_not_thrown_away(backend: str) -> None:
    """hookz counted hook errors and panics, then discarded them: no message, no stack."""

    async def main() -> None:
        failures: list[HookFailure] = []

        async def webhook(p: object) -> None:
            raise ConnectionError("merchant endpoint refused the connection")

        bus = HookBus(on_error=failures.append)
        bus.hook("e", webhook)
        async with bus:
            bus.emit("e", 1)
            await anyio.sleep(0.1)
        [failure] = failures
        assert failure.error_type == "ConnectionError"
        assert failure.message == "merchant endpoint refused the connection"
        assert 'raise ConnectionError("merchant endpoint refused the connection")' in failure.traceback
        assert bus.failures() == failures

    run_virtual(main, backend=backend)


def test_a_slow_subscriber_does_not_starve_another(backend: str) -> None:
    """hookz shared one queue and one worker pool: fast hooks waited behind a slow webhook."""

    async def main() -> None:
        audit_done: list[float] = []

        async def webhook(p: object) -> None:
            await anyio.sleep(4.9)  # just under the timeout: slow, not failing

        async def audit(p: object) -> None:
            await anyio.sleep(0.01)
            audit_done.append(anyio.current_time())

        bus = HookBus(timeout=5.0)
        bus.hook("e", webhook, workers=2, queue_size=100)
        bus.hook("e", audit, workers=2, queue_size=100)
        async with bus:
            start = anyio.current_time()
            for i in range(40):
                bus.emit("e", i)
            await anyio.sleep(1)
            assert len(audit_done) == 40 and max(audit_done) - start <= 0.25  # 40 x 10 ms on 2 workers
            assert bus.stats()["webhook"].queued == 38  # still far behind
            await bus.aclose(0)

    run_virtual(main, backend=backend)


def test_latency_is_measured_per_hook(backend: str) -> None:
    """hookz had no per-hook latency at all: you could not tell which hook was slow."""

    async def main() -> None:
        async def risk(p: object) -> None:
            await anyio.sleep(3.0)

        async def audit(p: object) -> None:
            await anyio.sleep(0.2)

        bus = HookBus(timeout=5.0)
        bus.hook("e", risk, workers=5)
        bus.hook("e", audit, workers=5)
        async with bus:
            for i in range(5):
                bus.emit("e", i)
            await anyio.sleep(4)
        stats = bus.stats()
        assert stats["risk"].latency["p50_ms"] == pytest.approx(3000, rel=0.04)
        assert stats["audit"].latency["p99_ms"] == pytest.approx(200, rel=0.04)
        assert stats["risk"].latency["count"] == stats["audit"].latency["count"] == 5

    run_virtual(main, backend=backend)
