"""One subscriber: its own bounded queue, its own workers, its own counters.

This is where the bus isolates subscribers from one another. hookz put every
hook of every event into *one* queue served by *one* worker pool, so a
webhook handler stuck for five seconds held a worker that audit and analytics
were waiting for: one slow subscriber starved the rest. Here each subscriber
owns

* a bounded FIFO queue (a :class:`collections.deque` with a capacity check),
* ``workers`` tasks that take deliveries from that queue and nothing else,
* its timeout, enforced by an anyio cancel scope around each handler call,
* its counters and latency histogram.

Why a hand-written queue rather than an anyio memory object stream? Admission
must be all-or-nothing across *several* queues: the bus has to know that every
subscriber has room before it puts anything anywhere. A stream cannot answer
"would this fit?" without ``statistics()``, which builds an object per call,
and cannot be rolled back once ``send_nowait`` succeeded. A deque plus a
capacity is two integer comparisons, which is what keeps ``emit`` as cheap as
the bare ``send_nowait`` calls it replaces (see ``payflow-lab bench``).

Idle workers wait on an :class:`anyio.Event` each ("parked"); ``emit`` wakes
one per delivery, only when one is parked, so a busy subscriber costs an
append and nothing more.
"""

from __future__ import annotations

import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from payflow_lab.hooks.latency import LatencyHistogram
from payflow_lab.hooks.overflow import Delivery, OverflowPolicy, Spill
from payflow_lab.hooks.stats import HookFailure, Outcome, OutcomeStatus, SubscriberStats

__all__ = ["BusSide", "Handler", "Subscriber"]

#: A hook handler: an async function of one argument, the emitted payload.
Handler = Callable[[Any], Awaitable[Any]]


class BusSide(Protocol):
    """What a subscriber tells its bus. :class:`~.bus.HookBus` implements it; this module never imports the bus."""

    def settled(self, outcome: Outcome) -> None:
        """A delivery ended, however it ended."""

    def handler_failed(self, failure: HookFailure) -> None:
        """A handler raised (or timed out): the bus keeps the failure for its report."""

    def worker_exited(self) -> None:
        """One of the subscriber's workers has ended (the bus waits for them all when it closes)."""


