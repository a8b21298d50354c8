"""Virtual time: run anyio code where ``sleep(3600)`` takes no time at all.

anyio has no backend-neutral virtual clock, so this module provides one per
backend:

``asyncio``
    :class:`VirtualTimeLoop`, a selector event loop whose clock is a number
    and whose selector, when asked to wait ``timeout`` seconds with nothing
    ready, moves that number forward instead of waiting. Written by hand
    because neither asyncio nor any maintained library offers it (asyncio's
    test utilities mock the clock for single tests, not for a whole run).
    Task order is asyncio's own FIFO, so runs are deterministic.
``trio``
    trio's :class:`trio.testing.MockClock` with ``autojump_threshold=0``
    (jump to the next deadline as soon as every task is blocked), plus trio's
    own deterministic-scheduling switch seeded from the run's seed, because
    trio otherwise shuffles its run batches on purpose.

Which one is the default is measured, not assumed: ``payflow-lab bench``
runs the same simulation on both and the README records the figures (on this
project's 2-core reference machine the asyncio loop was about 1.5-2x faster).

Only sleeps, timeouts and task switches are virtual. Real I/O and threads
still take real time, so the engine never does either while in virtual time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["BACKENDS", "VirtualTimeLoop", "in_virtual_time", "run_virtual"]

T = TypeVar("T")

#: The virtual-time backends, default first.
BACKENDS = ("asyncio", "trio")


class _VirtualSelector(selectors.BaseSelector):
    """A selector that polls real file descriptors but never blocks on a timeout: it advances the clock."""

    def __init__(self, loop_clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = loop_clock
        self._skipped = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout == 0:
            # Callbacks are ready at this instant. Real file descriptors (a thread's wake-up) take no
            # virtual time, so looking at them now and then is enough; every look is a system call.
            self._skipped += 1
            if self._skipped < 64:
                return []
        self._skipped = 0
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing scheduled at all: only another thread can wake us, so wait for real.
            return self._real.select(None)
        self._clock.now += timeout
        return []

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on a virtual clock that starts at 0 and jumps to the next timer."""

    def __init__(self) -> None:
        self._virtual = _Clock()
        super().__init__(selector=_VirtualSelector(self._virtual))

    def time(self) -> float:
        return self._virtual.now


def _deterministic_trio(seed: int) -> None:
    import trio._core._run as trio_run

    # trio's documented hook for Hypothesis: sort each run batch by task creation order,
    # then shuffle it with trio's module RNG, which we seed. Same seed, same schedule.
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(seed)


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio", seed: int = 0) -> T:
    """Run ``fn(*args)`` to completion in virtual time on ``backend``; return its result.

    Must be called from a thread with no running event loop (see
    :func:`payflow_lab.runner.run`, which takes care of that).
    """
    if backend == "asyncio":
        return anyio.run(fn, *args, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})
    if backend == "trio":
        from trio.testing import MockClock

        _deterministic_trio(seed)
        return anyio.run(fn, *args, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def in_virtual_time(fn: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio", seed: int = 0) -> T:
    """:func:`run_virtual` from anywhere, a Jupyter cell included.

    A cell already runs inside the kernel's event loop, where ``anyio.run`` refuses to start
    another; this runs ``fn`` in a short-lived worker thread with a loop of its own and waits
    for it. From a thread with no running loop it is the same as :func:`run_virtual`.
    """
    from concurrent.futures import ThreadPoolExecutor

    try:
        import asyncio

        asyncio.get_running_loop()
    except RuntimeError:
        return run_virtual(fn, *args, backend=backend, seed=seed)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="payflow-virtual") as pool:
        return pool.submit(run_virtual, fn, *args, backend=backend, seed=seed).result()
