"""The asyncio trap next to Phase 2: a task nobody references can be garbage-collected mid-flight.

This module is asyncio-specific on purpose (the rest of the engine is
anyio): it demonstrates a pitfall of ``asyncio.create_task``, which trio and
anyio task groups do not have, because a task group holds a strong reference
to every child until it finishes.

What is true, and shown here deterministically
==============================================

The asyncio event loop keeps only *weak* references to tasks. A task stays
alive because something else points at it: the loop's ready queue while it
is runnable, a timer while it sleeps (``asyncio.sleep`` schedules one), a
socket registered with the selector, or the future it awaits when *that*
future is reachable from somewhere. A task that awaits a future nobody else
can reach (an ``asyncio.Event`` or ``Queue`` that only the task itself
knows about, a connection object that was dropped) forms a reference cycle
with it. Drop the last outside reference to the task (``create_task(...)``
without keeping the result) and the next garbage collection frees the task
while it is still pending:

* a ``weakref`` to the task goes dead;
* the loop reports ``Task was destroyed but it is pending!`` through its
  exception handler (by default, the ``asyncio`` logger);
* the coroutine is closed with ``GeneratorExit``, not ``CancelledError``:
  its ``finally`` blocks run at whatever moment the collector happened to
  run, and any ``await`` in them fails.

:func:`demonstrate` runs exactly that, plus two controls (the same task
with a reference kept in a set, as the asyncio documentation advises; and an
unreferenced task that sleeps instead), each on a fresh event loop in a
worker thread, so it works inside Jupyter too.

What it is not
==============

A task that sleeps, or waits on I/O or on anything the rest of the program
still holds, is *not* collected: the timer or the holder keeps it alive.
That is why this trap cannot be reproduced by simply sleeping in a task, and
why it is rare in practice: the task that vanishes is one that was waiting
on something nobody could ever complete. The damage is what the vanishing
hides: no error where the task was created, cleanup running at a random
moment, and work that silently never happens. Keeping a reference (a set of
background tasks, each removed by ``add_done_callback``) or, better, a task
group makes the task's lifetime explicit, and Phase 4 goes further: it
bounds, times out and drains the background work.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from payflow_lab.core.vtime import in_worker_thread

__all__ = ["TrapResult", "demonstrate"]


@dataclass
class TrapResult:
    """What happened to one background task after its last reference was dropped and ``gc.collect()`` ran."""

    waits_on: str
    kept_reference: bool
    collected: bool
    loop_messages: list[str] = field(default_factory=list)
    cleanup_ran_with: str | None = None

    def describe(self) -> str:
        who = (f"waiting on {self.waits_on}, "
               + ("with a reference kept" if self.kept_reference else "created and not referenced"))
        if not self.collected:
            return f"task {who}: still alive and pending after gc.collect()"
        messages = "; ".join(self.loop_messages) or "no message"
        return (f"task {who}: garbage-collected while pending; loop said: {messages}; "
                f"its finally block ran with {self.cleanup_ran_with}")


async def _wait_for_a_signal_nobody_can_send(notes: dict[str, Any]) -> None:
    """A background job waiting on an Event that only this coroutine knows about."""
    signal = asyncio.Event()            # nothing outside this frame references it
    try:
        await signal.wait()
    except BaseException as exc:        # record how the coroutine was ended, then let it end
        notes["cleanup_ran_with"] = type(exc).__name__
        raise


async def _sleep_for_an_hour(notes: dict[str, Any]) -> None:
    """The same job, but sleeping: the loop's timer references it."""
    await asyncio.sleep(3600)


#: How many times to ask for a full collection before giving up (5 ms apart: five seconds at most).
_COLLECTION_TRIES = 1_000


async def _full_collection() -> None:
    """Return once a full (generation 2) garbage collection has *started and finished* since the call.

    ``gc.collect()`` returns at once, collecting nothing, while another thread
    is in the middle of a collection (a live simulation in the same notebook,
    say). Watching the collector's own callbacks tells when a full collection
    that began after our last reference was dropped has completed, whoever
    ran it; only then is the outcome settled.
    """
    seen: dict[str, bool] = {}

    def watch(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") == 2:
            if phase == "start":
                seen["started"] = True
            elif seen.get("started"):
                seen["finished"] = True

    gc.callbacks.append(watch)
    try:
        for _ in range(_COLLECTION_TRIES):
            gc.collect()
            await asyncio.sleep(0)
            if seen.get("finished"):
                return
            time.sleep(0.005)  # noqa: ASYNC251  another thread's collection was under way: let it finish
    finally:
        gc.callbacks.remove(watch)


_JOBS = {"an Event nobody else holds": _wait_for_a_signal_nobody_can_send, "asyncio.sleep": _sleep_for_an_hour}


async def _scenario(waits_on: str, keep_reference: bool) -> TrapResult:
    loop = asyncio.get_running_loop()
    messages: list[str] = []
    loop.set_exception_handler(lambda _loop, context: messages.append(context["message"]))
    notes: dict[str, Any] = {}
    background: set[asyncio.Task[None]] = set()

    task = asyncio.create_task(_JOBS[waits_on](notes))
    if keep_reference:
        background.add(task)
        task.add_done_callback(background.discard)
    alive = weakref.ref(task)
    del task                            # the fire-and-forget line: the result of create_task is dropped
    await asyncio.sleep(0)              # let it start and block on the Event
    await _full_collection()            # the collector runs (here on purpose; in production, whenever)
    survivor = alive()
    result = TrapResult(waits_on, keep_reference, survivor is None, messages, notes.get("cleanup_ran_with"))
    if survivor is not None:
        survivor.cancel()               # tidy up the control case
        try:
            await survivor
        except asyncio.CancelledError:
            pass
    return result


def demonstrate() -> tuple[TrapResult, TrapResult, TrapResult]:
    """Run the trap and two controls, each on a fresh asyncio loop (in a worker thread).

    Returns (the trap, the same task with a reference kept, an unreferenced
    task that sleeps instead):

    >>> trap, kept, sleeping = demonstrate()
    >>> trap.collected, kept.collected, sleeping.collected
    (True, False, False)
    """
    def target() -> tuple[TrapResult, TrapResult, TrapResult]:
        event, sleep = _JOBS
        return (asyncio.run(_scenario(event, False)), asyncio.run(_scenario(event, True)),
                asyncio.run(_scenario(sleep, False)))

    return in_worker_thread(target)


if __name__ == "__main__":  # pragma: no cover
    for outcome in demonstrate():
        print(outcome.describe())
