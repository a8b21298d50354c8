"""Phase 2: fire-and-forget tasks, the quick fix written under pressure.

The fix for Phase 1 looks obvious: authorize, answer the customer, and start
one background task per side effect. Payments become fast (about the 150 ms
of the authorization). What the quick fix leaves out:

* **no bound**: one new task per side effect per payment, however many are
  already running;
* **no timeout**: a merchant endpoint that accepts the connection and never
  answers keeps its task alive for ever;
* **no coordination**: nobody waits for the tasks, counts them, or drains
  them; when the process stops, whatever is in flight is simply lost,
  audit-log writes included.

So on Black Friday, when endpoints start to hang, in-flight tasks grow at
arrival rate x share of calls that hang, and the process's memory grows with
them (Little's law with a latency of "for ever"). The summary measures it:
peak tasks, heap bytes per in-flight task, growth per simulated minute while
endpoints hang, and side effects lost at shutdown.

The tasks here go into an anyio task group, which holds a strong reference
to each one. Written with ``asyncio.create_task`` and no saved reference,
the same code has one more trap: see :mod:`payflow_lab.lab.traps`.

Cured by: Phase 4 (the hook bus: bounded queues, a fixed worker pool,
timeouts enforced by cancellation, a graceful shutdown with a deadline), then
Phase 5 (circuit breakers stop calling endpoints that hang).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc

from payflow_lab.core.domain import Payment
from payflow_lab.core.world import SIDE_EFFECT_KINDS
from payflow_lab.phases.base import Pipeline
from payflow_lab.phases.leaks import bytes_per_task, endpoints_hanging, growth_while_hanging, lose_pending

__all__ = ["FireAndForgetPipeline"]


class FireAndForgetPipeline(Pipeline):
    """Authorize on the critical path, then spawn one unbounded, untimed task per side effect."""

    number = 2
    name = "fire_and_forget"
    title = "Phase 2: fire-and-forget tasks"
    lesson = ("one unbounded, untimed background task per side effect: payments are fast, but hanging "
              "endpoints pile up tasks and memory, and work in flight is lost at shutdown")

    #: The background tasks, one group for the life of the process (opened by :meth:`start`).
    _tasks: anyio.abc.TaskGroup

    def __init__(self, world: Any) -> None:
        super().__init__(world)
        self.lost: dict[str, Any] = {"total": 0, "by_kind": {}}
        self.recorder.add_gauge("endpoints_hanging", lambda: endpoints_hanging(world.faults))

    async def start(self, stack: AsyncExitStack) -> None:
        self._tasks = await stack.enter_async_context(anyio.create_task_group())  # lives as long as the process

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)                 # INSERT the payment as pending
            await world.authorize(payment)
            await world.db_query(payment)                 # UPDATE status, COMMIT
        for kind in SIDE_EFFECT_KINDS:                    # the quick fix: fire, and forget
            self._tasks.start_soon(self.tracked, self.side_effect, kind, world.service(kind), payment)

    async def side_effect(self, kind: str, call: Callable[[Payment], Awaitable[None]], payment: Payment) -> None:
        """Run one side effect to the end, however long that takes. Errors are logged and forgotten."""
        recorder = self.recorder
        recorder.side_effect_started(kind)
        started = self.world.clock()
        try:
            await call(payment)                           # no timeout: a hanging endpoint hangs this task for ever
        except Exception as exc:
            recorder.side_effect_finished(kind, "failed", reason=type(exc).__name__)
        else:
            recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)

    async def stop(self) -> None:
        """The process stops: nothing drains the tasks, so everything in flight is lost."""
        self.lost = lost = lose_pending(self.recorder, "lost at shutdown")
        if lost["total"]:
            self.recorder.event(f"process stops with {lost['total']:,} side effect(s) in flight, all lost "
                                f"({lost['by_kind'].get('audit', 0):,} of them audit-log writes)")
        self.recorder.process_killed()
        self._tasks.cancel_scope.cancel()

    def summary(self) -> dict[str, Any]:
        series = self.recorder.series
        return {
            "fire_and_forget": {
                "peak_in_flight_tasks": self.recorder.peak_tasks,
                "bytes_per_in_flight_task": bytes_per_task(series),
                "growth_while_endpoints_hang": growth_while_hanging(series),
                "lost_at_shutdown": self.lost,
            },
        }
