"""``payflow-lab bench``, group "hook bus": what one ``emit`` costs the critical path.

For 1, 5 and 25 subscribers, on asyncio and on trio, in real time, the cost of
handing one payload to every subscriber, measured five ways in the same run:

``floor``
    the same number of bare ``send_nowait`` calls on anyio memory object
    streams (one stream and one consumer task per subscriber): the least any
    hand-off to background workers can cost.
``HookBus.emit``
    this bus: all-or-nothing admission, bounded per-subscriber queues,
    counters. The target is at most 2x the floor for 5 subscribers on asyncio.
``one task per handler``
    ``task_group.start_soon(handler, payload)`` for each handler: the
    fire-and-forget of Phase 2 (unbounded, but it is what people write).
``pyee``
    ``AsyncIOEventEmitter.emit`` / ``TrioEventEmitter.emit``: a task per
    async handler, like the line above, through an event-emitter library.
``blinker``
    ``Signal.send`` to receivers that are the floor's ``send_nowait`` bound
    methods: the floor plus blinker's dispatch.

Method: a batch of emits runs back to back with no checkpoint in between (the
consumers cannot run, exactly as on a busy critical path), timed with
``time.perf_counter``; then the consumers drain it untimed. The garbage
collector runs once before a method's batches and is paused during each
timed loop. Each figure is the best of
several batches, since the noise of a shared machine only ever adds time.
pyee and blinker are optional: their rows are left out when one is not installed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

__all__ = ["SUBSCRIBER_COUNTS", "bench_emit", "measure_emit"]

Row = dict[str, Any]

SUBSCRIBER_COUNTS = (1, 5, 25)
METHODS = ("floor", "bus", "tasks", "pyee", "blinker")
_LABELS = {
    "floor": "floor: {n} bare send_nowait on memory object streams",
    "bus": "HookBus.emit",
    "tasks": "one task per handler (task group start_soon)",
    "pyee": "pyee {emitter}.emit",
    "blinker": "blinker Signal.send to send_nowait receivers",
}


class _Sink:
    """Counts deliveries and wakes the benchmark when a batch has been fully consumed."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = anyio.Event()

    def expect(self, n: int) -> None:
        self.count = 0
        self.target = n
        self.done = anyio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done.set()

    async def handler(self, payload: Any) -> None:
        self.hit()


async def _time_batches(emit: Callable[[int], Any], sink: _Sink, fanout: int, batch: int, repeats: int) -> float:
    """Best seconds per emit over ``repeats`` batches of ``batch`` emits, each drained before the next."""
    best = float("inf")
    gc.collect()
    for _ in range(repeats + 1):  # the first batch warms up and is not counted
        sink.expect(batch * fanout)
        gc.disable()
        try:
            started = time.perf_counter()
            for i in range(batch):
                emit(i)
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        with anyio.fail_after(60):
            await sink.done.wait()
        if _ > 0:
            best = min(best, elapsed / batch)
    return best


async def _floor(n: int, batch: int, repeats: int) -> float:
    sink = _Sink()
    async with anyio.create_task_group() as tg:
        sends = []
        for _ in range(n):
            send, receive = anyio.create_memory_object_stream[int](max_buffer_size=batch)
            sends.append(send)

            async def consume(receive: Any = receive) -> None:
                async with receive:
                    async for _item in receive:
                        sink.hit()

            tg.start_soon(consume)

        def emit(i: int) -> None:
            for send in sends:
                send.send_nowait(i)

        result = await _time_batches(emit, sink, n, batch, repeats)
        for send in sends:
            send.close()
    return result


async def _bus(n: int, batch: int, repeats: int) -> float:
    from payflow_lab.hooks.bus import HookBus

    sink = _Sink()
    bus = HookBus(queue_size=batch, workers=1)
    for k in range(n):
        bus.hook("payment.authorized", sink.handler, name=f"subscriber{k}")
    async with bus:
        result = await _time_batches(lambda i: bus.emit("payment.authorized", i), sink, n, batch, repeats)
    return result


async def _tasks(n: int, batch: int, repeats: int) -> float:
    sink = _Sink()
    handlers = [sink.handler] * n
    async with anyio.create_task_group() as tg:
        start_soon = tg.start_soon

        def emit(i: int) -> None:
            for handler in handlers:
                start_soon(handler, i)

        result = await _time_batches(emit, sink, n, batch, repeats)
    return result