class Subscriber:
    """A handler hooked to one event, with its queue, workers and counters. Created by :meth:`HookBus.hook`."""

    __slots__ = (
        "bus",
        "event",
        "handler",
        "name",
        "capacity",
        "workers",
        "timeout",
        "overflow",
        "queue",
        "parked",
        "space_waiters",
        "running",
        "draining",
        "state",
        "admitted",
        "completed",
        "failed",
        "timed_out",
        "cancelled",
        "never_started",
        "rejected",
        "spilled",
        "rejected_reasons",
        "failures_by_type",
        "recent_failures",
        "latency",
    )

    def __init__(
        self,
        bus: BusSide,
        event: str,
        handler: Handler,
        *,
        name: str,
        queue_size: int,
        workers: int,
        timeout: float | None,
        overflow: OverflowPolicy,
        failure_history: int,
    ) -> None:
        self.bus = bus
        self.event = event
        self.handler = handler
        self.name = name
        self.capacity = queue_size
        self.workers = workers
        self.timeout = timeout
        self.overflow = overflow
        self.queue: deque[Any] = deque()
        self.parked: list[anyio.Event] = []  # idle workers, each waiting for a delivery
        self.space_waiters: list[anyio.Event] = []  # emit_wait() callers waiting for room
        self.running = 0
        self.draining = False
        self.state = "idle"
        self.admitted = self.completed = self.failed = self.timed_out = 0
        self.cancelled = self.never_started = self.rejected = self.spilled = 0
        self.rejected_reasons: Counter[str] = Counter()
        self.failures_by_type: Counter[str] = Counter()
        self.recent_failures: deque[HookFailure] = deque(maxlen=failure_history)
        self.latency = LatencyHistogram()

    # ---------------------------------------------------------------- workers
    async def work(self) -> None:
        """One worker: take the next delivery, run it, repeat; leave when draining and the queue is empty."""
        queue = self.queue
        cancelled_exc = anyio.get_cancelled_exc_class()
        try:
            while True:
                if queue:
                    payload = queue.popleft()
                    if self.space_waiters:
                        self.wake_space_waiters()
                    await self._deliver(payload, cancelled_exc)
                    # A handler that never awaits would let this loop run the whole
                    # queue without yielding: give the other tasks a turn per delivery.
                    await anyio.lowlevel.checkpoint()
                elif self.draining:
                    return
                else:
                    parked = anyio.Event()
                    self.parked.append(parked)
                    try:
                        await parked.wait()
                    finally:
                        if not parked.is_set():  # cancelled while idle: nobody may wake us any more
                            self.parked.remove(parked)
        finally:
            self.bus.worker_exited()

    async def _deliver(self, payload: Any, cancelled_exc: type[BaseException]) -> None:
        """Run the handler once under the subscriber's timeout, and count how it ended."""
        self.running += 1  # no checkpoint since popleft(): the delivery is never invisible
        started = anyio.current_time()
        status: OutcomeStatus = "failed"
        failure: HookFailure | None = None
        try:
            with anyio.move_on_after(self.timeout) as scope:
                await self.handler(payload)
            # cancel_called as well: a handler that shielded itself and overran still timed out.
            status = "timed_out" if scope.cancelled_caught or scope.cancel_called else "completed"
        except cancelled_exc:
            status = "cancelled"  # the bus is shutting down and the deadline has passed
            raise
        except Exception as exc:
            failure = self._failure(exc)
        finally:
            self.running -= 1
            latency = anyio.current_time() - started
            if status == "completed":
                self.completed += 1
            elif status == "timed_out":
                self.timed_out += 1
            elif status == "cancelled":
                self.cancelled += 1
            else:
                self.failed += 1
            if status != "cancelled":
                self.latency.observe(latency)
            self.bus.settled(Outcome(self.name, self.event, payload, status, latency, failure))

    def _failure(self, exc: Exception, *, handler: bool = True) -> HookFailure:
        failure = HookFailure(
            subscriber=self.name,
            event=self.event,
            error_type=type(exc).__qualname__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            at=anyio.current_time(),
        )
        if handler:
            self.failures_by_type[failure.error_type] += 1
        self.recent_failures.append(failure)
        self.bus.handler_failed(failure)
        return failure

    # ------------------------------------------------------------- lifecycle
    def wake_space_waiters(self) -> None:
        waiters, self.space_waiters = self.space_waiters, []
        for event in waiters:
            event.set()

    def begin_drain(self) -> None:
        """Admit nothing more; workers finish the queue, then leave."""
        self.draining = True
        parked, self.parked = self.parked, []
        for event in parked:
            event.set()
        self.wake_space_waiters()

    def discard_queue(self) -> tuple[int, int]:
        """The shutdown deadline has passed: count what is still queued as never started.

        Returns ``(never_started, spilled)``: a :class:`~.overflow.Spill`
        subscriber hands its unstarted deliveries to its store, so that a
        durable outbox can deliver them after a restart.
        """
        items = list(self.queue)
        self.queue.clear()
        if not items:
            return 0, 0
        self.cancelled += len(items)
        self.never_started += len(items)
        spilled = 0
        if isinstance(self.overflow, Spill):
            try:
                self.overflow.store.spill([Delivery(self.event, self.name, p) for p in items])
                spilled = len(items)
            except Exception as exc:
                # Reported to on_error, never raised into the shutdown; the deliveries
                # stay counted as never started (and not as handler failures).
                self._failure(exc, handler=False)
        for payload in items:
            self.bus.settled(Outcome(self.name, self.event, payload, "never_started"))
        return len(items), spilled

    # --------------------------------------------------------------- reading
    def stats(self) -> SubscriberStats:
        return SubscriberStats(
            name=self.name,
            event=self.event,
            state=self.state,
            queue_size=self.capacity,
            workers=self.workers,
            timeout=self.timeout,
            overflow=self.overflow.describe(),
            queued=len(self.queue),
            running=self.running,
            admitted=self.admitted,
            completed=self.completed,
            failed=self.failed,
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            never_started=self.never_started,
            rejected=self.rejected,
            spilled=self.spilled,
            rejected_reasons=dict(sorted(self.rejected_reasons.items())),
            failures_by_type=dict(sorted(self.failures_by_type.items())),
            latency=self.latency.summary(),
            latency_buckets=self.latency.cumulative(),
        )
