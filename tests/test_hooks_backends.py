"""The same bus on asyncio and trio, in real time (anyio's pytest plugin) and in virtual time.

Real-time tests assert outcomes and order, never durations: a busy CI
machine may be slow, but it cannot turn a timeout into a completion.
"""

from __future__ import annotations

import anyio
import pytest

from payflow_lab.core.errors import BusClosed, Rejected
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import HookBus


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.anyio
async def test_real_time_emit_runs_every_subscriber() -> None:
    got: dict[str, list[int]] = {"a": [], "b": []}
    all_done = anyio.Event()

    def handler_for(name: str):
        async def handler(payload: int) -> None:
            await anyio.sleep(0.001)
            got[name].append(payload)
            if len(got["a"]) == len(got["b"]) == 20:
                all_done.set()

        return handler

    bus = HookBus(timeout=5.0)
    bus.hook("e", handler_for("a"), name="a", workers=3)
    bus.hook("e", handler_for("b"), name="b", workers=1)
    async with bus:
        for i in range(20):
            assert bus.emit("e", i) == 2
        with anyio.fail_after(10):
            await all_done.wait()
        report = await bus.aclose(5)
    assert sorted(got["a"]) == sorted(got["b"]) == list(range(20))
    assert got["b"] == list(range(20))  # one worker: FIFO order
    assert report.drained
    assert all(s.completed == 20 and s.balanced for s in bus.stats().values())


@pytest.mark.anyio
async def test_real_time_timeout_and_shutdown_deadline() -> None:
    async def hang(payload: object) -> None:
        await anyio.sleep_forever()

    bus = HookBus(timeout=0.05)
    bus.hook("e", hang, workers=1)
    async with bus:
        bus.emit("e", 1)
        with anyio.fail_after(10):
            while bus.stats()["hang"].timed_out == 0:
                await anyio.sleep(0.01)
        bus.hook("e", hang, name="untimed", timeout=None, workers=1)
        bus.emit("e", 2)
        await anyio.sleep(0.01)
        with anyio.fail_after(10):
            report = await bus.aclose(0.05, cancel_grace=1)
    assert report.subscribers["untimed"].cancelled == 1 and report.abandoned == 0
    with pytest.raises(BusClosed):
        bus.emit("e", 3)


@pytest.mark.anyio
async def test_real_time_all_or_nothing() -> None:
    gate = anyio.Event()

    async def blocked(payload: object) -> None:
        await gate.wait()

    bus = HookBus(timeout=None)
    bus.hook("e", blocked, name="small", queue_size=1, workers=1)
    bus.hook("e", blocked, name="large", queue_size=100, workers=1)
    async with bus:
        admitted = 0
        with pytest.raises(Rejected):
            for i in range(10):
                bus.emit("e", i)
                admitted += 1
                await anyio.sleep(0.01)
        stats = bus.stats()
        assert stats["small"].admitted == stats["large"].admitted == admitted
        gate.set()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_virtual_time_makes_an_hour_of_hooks_instant_and_identical_on_both_backends(backend: str) -> None:
    async def main() -> dict:
        async def hour(payload: object) -> None:
            await anyio.sleep(3600)

        bus = HookBus(timeout=None)
        bus.hook("e", hour, workers=2)
        async with bus:
            for i in range(4):
                bus.emit("e", i)
            await anyio.sleep(2 * 3600 + 1)
        return bus.summary()

    summary = run_virtual(main, backend=backend)
    stats = summary["subscribers"]["hour"]
    assert stats["completed"] == 4 and stats["latency"]["p50_ms"] == 3_600_000.0
    assert summary["shutdown"]["drained"] is True
