"""Phase 3: the channel pipeline, with hand-rolled coordination that leaks.

After Phase 2's task explosion, the team reaches for channels: one bounded
anyio memory object stream per side effect, a fixed pool of consumer tasks
on each, and the critical path only drops a job into each stream (it never
waits: when a stream is full, the side effect is refused and counted).
Memory is now bounded by the buffer sizes and the worker pools, whatever
the traffic.

Webhooks need a timeout, so each webhook worker hands the call to its own
long-lived *courier* task (one keep-alive connection each) together with a
fresh reply stream, and waits for the reply for at most 10 s (twice the
story's timeout, "to be safe"). That hand-rolled coordination is where it
leaks:

1. When the wait times out, the worker walks away without closing its end
   of the reply stream. The courier is still in the call (a hanging endpoint
   never returns), or finishes it late and then blocks for ever in
   ``send()`` on a reply stream nobody will read: the timeout was on the
   waiting side only, so it never cancelled anything.
2. The worker's next job goes to that same courier, and the worker blocks
   for ever handing it over.

Every call slower than the wait therefore takes a worker and its courier out
of service for good. On a normal afternoon no call is that slow and nothing
leaks, which is why this code passed review and ran for months; on Black
Friday, once merchant endpoints start to hang at 14:18, the pool dies within
a minute or two.
What follows is head-of-line blocking: every merchant's webhooks (the fast
enterprise endpoints too) queue behind the dead pool, the stream fills, and
new webhooks are refused at the door. At shutdown the stuck tasks never
finish, so the process waits out its whole grace period and is killed with
them still blocked; the summary counts them (leaked tasks) and what they
and the buffers held (side effects lost at shutdown).

The faulty lines are marked ``# LEAK:``. Closing the reply stream would
unblock the courier's ``send()`` (it would raise ``BrokenResourceError``),
but not a call that hangs: only cancellation ends that.

Cured by: Phase 4 (the hook bus: timeouts enforced by cancellation, a
graceful shutdown with a deadline, errors isolated per hook), and Phase 5
(per-merchant circuit breakers and priority lanes end the head-of-line
blocking).
"""

from __future__ import annotations

from collections import Counter, deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from payflow_lab.core.calibration import WEBHOOK_TIMEOUT_S
from payflow_lab.core.domain import Payment, Tier
from payflow_lab.core.errors import EndpointError
from payflow_lab.core.recorder import percentile
from payflow_lab.core.world import SIDE_EFFECT_KINDS
from payflow_lab.phases.base import Pipeline
from payflow_lab.phases.leaks import endpoints_hanging, lose_pending

__all__ = ["ChannelPipeline", "Job"]

#: Consumers per stream at scale 1: Black Friday's healthy load (about 90 busy) with headroom.
WORKERS_PER_STREAM = 150
#: Jobs each stream buffers at scale 1 before the critical path starts refusing side effects.
BUFFER_PER_STREAM = 2_000
#: Seconds the stopping process waits for its tasks before it is killed (a SIGTERM grace period).
SHUTDOWN_GRACE_S = 30.0
#: How long a webhook worker waits for its courier's reply: twice the story's 5 s, "to be safe".
#: No healthy call is that slow, so nothing leaks on a normal day; a hanging endpoint always is.
REPLY_WAIT_S = 2 * WEBHOOK_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Job:
    """One side effect of one payment, as it travels through a stream."""

    payment: Payment
    enqueued_at: float


Reply = tuple[str, str | None]  # (outcome, reason)