async def _pyee(n: int, batch: int, repeats: int, backend: str) -> float | None:
    Emitter: Any  # a class, chosen by backend
    try:
        if backend == "asyncio":
            from pyee.asyncio import AsyncIOEventEmitter as Emitter
        else:
            from pyee.trio import TrioEventEmitter as Emitter
    except ImportError:
        return None
    sink = _Sink()

    def add_handlers(ee: Any) -> None:
        for _ in range(n):

            async def handler(payload: Any) -> None:  # pyee refuses the same function twice
                sink.hit()

            ee.add_listener("payment.authorized", handler)

    if backend == "asyncio":
        ee = Emitter()
        add_handlers(ee)
        return await _time_batches(lambda i: ee.emit("payment.authorized", i), sink, n, batch, repeats)
    async with Emitter() as ee:
        add_handlers(ee)
        return await _time_batches(lambda i: ee.emit("payment.authorized", i), sink, n, batch, repeats)


async def _blinker(n: int, batch: int, repeats: int) -> float | None:
    try:
        from blinker import Signal
    except ImportError:
        return None
    sink = _Sink()
    signal = Signal()
    async with anyio.create_task_group() as tg:
        sends = []
        for _ in range(n):
            send, receive = anyio.create_memory_object_stream[int](max_buffer_size=batch)
            sends.append(send)
            signal.connect(send.send_nowait, weak=False)

            async def consume(receive: Any = receive) -> None:
                async with receive:
                    async for _item in receive:
                        sink.hit()

            tg.start_soon(consume)
        result = await _time_batches(signal.send, sink, n, batch, repeats)
        for send in sends:
            send.close()
    return result


def measure_emit(
    backend: str, *, counts: tuple[int, ...] = SUBSCRIBER_COUNTS, batch: int = 1000, repeats: int = 5
) -> dict[int, dict[str, float | None]]:
    """Seconds per emit, by subscriber count and method, on ``backend`` in real time (one event loop)."""
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")

    async def main() -> dict[int, dict[str, float | None]]:
        results: dict[int, dict[str, float | None]] = {}
        for n in counts:
            runs: dict[str, Callable[[], Awaitable[float | None]]] = {
                "floor": partial(_floor, n, batch, repeats),
                "bus": partial(_bus, n, batch, repeats),
                "tasks": partial(_tasks, n, batch, repeats),
                "pyee": partial(_pyee, n, batch, repeats, backend),
                "blinker": partial(_blinker, n, batch, repeats),
            }
            results[n] = {method: await run() for method, run in runs.items()}
        return results

    return anyio.run(main, backend=backend)


def bench_emit(quick: bool) -> list[Row]:
    """The rows of the "hook bus" group of ``payflow-lab bench``."""
    batch, repeats = (300, 3) if quick else (1000, 7)
    rows: list[Row] = []
    headline: Row | None = None
    for backend in ("asyncio", "trio"):
        results = measure_emit(backend, batch=batch, repeats=repeats)
        for n, by_method in results.items():
            floor = by_method["floor"]
            assert floor is not None
            for method in METHODS:
                seconds = by_method[method]
                emitter = "AsyncIOEventEmitter" if backend == "asyncio" else "TrioEventEmitter"
                label = _LABELS[method].format(n=n, emitter=emitter)
                key = f"hooks.emit.{backend}.subs{n}.{method}"
                if seconds is None:  # the library is not installed: no row rather than a made-up one
                    continue
                ratio = round(seconds / floor, 2)
                name = f"{backend}, {n} subscriber{'s' if n > 1 else ''}: {label}"
                if method != "floor":
                    name += f" = {ratio:g}x floor"
                rows.append(
                    {
                        "name": name,
                        "key": key,
                        "value": round(seconds * 1e6, 3),
                        "unit": "µs/emit",
                        "ratio_to_floor": ratio,
                    }
                )
            if backend == "asyncio" and n == 5:
                ratio = round(by_method["bus"] / floor, 2)  # type: ignore[operator]
                headline = {
                    "name": "target: HookBus.emit to 5 subscribers on asyncio <= 2x the floor",
                    "key": "hooks.emit.target",
                    "value": ratio,
                    "unit": "x floor",
                    "target": 2.0,
                    "met": ratio <= 2.0,
                }
    if headline is not None:
        rows.insert(0, headline)
    return rows
