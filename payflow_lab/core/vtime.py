"""Virtual time: run anyio code where ``sleep(3600)`` takes no time at all.

anyio has no backend-neutral virtual clock, so this module provides one per
backend:

``asyncio``
    :class:`VirtualTimeLoop`, a selector event loop whose clock is a number
    that, when nothing is ready to run, jumps to the next timer's time
    instead of waiting for it. Written by hand
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
import contextvars
import heapq
import itertools
import math
import random
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
    "sleep_of_running_loop",
]

T = TypeVar("T")

#: The virtual-time backends, default first.
BACKENDS = ("asyncio", "trio")


def _new_handle(
    cls: type[asyncio.Handle], callback: Callable[..., Any], args: tuple[Any, ...], loop: Any, context: Any
) -> Any:
    """A handle with the fields asyncio's ``Handle.__init__`` sets, set directly.

    asyncio's constructor calls the loop's ``get_debug()`` for every handle (a
    run makes over a million); the virtual loop reads its debug flag where it
    makes a handle, and in debug mode builds them the usual way, with their
    source tracebacks. ``tests/test_engine_kernel.py`` checks that these
    handles carry every field asyncio's own do.
    """
    handle: Any = cls.__new__(cls)
    handle._context = context if context is not None else contextvars.copy_context()
    handle._loop = loop
    handle._callback = callback
    handle._args = args
    handle._cancelled = False
    handle._repr = None
    handle._source_traceback = None
    return handle


#: A virtual loop looks at real file descriptors (another thread's wake-up) once every this many turns.
_TURNS_PER_LOOK = 64


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on a virtual clock that starts at 0 and jumps to the next timer.

    One turn of the loop (``_run_once``, asyncio's name) is asyncio's own, in
    the same order, with three differences that make it virtual and cheap:

    * when nothing is ready to run, the clock jumps to the next timer instead
      of the selector waiting for it;
    * timers sit in a heap of ``(when, serial, handle)`` tuples, so that timers
      due at the same instant run in the order they were created (asyncio's
      heap of handles would pop them in whatever order its shape gives) and
      the heap compares tuples in C, not handles in Python (a run makes
      millions of comparisons);
    * real file descriptors take no virtual time, so the loop looks at them
      only every :data:`_TURNS_PER_LOOK` turns (every look is a system call,
      and a run takes hundreds of thousands of turns). Virtual time never
      waits on a thread (see the module docstring); a thread's
      ``call_soon_threadsafe`` still gets its callback into the next turn.

    It also builds its handles without asyncio's constructor (see
    :func:`_new_handle`) and runs them without ``Handle._run``'s extra frame;
    a callback that raises still goes to the loop's exception handler.
    Written by hand: asyncio's loop has no hook for its clock or its timer
    heap, and no maintained library offers a virtual-time asyncio loop for a
    whole run (asyncio's test utilities mock the clock for single tests).
    """

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._timers_created = 0
        self._timers_cancelled = 0
        self._turns = 0

    def time(self) -> float:
        return self._now

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: Any = None,
    ) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self._debug:  # type: ignore[attr-defined]
            timer = asyncio.TimerHandle(when, callback, args, self, context)
        else:
            timer = _new_handle(asyncio.TimerHandle, callback, args, self, context)
            timer._when = when
        self._timers_created += 1
        heapq.heappush(self._timers, (when, self._timers_created, timer))
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        if self._debug:  # type: ignore[attr-defined]
            return super().call_soon(callback, *args, context=context)
        self._check_closed()  # type: ignore[attr-defined]
        handle: asyncio.Handle = _new_handle(asyncio.Handle, callback, args, self, context)
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if handle._scheduled:  # type: ignore[attr-defined]
            self._timers_cancelled += 1

    def _run_once(self) -> None:
        timers, ready = self._timers, self._ready  # type: ignore[attr-defined]
        # Cancelled timers leave the heap as asyncio's do: all at once when they are more than
        # half of it, otherwise as they reach its head.
        if len(timers) > 100 and 2 * self._timers_cancelled > len(timers):
            kept = []
            for entry in timers:
                if entry[2]._cancelled:
                    entry[2]._scheduled = False  # type: ignore[attr-defined]
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._timers = timers = kept
            self._timers_cancelled = 0
        else:
            while timers and timers[0][2]._cancelled:
                self._timers_cancelled -= 1
                heapq.heappop(timers)[2]._scheduled = False  # type: ignore[attr-defined]

        if ready or self._stopping or timers:  # type: ignore[attr-defined]
            if not (ready or self._stopping) and timers[0][0] > self._now:  # type: ignore[attr-defined]
                self._now = timers[0][0]  # exactly the timer's time: no "now + delay" rounding
            self._turns += 1
            if self._turns >= _TURNS_PER_LOOK:
                self._turns = 0
                self._process_events(self._selector.select(0))  # type: ignore[attr-defined]
        else:
            # Nothing scheduled at all: only another thread can wake us, so wait for real.
            self._process_events(self._selector.select(None))  # type: ignore[attr-defined]

        now = self._now
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            timer._scheduled = False  # type: ignore[attr-defined]
            ready.append(timer)

        # Run what is ready now, not what these callbacks make ready: that waits for the next turn.
        # (Handle._run, written out: a run calls over a million callbacks.)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            try:
                handle._context.run(handle._callback, *handle._args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.call_exception_handler(
                    {"message": f"Exception in callback {handle._callback!r}", "exception": exc, "handle": handle}
                )

    def close(self) -> None:
        super().close()
        self._timers.clear()


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


def sleep_of_running_loop() -> Callable[[float], Awaitable[None]]:
    """The running event loop's own sleep, as a function: what ``anyio.sleep`` awaits, looked up once.

    ``anyio.sleep(delay)`` asks which backend is running (sniffio) and then
    awaits that backend's sleep: ``asyncio.sleep(delay)`` or
    ``trio.sleep(delay)``, cancelled by anyio's cancel scopes like any other
    await. A simulation's services sleep hundreds of thousands of times a
    run, always on the same loop, so the runner asks once and hands the world
    this function (see :class:`~payflow_lab.core.world.World`). Call it from
    inside the loop.
    """
    try:
        asyncio.get_running_loop()
        return asyncio.sleep
    except RuntimeError:
        pass
    import trio

    trio.lowlevel.current_task()  # raises RuntimeError outside a trio run, as asyncio's lookup does
    return trio.sleep


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