class ChannelPipeline(Pipeline):
    """Bounded streams and worker pools, a courier per webhook worker, a reply stream per call."""

    number = 3
    name = "channels"
    title = "Phase 3: the channel pipeline"
    lesson = ("bounded streams keep memory flat, but a reply stream abandoned on timeout leaks a task per slow "
              "call, until one slow merchant blocks every merchant's webhooks")

    #: Every worker and courier, one group for the life of the process (opened by :meth:`start`).
    _tasks: anyio.abc.TaskGroup

    def __init__(self, world: Any) -> None:
        super().__init__(world)
        self.workers = max(1, round(WORKERS_PER_STREAM * world.scale))
        self.buffer = max(1, round(BUFFER_PER_STREAM * world.scale))
        self.inboxes: dict[str, MemoryObjectSendStream[Job]] = {}
        self.refused: Counter[str] = Counter()          # side effects refused at the door: stream full
        self.abandoned = 0                              # couriers a worker stopped waiting for
        self.waits: dict[str, list[float]] = {tier.value: [] for tier in Tier}  # webhook: enqueued -> call starts
        self.calls = 0
        self.accepted: dict[str, deque[float]] = {k: deque(maxlen=self.buffer) for k in SIDE_EFFECT_KINDS}
        self.lost: dict[str, Any] = {"total": 0, "by_kind": {}}
        self.leaked: dict[str, Any] = {}
        self.shutdown: dict[str, Any] = {}
        self.oldest_at_stop = 0.0
        recorder = self.recorder
        recorder.add_gauge("endpoints_hanging", lambda: endpoints_hanging(world.faults))
        recorder.add_gauge("webhook_queue", lambda: self._queued("webhook"))
        recorder.add_gauge("webhook_oldest_queued_s", lambda: self._oldest_queued("webhook"))
        recorder.add_gauge("abandoned_couriers", lambda: self.abandoned)

    async def start(self, stack: AsyncExitStack) -> None:
        receivers: dict[str, MemoryObjectReceiveStream[Job]] = {}
        for kind in SIDE_EFFECT_KINDS:
            self.inboxes[kind], receivers[kind] = anyio.create_memory_object_stream[Job](self.buffer)
            stack.callback(receivers[kind].close)       # after the task group below has ended
            stack.callback(self.inboxes[kind].close)
        self._tasks = await stack.enter_async_context(anyio.create_task_group())
        for kind, inbox in receivers.items():
            for i in range(self.workers):
                name = f"channels.{kind}.worker{i}"
                worker = self.webhook_worker if kind == "webhook" else self.worker
                self._tasks.start_soon(self.tracked, worker, kind, inbox, name, name=name)

    # ------------------------------------------------------- the critical path
    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)                # INSERT the payment as pending
            await world.authorize(payment)
            await world.db_query(payment)                # UPDATE status, COMMIT
        job = Job(payment, world.clock())
        for kind, inbox in self.inboxes.items():
            self.recorder.side_effect_started(kind)
            try:
                inbox.send_nowait(job)                   # never wait on the critical path...
            except anyio.WouldBlock:                     # ...so a full stream refuses the side effect
                self.refused[kind] += 1
                self.recorder.side_effect_finished(kind, "dropped", reason="stream full")
                self.recorder.mark_once(f"{kind}_full", f"{kind} stream full: new {kind} jobs refused at the door")
            else:
                self.accepted[kind].append(job.enqueued_at)

    # ---------------------------------------------------------------- consumers
    async def worker(self, kind: str, inbox: MemoryObjectReceiveStream[Job], name: str) -> None:
        """Analytics, audit, risk, fraud: take a job, do it, take the next."""
        call = self.world.service(kind)
        async for job in inbox:
            started = self.world.clock()
            try:
                await call(job.payment)
            except Exception as exc:
                self.recorder.side_effect_finished(kind, "failed", reason=type(exc).__name__)
            else:
                self.recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)

    async def webhook_worker(self, kind: str, inbox: MemoryObjectReceiveStream[Job], name: str) -> None:
        """Take a webhook job, give it to this worker's courier, wait at most 10 s for the reply."""
        to_courier, courier_inbox = anyio.create_memory_object_stream[tuple[Job, MemoryObjectSendStream[Reply]]](0)
        self._tasks.start_soon(self.tracked, self.courier, courier_inbox, name=f"{name}.courier")
        with to_courier:                                 # when the worker ends, its courier's loop ends
            async for job in inbox:
                replies, reply = anyio.create_memory_object_stream[Reply](0)   # one reply stream per call
                await to_courier.send((job, replies))    # LEAK: blocks for ever once this courier is stuck
                sent = self.world.clock()
                result: Reply = ("failed", f"no reply within {REPLY_WAIT_S:g} s")
                with anyio.move_on_after(REPLY_WAIT_S) as waited:
                    result = await reply.receive()
                outcome, reason = result
                if waited.cancelled_caught:
                    self._abandon()                      # LEAK: walks away without reply.close();
                                                         # the courier's send() will wait for ever
                if outcome == "delivered":
                    self.recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - sent)
                else:
                    self.recorder.side_effect_finished(kind, "failed", reason=reason)

    async def courier(self, requests: MemoryObjectReceiveStream[tuple[Job, MemoryObjectSendStream[Reply]]]) -> None:
        """Make each webhook call and send the outcome back on the call's reply stream."""
        with requests:
            async for job, replies in requests:
                self._call_starts(job)
                try:
                    await self.world.deliver_webhook(job.payment)   # no timeout here: the worker's doesn't cancel it
                    result: Reply = ("delivered", None)
                except EndpointError as exc:
                    result = ("failed", str(exc))
                await replies.send(result)               # LEAK: nobody receives it if the worker gave up

    # ----------------------------------------------------------------- shutdown
    async def stop(self) -> None:
        """Close the streams, wait for the tasks to finish, get killed after the grace period."""
        recorder, clock = self.recorder, self.world.clock
        for inbox in self.inboxes.values():
            inbox.close()                                # no more work: workers drain the buffers, then end
        began = clock()
        self.oldest_at_stop = self._oldest_queued("webhook")
        with anyio.move_on_after(SHUTDOWN_GRACE_S):      # then the orchestrator kills the process
            while recorder.tasks_in_flight:              # the payment requests are all over by now
                await anyio.sleep(0.5)
        self.shutdown = {"grace_s": SHUTDOWN_GRACE_S, "waited_s": round(clock() - began, 3),
                         "finished_in_grace": recorder.tasks_in_flight == 0}
        self.leaked = self._leaked_tasks()
        self.lost = lose_pending(recorder, "lost at shutdown")
        if self.leaked["at_end"]:
            recorder.event(f"shutdown hangs: killed after {SHUTDOWN_GRACE_S:g} s with {self.leaked['at_end']:,} "
                           f"tasks still blocked; {self.lost['total']:,} side effects lost")
        self.recorder.process_killed()
        self._tasks.cancel_scope.cancel()

    # --------------------------------------------------------------- measuring
    def _queued(self, kind: str) -> int:
        inbox = self.inboxes.get(kind)
        return inbox.statistics().current_buffer_used if inbox is not None else 0

    def _oldest_queued(self, kind: str) -> float:
        """Age of the oldest job waiting in ``kind``'s stream (the stream is FIFO: it holds the last accepted)."""
        queued = self._queued(kind)
        return round(self.world.clock() - self.accepted[kind][-queued], 3) if queued else 0.0

    def _abandon(self) -> None:
        self.abandoned += 1
        recorder = self.recorder
        if self.abandoned == 1:
            recorder.mark_once("courier_abandoned", "a webhook worker gives up after 10 s and leaves its courier "
                                                    "blocked for good: the first leaked task")
        if self.abandoned == self.workers:
            recorder.mark_once("couriers_all_stuck", f"all {self.workers} webhook couriers are stuck: every "
                                                     "merchant's webhooks now wait behind them")

    def _call_starts(self, job: Job) -> None:
        """Head-of-line delay: how long a webhook queued before a courier started its call."""
        self.calls += 1
        tier = self.world.merchants[job.payment.merchant_id].tier.value
        self.waits[tier].append(self.world.clock() - job.enqueued_at)

    def _leaked_tasks(self) -> dict[str, Any]:
        """The tasks still blocked now, counted twice: by :meth:`tracked` and by anyio's own task list."""
        names = sorted(t.name for t in anyio.get_running_tasks() if t.name and t.name.startswith("channels."))
        couriers = sum(name.endswith(".courier") for name in names)
        return {"at_end": self.recorder.tasks_in_flight, "running_per_anyio": len(names),
                "couriers": couriers, "workers": len(names) - couriers}

    def summary(self) -> dict[str, Any]:
        def delay(values: list[float]) -> dict[str, Any]:
            data = sorted(values)
            ms = (lambda q: round(percentile(data, q) * 1000, 3)) if data else (lambda q: None)
            return {"calls": len(data), "p50_ms": ms(50), "p99_ms": ms(99), "max_ms": ms(100)}

        webhooks = self.recorder.side_effects.get("webhook", Counter())["started"]
        queue = self.recorder.series["webhook_queue"]
        return {
            "channels": {
                "workers_per_stream": self.workers,
                "buffer_per_stream": self.buffer,
                "peak_webhook_queue": max((q for q in queue if q is not None), default=0),
                "refused_stream_full": dict(sorted(self.refused.items())),
                "abandoned_couriers": self.abandoned,
                "leaked_tasks": self.leaked,
                "head_of_line": {
                    "webhook_queue_delay": delay([w for ws in self.waits.values() for w in ws]),
                    "webhook_queue_delay_by_tier": {tier: delay(ws) for tier, ws in self.waits.items()},
                    "webhooks_never_called": webhooks - self.calls,
                    "webhook_oldest_queued_s_at_stop": self.oldest_at_stop,
                },
                "shutdown": self.shutdown,
                "lost_at_shutdown": self.lost,
            },
        }
