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
    a :class:`trio.abc.Clock` that jumps to the next deadline as soon as
    every task is blocked (what :class:`trio.testing.MockClock` does with
    ``autojump_threshold=0``), with trio's run batches in first-in,
    first-out order like asyncio's (trio otherwise shuffles them on purpose).

Both clocks land exactly on a timer's time and run exactly the timers due by
then, so a seed gives the same times, to the last bit, on both backends.

Which one is the default is measured, not assumed: ``payflow-lab bench``
runs the same simulation on both and the README records the figures (on this
project's 2-core reference machine the asyncio loop was about 1.5-2x faster).

Only sleeps, timeouts and task switches are virtual. Real I/O and threads
still take real time, so the engine never does either while in virtual time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import selectors
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = [
    "BACKENDS",
    "VirtualTimeLoop",
    "clock_of_running_loop",
    "in_virtual_time",
    "in_worker_thread",
    "loop_running_here",
    "run_virtual",
]

T = TypeVar("T")

#: The virtual-time backends, default first.
BACKENDS = ("asyncio", "trio")


class _VirtualSelector(selectors.BaseSelector):
    """A selector that polls real file descriptors but never blocks on a timeout: it advances the clock."""

    def __init__(self, loop_clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = loop_clock
        self._turns = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            # Nothing scheduled at all: only another thread can wake us, so wait for real.
            return self._real.select(None)
        # Real file descriptors (another thread's wake-up) take no virtual time, so looking at them
        # on every 64th turn is enough: every look is a system call, and a run takes hundreds of
        # thousands of turns. (Virtual time never waits on a thread: see the module docstring.)
        self._turns += 1
        if self._turns >= 64:
            self._turns = 0
            ready = self._real.select(0)
            if ready:
                return ready
        if timeout > 0:
            clock = self._clock
            due = clock.next_due()
            if due is not None and 0.0 < due - clock.now <= timeout + 1e-6:
                clock.now = due  # exactly the timer's time: "now + (due - now)" can miss it by a rounding step
            else:
                clock.now += timeout  # asyncio caps one wait at a day
        return []

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class _Clock:
    __slots__ = ("now", "next_due")

    def __init__(self) -> None:
        self.now = 0.0
        self.next_due: Callable[[], float | None] = lambda: None


class _OrderedTimerHandle(asyncio.TimerHandle):
    """A timer that, due at the same time as another, runs in the order the two were created (trio's order here)."""

    __slots__ = ("_serial",)

    def __init__(
        self,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: Any,
        serial: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._serial = serial

    def __lt__(self, other: _OrderedTimerHandle) -> bool:  # type: ignore[override]
        # Every timer on the loop is one of these (call_at below makes them all). heapq calls this for
        # every comparison, over a million times a run: plain attribute reads, no tuples, no isinstance.
        # _when is what asyncio's own TimerHandle compares (typeshed does not declare it).
        when, other_when = self._when, other._when  # type: ignore[attr-defined]
        return when < other_when or (when == other_when and self._serial < other._serial)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on a virtual clock that starts at 0 and jumps to the next timer."""

    def __init__(self) -> None:
        self._virtual = _Clock()
        super().__init__(selector=_VirtualSelector(self._virtual))
        self._virtual.next_due = self._next_due
        self._timers_created = 0

    def time(self) -> float:
        return self._virtual.now

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: Any = None,
    ) -> asyncio.TimerHandle:
        # asyncio's own call_at, with timers due at the same instant kept in creation order (asyncio's
        # heap would pop them in whatever order its shape gives).
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        self._timers_created += 1
        timer = _OrderedTimerHandle(when, callback, args, self, context, self._timers_created)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _next_due(self) -> float | None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return scheduled[0].when() if scheduled else None

    # asyncio runs every timer due before "now + clock resolution" (a nanosecond on Linux), so a
    # timer due a hair later than another would run early, at the other's time. One step of float
    # at the current time runs exactly the timers due by now, as trio does.
    @property
    def _clock_resolution(self) -> float:
        return math.ulp(self._virtual.now)

    @_clock_resolution.setter
    def _clock_resolution(self, value: float) -> None:
        pass  # asyncio's __init__ sets the real clock's; ours follows the virtual one


class _FirstInFirstOut(random.Random):
    """Stands in for trio's scheduling RNG: "reverse the batch" every time, which runs it first in, first out."""

    def random(self) -> float:
        return 0.0


_FIRST_IN_FIRST_OUT = _FirstInFirstOut(0)


def _first_in_first_out_trio() -> None:
    import trio._core._run as trio_run

    # trio runs each batch of ready tasks in a random order on purpose (half the time reversed),
    # so that code does not come to rely on one order. A simulation needs the opposite: the order
    # asyncio uses, tasks in the order they became ready. trio pops its batch from the end, so
    # "always reverse" is exactly that, and the same seed tells the same story on both backends.
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = False  # type: ignore[misc]
    trio_run._r = _FIRST_IN_FIRST_OUT
    # Deadlines due at the same instant expire in the order of their memory addresses (id() breaks
    # the tie in trio's heap); in creation order instead, as on the asyncio loop above.
    if getattr(trio_run.Deadlines.add, "__name__", "") != "_add_in_creation_order":
        created = itertools.count()

        def _add_in_creation_order(self: Any, deadline: float, cancel_scope: Any) -> None:
            heapq.heappush(self._heap, (deadline, next(created), cancel_scope))
            self._active += 1

        trio_run.Deadlines.add = _add_in_creation_order  # type: ignore[method-assign]


def _trio_clock() -> Any:
    import trio

    class VirtualTrioClock(trio.abc.Clock):
        """trio's public clock interface, jumping to the next deadline whenever every task is blocked.

        Like :class:`trio.testing.MockClock` with ``autojump_threshold=0``,
        except that it lands exactly on the deadline (the mock clock adds the
        difference, which can miss it by a rounding step, and asyncio's loop
        here does not).
        """

        def __init__(self) -> None:
            self.now = 0.0

        def start_clock(self) -> None:
            pass

        def current_time(self) -> float:
            return self.now

        def deadline_to_sleep_time(self, deadline: float) -> float:
            # Called only when no task is ready to run: the next thing to happen is that deadline.
            if deadline == math.inf:
                return math.inf  # nothing scheduled: only another thread can wake us, so wait for real
            if deadline > self.now:
                self.now = deadline
            return 0.0

    return VirtualTrioClock()


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio", seed: int = 0) -> T:
    """Run ``fn(*args)`` to completion in virtual time on ``backend``; return its result.

    Must be called from a thread with no running event loop (see
    :func:`payflow_lab.runner.run`, which takes care of that). ``seed`` is
    accepted for callers written when trio's schedule was seeded; the order
    is first in, first out now, the same on both backends whatever the seed.
    """
    if backend == "asyncio":
        return anyio.run(fn, *args, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})
    if backend == "trio":
        _first_in_first_out_trio()
        return anyio.run(fn, *args, backend="trio", backend_options={"clock": _trio_clock()})
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def clock_of_running_loop() -> Callable[[], float]:
    """The running event loop's clock, as a function: ``anyio.current_time`` looked up once.

    ``anyio.current_time()`` asks which backend is running (sniffio) on every
    call; a simulation reads the clock hundreds of thousands of times, always
    on the same loop, so it asks once. Call it from inside the loop.
    """
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        pass
    import trio

    trio.lowlevel.current_task()  # raises RuntimeError outside a trio run, as asyncio's lookup does
    return trio.current_time


def loop_running_here() -> bool:
    """Whether an asyncio or trio event loop is running in this thread (a Jupyter cell's, say)."""
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
            return True
        except RuntimeError:
            pass
    return False


def in_worker_thread(fn: Callable[[], T]) -> T:
    """Call ``fn`` in a fresh thread and return its result here (or raise its error here)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="payflow-virtual", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def in_virtual_time(fn: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio", seed: int = 0) -> T:
    """:func:`run_virtual` from anywhere, a Jupyter cell included.

    A cell already runs inside the kernel's event loop, where ``anyio.run`` refuses to start
    another; this runs ``fn`` in a short-lived worker thread with a loop of its own and waits
    for it. From a thread with no running loop it is the same as :func:`run_virtual`. This is
    the engine's one way of doing that: ``pf.run``, the durable runs and the lessons use it.
    """

    def go() -> T:
        return run_virtual(fn, *args, backend=backend, seed=seed)

    return in_worker_thread(go) if loop_running_here() else go()
