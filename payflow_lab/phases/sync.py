"""Phase 1: the original synchronous pipeline.

The mistake: every side effect is awaited, one after another, on the critical
path, while the request holds a database connection. The customer waits about
13.5 s for work they do not need, and the pool pays for every one of those
seconds. On Black Friday, Little's law does the rest:

    connections in use = payments per second x seconds each payment holds one

Ten times the traffic needs ten times the connections; slow merchants make
every payment hold its connection longer; and because the analytics and audit
writes borrow a *second* connection while the first is still held, a full
pool cannot drain: every request waits for a connection that only another
waiting request could give back. That is the freeze.

Cured by: Phase 2 (take the side effects off the critical path), done
properly in Phase 4 (the hook bus).
"""

from __future__ import annotations

from typing import Any

import anyio

from payflow_lab.core.calibration import SYNC_WEBHOOK_ATTEMPTS, WEBHOOK_TIMEOUT_S
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import EndpointError
from payflow_lab.phases.base import Pipeline

__all__ = ["SynchronousPipeline"]


class SynchronousPipeline(Pipeline):
    """Authorize, then await webhook, analytics, audit, risk and fraud in turn, holding a DB connection."""

    number = 1
    name = "synchronous"
    title = "Phase 1: the synchronous pipeline"
    lesson = "every side effect awaited on the critical path while holding a DB connection"

    def __init__(self, world: Any) -> None:
        super().__init__(world)
        self.webhook_timeouts = 0
        self.webhook_retries = 0
        self._minute = -1
        self._minute_calls = 0
        self._minute_timeouts = 0

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():              # held until the very end
            await world.db_query(payment)                # INSERT the payment as pending
            await world.authorize(payment)               # the only step the customer needs
            await self.send_merchant_webhook(payment)    # up to 3 tries x 5 s
            await self.step("analytics", world.write_analytics, payment)  # borrows a 2nd connection
            await self.step("audit", world.write_audit_log, payment)      # borrows a 2nd connection
            await self.step("risk", world.update_risk_score, payment)
            await self.step("fraud", world.notify_fraud, payment)
            await world.db_query(payment)                # UPDATE status, COMMIT

    async def send_merchant_webhook(self, payment: Payment) -> None:
        """The original helper: 5 s timeout, immediate retry, log and carry on if all attempts fail."""
        recorder = self.recorder
        recorder.side_effect_started("webhook")
        started = self.world.clock()
        for attempt in range(1, SYNC_WEBHOOK_ATTEMPTS + 1):
            try:
                with anyio.fail_after(WEBHOOK_TIMEOUT_S):
                    await self.world.deliver_webhook(payment)
            except anyio.get_cancelled_exc_class():
                recorder.side_effect_finished("webhook", "dropped", reason="process stopped")
                raise
            except TimeoutError:
                self.webhook_timeouts += 1
                self._count_call(timed_out=True)
                reason = "timeout"
            except EndpointError:
                self._count_call(timed_out=False)
                reason = "endpoint error"
            else:
                self._count_call(timed_out=False)
                recorder.side_effect_finished("webhook", "delivered", latency=self.world.clock() - started)
                return
            if attempt < SYNC_WEBHOOK_ATTEMPTS:
                self.webhook_retries += 1
        recorder.side_effect_finished("webhook", "failed", reason=f"{reason} after {SYNC_WEBHOOK_ATTEMPTS} attempts")

    def _count_call(self, timed_out: bool) -> None:
        """Notice when timeouts stop being the odd slow merchant: 15% of a minute's calls (50 at least)."""
        minute = int(self.world.clock() // 60)
        if minute != self._minute:
            self._minute, self._minute_calls, self._minute_timeouts = minute, 0, 0
        self._minute_calls += 1
        self._minute_timeouts += timed_out
        if self._minute_calls >= 50 and self._minute_timeouts >= 0.15 * self._minute_calls:
            self.recorder.mark_once("webhook_timeouts", "merchant webhooks start timing out: "
                                    f"{self._minute_timeouts} of {self._minute_calls} calls this minute hit 5 s")

    async def step(self, kind: str, call: Any, payment: Payment) -> None:
        """Await one side effect, counting it. Errors propagate: the request dies with them."""
        recorder = self.recorder
        recorder.side_effect_started(kind)
        started = self.world.clock()
        try:
            await call(payment)
        except anyio.get_cancelled_exc_class():
            recorder.side_effect_finished(kind, "dropped", reason="process stopped")
            raise
        except Exception as exc:
            recorder.side_effect_finished(kind, "failed", reason=type(exc).__name__)
            raise
        recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)

    def summary(self) -> dict[str, Any]:
        return {
            "db_pool": self.world.pool.summary(),
            "webhook_timeouts": self.webhook_timeouts,
            "webhook_retries": self.webhook_retries,
        }
