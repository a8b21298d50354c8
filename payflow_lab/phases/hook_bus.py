"""Phase 4: the hook bus, the story's fix done properly.

The critical path is what the customer needs and nothing more: take a
database connection (with a checkout timeout, so a full pool fails a payment
instead of freezing it), record the payment, authorize it, record the result,
give the connection back, and emit ``payment.authorized``. ``emit`` returns at
once; it never waits for a handler.

Webhook, analytics, audit, risk and fraud are subscribers of that event, each
with its own bounded queue and its own workers (:mod:`payflow_lab.hooks`), and
the story's global 5-second timeout, enforced by cancellation. So:

* payment latency is the authorization time, whatever the merchants'
  endpoints do: a hanging webhook costs a webhook worker five seconds, never
  a customer;
* memory is bounded by the queue sizes: when a queue is full, the emission
  is refused (for every subscriber at once: no half-delivered payment) and
  counted as dropped with its reason, instead of piling up tasks;
* at shutdown the bus drains for a deadline, cancels the rest, and every side
  effect ends up delivered, failed (with a reason: timeout, endpoint error...)
  or dropped (rejected, cancelled, never started): none left pending.

The story's *global* timeout is a blunt tool, and the summary shows it: the
risk score (median 3 s, a long tail) loses a fifth to a quarter of its calls
to the 5 s limit even on a normal day (the log-normal says 22%; lesson 04's
afternoon measures 25%). The bus takes a ``timeout=`` per hook; which
value each side effect deserves is an exercise of the lesson.

Still missing (Phase 5): a webhook that failed is not retried, one bad
merchant can fill the webhook queue for everyone, and a dropped delivery is
gone for good: no dead-letter queue, no outbox.
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, ClassVar

from payflow_lab.core.calibration import DB_WRITES, WEBHOOK_TIMEOUT_S
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import Rejected
from payflow_lab.core.world import SIDE_EFFECT_KINDS, World
from payflow_lab.hooks import Handle, HookBus, HookFailure, Outcome, ShutdownReport
from payflow_lab.phases.base import Pipeline
from payflow_lab.phases.observation import Observation

__all__ = ["CAPACITY", "HookBusPipeline"]

#: The event the critical path emits.
EVENT = "payment.authorized"

#: (workers, queue slots) per subscriber at scale 1; both shrink with the scale knob.
#: Sized by Little's law for the Black Friday peak (about 24 payments/s at scale 1):
#: workers ~ 1.3-1.8 x (peak rate x mean handler time, at most the 5 s timeout),
#: and a queue of ten workers' worth to absorb bursts. Memory is bounded by the queues.
CAPACITY: dict[str, tuple[int, int]] = {
    "webhook": (200, 2_000),
    "analytics": (80, 800),
    "audit": (40, 400),
    "risk": (120, 1_200),
    "fraud": (80, 800),
}

#: Seconds the critical path waits for a database connection before failing the payment.
CHECKOUT_TIMEOUT_S = 2.0
#: Seconds an analytics or audit write waits for its own connection (it must not starve payments).
SIDE_EFFECT_CHECKOUT_TIMEOUT_S = 1.0
#: Seconds the bus gets at shutdown to drain its queues before it cancels what is left.
SHUTDOWN_DEADLINE_S = 2 * WEBHOOK_TIMEOUT_S

_DROP_REASONS = {"cancelled": "cancelled at the shutdown deadline",
                 "never_started": "never started: still queued at the shutdown deadline"}


class HookBusPipeline(Pipeline):
    """Authorize, emit ``payment.authorized``, return. Five subscribers do the rest on their own workers."""

    number = 4
    name = "hook_bus"
    title = "Phase 4: the hook bus"
    lesson = "bounded queues, worker pools, timeouts by cancellation, a shutdown deadline, isolated errors"
    #: The subscribers of ``EVENT``, their (workers, queue slots) at scale 1, and the bus's timeout on a handler.
    #: Phase 5 builds on this class and changes these three.
    hooked: ClassVar[dict[str, tuple[int, int]]] = CAPACITY
    handler_timeout_s: ClassVar[float] = WEBHOOK_TIMEOUT_S

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.bus = HookBus(timeout=self.handler_timeout_s, shutdown_deadline=SHUTDOWN_DEADLINE_S,
                           on_outcome=self._settled)
        self.handles: dict[str, Handle] = {}
        for kind, (workers, queue_size) in self.hooked.items():
            self.handles[kind] = self.bus.hook(
                EVENT, self._handler(kind), name=kind,
                workers=max(1, math.ceil(workers * world.scale)),
                queue_size=max(10, math.ceil(queue_size * world.scale)))

    def _handler(self, kind: str) -> Any:
        service = self.world.service(kind)
        tracked = self.tracked
        if kind in DB_WRITES:
            async def write(payment: Payment) -> None:
                await tracked(lambda: service(payment, checkout_timeout=SIDE_EFFECT_CHECKOUT_TIMEOUT_S))
            return write

        async def call(payment: Payment) -> None:
            await tracked(service, payment)
        return call

    def add_gauges(self) -> None:
        """The per-second gauges of this phase: each hook's queue."""
        for kind, handle in self.handles.items():
            self.recorder.add_gauge(f"queue_{kind}", handle.queue_depth)

    async def start(self, stack: AsyncExitStack) -> None:
        self.add_gauges()                       # before the first await: no sample goes without them
        await stack.enter_async_context(self.bus)

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection(timeout=CHECKOUT_TIMEOUT_S):
            await world.db_query(payment)       # INSERT the payment as pending
            await world.authorize(payment)      # the only step the customer needs
            await world.db_query(payment)       # UPDATE status, COMMIT
        recorder = self.recorder
        for kind in SIDE_EFFECT_KINDS:
            recorder.side_effect_started(kind)
        try:
            self.bus.emit(EVENT, payment)       # returns at once: queued for all five, or for none
        except Rejected as rejection:
            for kind, reason in rejection.reasons.items():
                recorder.side_effect_finished(kind, "dropped", reason=f"rejected: {reason}")
            recorder.mark_once("hook_rejected", f"hook queue full: {', '.join(rejection.blocked_by)} "
                                                "rejects new deliveries; side effects are being dropped")

    def _settled(self, outcome: Outcome) -> None:
        """Every admitted side effect ends here exactly once: book it with the run's recorder."""
        kind, status = outcome.subscriber, outcome.status
        if status == "completed":
            self.recorder.side_effect_finished(kind, "delivered", latency=self._latency(outcome))
        elif status == "timed_out":
            self.recorder.side_effect_finished(kind, "failed", reason=self._timeout_reason(kind))
        elif status == "failed":
            assert outcome.failure is not None
            self.recorder.side_effect_finished(kind, "failed", reason=self._failure_reason(outcome.failure))
        else:
            self.recorder.side_effect_finished(kind, "dropped", reason=_DROP_REASONS[status])

    def _latency(self, outcome: Outcome) -> float | None:
        return None

    def _timeout_reason(self, kind: str) -> str:
        return f"timeout ({self.handles[kind].timeout:g} s)"

    def _failure_reason(self, failure: HookFailure) -> str:
        return failure.error_type

    async def stop(self) -> None:
        report = await self.bus.aclose(SHUTDOWN_DEADLINE_S)
        self.recorder.event(self._shutdown_event(report))

    def _shutdown_event(self, report: ShutdownReport, *, also: str = "", sep: str = ",") -> str:
        what = (f"hook bus shut down: {report.completed} deliveries finished during the drain, "
                f"{report.cancelled} cancelled and {report.never_started} never started at the "
                f"{SHUTDOWN_DEADLINE_S:g} s deadline{also}")
        if report.abandoned:
            what += f"{sep} {report.abandoned} still running (their handlers ignore cancellation)"
        return what

    def summary(self) -> dict[str, Any]:
        return {
            "db_pool": self.world.pool.summary(),
            "hooks": self.bus.summary(),
        }

    def observe(self) -> Observation:
        return replace(super().observe(), bus=self.bus, handles=self.handles)
