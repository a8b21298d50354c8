"""Phase 5: production hardening, the story's list of production patterns, each one real.

The critical path is Phase 4's: authorize, record, emit. What changes is what
happens to the side effects, and above all to the merchant webhook:

* **a lane per tier** (:mod:`.delivery`): enterprise, premium and standard
  webhooks have their own workers and queues, so a backlog of standard-tier
  deliveries cannot delay an enterprise merchant;
* **a circuit breaker per merchant endpoint**: a failing endpoint stops
  costing a worker five seconds a call, and one failing merchant opens only
  its own breaker;
* **a token bucket per merchant** (rate and burst from the tier): a recovered
  endpoint gets its backlog at a pace it agreed to, not all at once;
* **retries** with capped exponential backoff and full jitter, paid for by
  each endpoint's **retry budget**, so a dead endpoint cannot start a storm;
* **deferral, then dead letters**: a webhook that cannot go out now waits in
  its merchant's backlog (never dropped) and goes out when the breaker's probe
  succeeds; one that waits too long, or runs out of retries, becomes a dead
  letter with its reason, which an operator can replay;
* **the global 5-second timeout on every call a hook makes**, enforced by
  cancellation;
* **graceful degradation**: webhooks have their own emission and their lanes
  spill into the backlog instead of refusing, so even if every webhook
  fails, payments, audit writes and the rest carry on untouched;
* **Prometheus metrics** for every hook and every part:
  ``payflow_lab.observe.registry_for(pipeline)`` reads them through
  :meth:`HardenedPipeline.observe`.

The global timeout, and the risk score
--------------------------------------
A single 5 s limit is a blunt tool: the risk score (median 3 s, a long tail)
loses a fifth to a quarter of its calls to it on a normal day, analytics and fraud
about one in twelve. Phase 5 keeps the 5 s limit on *every call* and gives
the internal side effects one more try after a timeout (after a short
jittered pause): two independent calls both slower than 5 s is rare (about
5% for risk, under 1% for the others). The price is visible too: the extra
calls are counted in the summary's ``timeouts.second_tries``. The
alternative, a longer timeout for risk alone, is an exercise of the lesson.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import anyio

from payflow_lab.core.calibration import DB_WRITES, WEBHOOK_TIMEOUT_S
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import GaveUp, PoolTimeout, Rejected
from payflow_lab.core.world import SIDE_EFFECT_KINDS, World
from payflow_lab.hooks import HookFailure, Outcome

# Phase 5 builds on Phase 4, and keeps its database and shutdown budgets.
from payflow_lab.phases.hook_bus import (
    CHECKOUT_TIMEOUT_S,
    SHUTDOWN_DEADLINE_S,
    SIDE_EFFECT_CHECKOUT_TIMEOUT_S,
    HookBusPipeline,
)
from payflow_lab.phases.observation import Observation
from payflow_lab.phases.webhook_lanes import WebhookDelivery

__all__ = ["CAPACITY", "HardenedPipeline", "INTERNAL_KINDS"]

EVENT = "payment.authorized"
#: The side effects that stay on the shared event (the webhook has its own lanes).
INTERNAL_KINDS = tuple(kind for kind in SIDE_EFFECT_KINDS if kind != "webhook")
#: (workers, queue slots) at scale 1, as in Phase 4; risk gets more workers for its second tries.
CAPACITY: dict[str, tuple[int, int]] = {
    "analytics": (80, 800),
    "audit": (40, 400),
    "risk": (160, 1_600),
    "fraud": (80, 800),
}
#: The story's global timeout, on every call a hook makes.
CALL_TIMEOUT_S = WEBHOOK_TIMEOUT_S
#: The pause before an internal side effect's second try: uniform in [0, this] seconds.
SECOND_TRY_JITTER_S = 0.2
#: The bus's timeout on one internal handler: two calls at 5 s each, plus the pause between them.
INTERNAL_ENVELOPE_S = 2 * CALL_TIMEOUT_S + 1.0


class HardenedPipeline(HookBusPipeline):
    """Authorize, emit, return; hardened side effects behind. See the module docstring.

    Built on Phase 4: the same bus, bookkeeping and shutdown, with the webhook
    taken off the shared event (its own lanes, :class:`WebhookDelivery`) and
    the internal side effects' handlers given a second try.
    """

    number = 5
    name = "hardened"
    title = "Phase 5: production hardening"
    lesson = ("per-merchant breakers, rate limits, priority lanes, retries with jitter and a budget, "
              "dead letters, Prometheus metrics")
    hooked = CAPACITY
    handler_timeout_s = INTERNAL_ENVELOPE_S

    def __init__(self, world: World) -> None:
        #: Internal side effects that timed out once and got their second try, by kind.
        self.second_tries: Counter[str] = Counter()
        super().__init__(world)
        self.webhooks = WebhookDelivery(world, self.bus)
        self._pump_scope: anyio.CancelScope | None = None

    def _handler(self, kind: str) -> Any:
        """The handler of an internal side effect: a call under the global timeout, and one more if it times out.

        Written out rather than a :class:`~payflow_lab.resilience.RetryPolicy`:
        one immediate second try needs no backoff schedule, and tenacity's
        bookkeeping would cost more than the call on every payment. A call
        times out on its own clock (``CALL_TIMEOUT_S``) or waiting for a
        database connection (:class:`PoolTimeout`, for the writes); either
        earns the second try. ``move_on_after`` rather than ``fail_after``:
        the scope says whether it ran out, with no ``TimeoutError`` raised
        and caught, on tens of thousands of calls a day.
        """
        service = self.world.service(kind)
        options = {"checkout_timeout": SIDE_EFFECT_CHECKOUT_TIMEOUT_S} if kind in DB_WRITES else {}
        world = self.world

        async def call(payment: Payment) -> None:
            for attempt in (1, 2):
                if attempt == 2:
                    self.second_tries[kind] += 1
                    jitter = world.dice(payment, kind + "-jitter").uniform(0.0, SECOND_TRY_JITTER_S)
                    await anyio.sleep(jitter)  # don't retry in lockstep
                try:
                    with anyio.move_on_after(CALL_TIMEOUT_S) as scope:
                        await service(payment, **options)
                except PoolTimeout:
                    why = f"no database connection within {SIDE_EFFECT_CHECKOUT_TIMEOUT_S:g} s"
                else:
                    if not scope.cancelled_caught:
                        return
                    why = f"timeout ({CALL_TIMEOUT_S:g} s)"
            raise GaveUp(f"{why}, twice")

        async def handle(payment: Payment) -> None:
            await self.tracked(call, payment)
        return handle

    def add_gauges(self) -> None:
        """Phase 4's queue gauges, then the webhook path's: lanes, breakers, backlog, retries, dead letters."""
        super().add_gauges()
        gauges = self.recorder.add_gauge
        webhooks = self.webhooks
        for tier, lane in webhooks.lanes.items():
            gauges(f"lane_{tier.value}", lane.queue_depth)
        gauges("breakers_open", lambda: len(webhooks.not_closed))
        gauges("deferred_webhooks", lambda: webhooks.deferred)
        gauges("webhooks_delivered", lambda: webhooks.delivered)
        gauges("webhook_retries", lambda: webhooks.retries_made)
        gauges("dead_letters", lambda: webhooks.dead_letters.added)

    async def start(self, stack: AsyncExitStack) -> None:
        await super().start(stack)
        self._pump_scope = anyio.CancelScope()  # its own scope: cancelling it stops the pump, nothing else
        pumps = await stack.enter_async_context(anyio.create_task_group())
        pumps.start_soon(self._pump, self._pump_scope)

    async def _pump(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.webhooks.pump()

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection(timeout=CHECKOUT_TIMEOUT_S):
            await world.db_query(payment)       # INSERT the payment as pending
            await world.authorize(payment)      # the only step the customer needs
            await world.db_query(payment)       # UPDATE status, COMMIT
        recorder = self.recorder
        for kind in SIDE_EFFECT_KINDS:
            recorder.side_effect_started(kind)
        self.webhooks.submit(payment)           # its own lane; a full lane defers, never refuses
        try:
            self.bus.emit(EVENT, payment)       # analytics, audit, risk, fraud: all four, or none
        except Rejected as rejection:
            for kind, reason in rejection.reasons.items():
                recorder.side_effect_finished(kind, "dropped", reason=f"rejected: {reason}")
            recorder.mark_once("hook_rejected", f"hook queue full: {', '.join(rejection.blocked_by)} "
                                                "rejects new deliveries; side effects are being dropped")

    def _settled(self, outcome: Outcome) -> None:
        """Every admitted delivery ends here exactly once: webhooks to their path, the rest as in Phase 4."""
        if outcome.subscriber not in self.handles:
            self.webhooks.lane_outcome(outcome)
        else:
            super()._settled(outcome)

    def _latency(self, outcome: Outcome) -> float | None:
        return outcome.latency

    def _timeout_reason(self, kind: str) -> str:
        return f"timeout ({INTERNAL_ENVELOPE_S:g} s in all)"

    def _failure_reason(self, failure: HookFailure) -> str:
        return failure.message if failure.error_type == "GaveUp" else failure.error_type

    async def stop(self) -> None:
        if self._pump_scope is not None:
            self._pump_scope.cancel()
        self.webhooks.begin_close()
        report = await self.bus.aclose(SHUTDOWN_DEADLINE_S)
        deferred = self.webhooks.close()
        self.recorder.event(self._shutdown_event(report, also=f"; {deferred} deferred webhooks kept as dead letters",
                                                 sep=";"))

    def observe(self) -> Observation:
        return replace(super().observe(), second_tries=self.second_tries, webhooks=self.webhooks)

    async def replay_dead_letters(self, **options: Any) -> Any:
        """Replay dead-lettered webhooks (see :meth:`.delivery.WebhookDelivery.replay_dead_letters`)."""
        return await self.webhooks.replay_dead_letters(**options)

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            **self.webhooks.summary(),
            "timeouts": {
                "global_s": CALL_TIMEOUT_S,
                "rule": "every call a hook makes is cancelled after 5 s; internal side effects get one more "
                        "try after a timeout, webhooks up to 3 attempts (then the backlog or a dead letter)",
                "second_tries": {kind: self.second_tries[kind] for kind in INTERNAL_KINDS},
            },
        }
