"""Phase 5's webhook path: priority lanes, per-merchant breakers, rate limits, retries, a backlog, dead letters.

One delivery, outermost first (the layering of ``docs/resilience/index.md``)::

    lane of the merchant's tier        (its own workers: enterprise never waits behind standard)
      └─ token bucket of the merchant  (no token now: defer, don't wait)
          └─ retry, full jitter, paid for by the merchant's retry budget
              └─ circuit breaker of the merchant   (open: defer, don't call)
                  └─ the global 5 s timeout around the HTTP call

Whatever cannot go out *now* is **deferred**, never dropped: it waits in the
merchant's backlog, and a pump (once per simulated second) sends it back to
its lane when the breaker lets a probe through (one delivery, the oldest,
is the probe) and then, once the breaker has closed, as fast as the
merchant's token bucket allows, so a recovered endpoint is not flattened by
its own backlog. A delivery that waits longer than :data:`MAX_DEFER_S`, runs
out of retries, or finds the merchant's retry budget empty becomes a dead
letter with that reason; one still waiting when the process stops becomes a
dead letter with reason ``shutdown``. Every webhook therefore ends exactly
once: delivered, or dead-lettered with a reason.

The backlog is also the lanes' spill store: a full lane hands the delivery
to the backlog instead of refusing it, so an overloaded webhook path never
refuses (and so never costs) anything else.

Recovery is measured, not guessed: when the fault plan says a merchant's
endpoint is healthy again and its breaker had opened during the fault, a
stopwatch starts; it stops when the breaker is closed and the merchant's
backlog is empty. The simulation knows when the endpoint came back (a real
system only sees its first successful probe); that ground truth is read only
for this measurement, never to decide anything.

Written by hand because no maintained library offers a per-key deferral
backlog with breaker-driven probes for anyio; every part it composes is from
:mod:`payflow_lab.resilience` (and tenacity underneath the retries).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from payflow_lab.core.calibration import WEBHOOK_TIMEOUT_S
from payflow_lab.core.columns import Column
from payflow_lab.core.domain import Merchant, Payment, Tier
from payflow_lab.core.errors import BreakerOpen, EndpointError, RetryExhausted
from payflow_lab.core.faults import EndpointMode, FaultPlan
from payflow_lab.core.recorder import Recorder, hhmmss, percentile
from payflow_lab.core.world import World
from payflow_lab.hooks import Delivery, Handle, HookBus, LatencyHistogram, Outcome, Spill
from payflow_lab.resilience import (
    BREAKER_OPEN_TOO_LONG,
    RATE_LIMITED_TOO_LONG,
    SHUTDOWN,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    DeadLetter,
    InMemoryDeadLetters,
    KeyedCircuitBreaker,
    KeyedRateLimiter,
    Permit,
    ReplayReport,
    RetryBudget,
    RetryPolicy,
    Transition,
)

__all__ = [
    "BREAKERS",
    "DEFERRAL_CAUSES",
    "LANES",
    "MAX_DEFER_S",
    "WebhookDelivery",
    "WebhookJob",
    "lane_event",
]

#: (workers, queue slots) of each tier's lane at scale 1; both shrink with the scale knob.
#: Little's law at the Black Friday peak (about 24 payments/s at scale 1): enterprise 3.6/s x 0.4 s,
#: premium 7.2/s x 3.3 s, standard 13.2/s x 4.1 s busy workers; the rest is room for retries and for
#: delivering a recovered merchant's backlog (the spare workers set how fast it drains).
LANES: dict[Tier, tuple[int, int]] = {
    Tier.ENTERPRISE: (30, 300),
    Tier.PREMIUM: (100, 1_000),
    Tier.STANDARD: (200, 2_000),
}

#: Breakers tuned per tier. Busy endpoints (enterprise) decide on a short window and probe often;
#: quiet ones need a longer window to see enough calls, and "5 consecutive failures" catches an
#: endpoint that is dead but too quiet to fill any window. Standard endpoints answer in ~4 s, so a
#: few percent of healthy calls hit the 5 s timeout: their ratio rule waits for 20 calls. One probe
#: closes a breaker (Polly's default): more would keep a quiet merchant half-open until enough new
#: webhooks arrive. The price: an endpoint failing 90% of calls closes on one lucky probe in ten, and
#: what is released into it fails again; its retry budget keeps that from becoming a storm.
BREAKERS: dict[Tier, BreakerConfig] = {
    Tier.ENTERPRISE: BreakerConfig(failure_ratio=0.5, minimum_throughput=10, window_size=30.0,
                                   consecutive_failures=5, break_duration=10.0),
    Tier.PREMIUM: BreakerConfig(failure_ratio=0.5, minimum_throughput=10, window_size=60.0,
                                consecutive_failures=5, break_duration=30.0),
    Tier.STANDARD: BreakerConfig(failure_ratio=0.5, minimum_throughput=20, window_size=300.0,
                                 consecutive_failures=5, break_duration=60.0),
}

#: Attempts per delivery (the first included), and the backoff of the retries (full jitter).
MAX_ATTEMPTS = 3
BASE_DELAY_S = 0.5
MAX_DELAY_S = 4.0
#: Each merchant endpoint's retry budget: 1 retry earned per 5 deliveries, 5 at most, plus 1 every 20 s.
BUDGET = {"ratio": 0.2, "max_tokens": 5.0, "refill_per_s": 0.05}
#: The lane's own timeout on a whole delivery: every attempt at 5 s plus the longest backoffs, rounded up.
ENVELOPE_S = 20.0
#: A deferred webhook older than this (since the payment) goes to the dead letters.
MAX_DEFER_S = 20 * 60.0
#: How often (simulated seconds) the pump looks at the backlog.
PUMP_INTERVAL_S = 1.0
#: Deferred webhooks the backlog holds at scale 1 (it shrinks with the scale knob).
BACKLOG_CAPACITY = 100_000

#: Why a webhook waits in the backlog, and the dead-letter reason if it waits too long.
DEFERRAL_CAUSES: dict[str, str] = {
    "breaker_open": BREAKER_OPEN_TOO_LONG,
    "rate_limited": RATE_LIMITED_TOO_LONG,
    "lane_full": "lane_full_too_long",
}
BACKLOG_FULL = "backlog_full"
#: Transitions kept per merchant in the summary (the first and the last half of them).
TRANSITIONS_KEPT = 10
#: Dead letters kept in memory; older ones spill to a temporary file, so a long outage keeps memory flat.
DEAD_LETTERS_IN_MEMORY = 1_000
#: Merchants whose first breaker opening (or recovery) gets its own timeline event; then only round numbers.
NAMED_EVENTS = 3
_MILESTONES = (10, 50, 100, 500, 1000, 5000)


def lane_event(tier: Tier) -> str:
    """The hook-bus event of a tier's lane."""
    return f"webhook.{tier.value}"


@dataclass(slots=True, eq=False)
class WebhookJob:
    """One merchant webhook on its way: the payment, when it was emitted, what happened to it so far."""

    payment: Payment
    merchant: Merchant
    emitted_at: float
    attempts: int = 0
    deferrals: int = 0
    cause: str | None = None
    state: str = "lane"          # "lane" (queued or running), "deferred" (in the backlog) or "done"
    released: bool = False       # sent back to its lane by the pump and not yet settled there


@dataclass(slots=True)
class _Watch:
    """A stopwatch from "the endpoint is back" to "breaker closed and backlog delivered"."""

    merchant: Merchant
    back_at: float
    backlog: int
    closed_at: float | None = None
    delivered: int = 0


@dataclass(slots=True)
class _TierStats:
    emitted: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    first_attempt: int = 0
    after_retry: int = 0
    after_deferral: int = 0
    latencies: Column = field(default_factory=Column)
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    deferrals: Counter = field(default_factory=Counter)


def endpoint_healthy(faults: FaultPlan, merchant: Merchant) -> bool:
    """Whether the fault plan leaves ``merchant``'s endpoint as it is on a healthy day (measurement only)."""
    mode, extra_error = faults.endpoint_mode(merchant.id, merchant.tier)
    return (mode is EndpointMode.UP and extra_error <= merchant.endpoint.error_rate
            and faults.webhook_hang_rate == 0.0 and faults.webhook_latency_multiplier <= 1.0)


class WebhookDelivery:
    """The hardened webhook path of one run. Hooks its three lanes on ``bus``; see the module docstring.

    ``submit(payment)`` is all the critical path calls; :meth:`pump` runs in
    the background while the bus runs; after the bus has closed,
    :meth:`close` turns what is still deferred into ``shutdown`` dead letters.
    """

    def __init__(self, world: World, bus: HookBus) -> None:
        self.world = world
        self.recorder: Recorder = world.recorder
        self.bus = bus
        clock = world.clock
        self._keyed: dict[Tier, KeyedCircuitBreaker[str]] = {
            tier: KeyedCircuitBreaker(BREAKERS[tier], clock=clock, on_transition=self._transition) for tier in Tier}
        #: Every merchant's breaker, by merchant id, in order of first use (read by the metrics).
        self.breakers: dict[str, CircuitBreaker] = {}
        self._first_moves: dict[str, list[Transition]] = {}
        self.limits = KeyedRateLimiter.for_merchants(world.merchants, clock=clock)
        #: Each merchant endpoint's retry policy and budget, by merchant id (read by the metrics).
        self.retries: dict[str, RetryPolicy] = {}
        self.budgets: dict[str, RetryBudget] = {}
        self.dead_letters = InMemoryDeadLetters(clock=clock, on_add=self._dead_lettered,
                                                keep_in_memory=DEAD_LETTERS_IN_MEMORY)
        self.lanes: dict[Tier, Handle] = {}
        for tier, (workers, queue_size) in LANES.items():
            self.lanes[tier] = bus.hook(
                lane_event(tier), self._deliver, name=f"webhook_{tier.value}",
                workers=max(2, math.ceil(workers * world.scale)),
                queue_size=max(10, math.ceil(queue_size * world.scale)),
                timeout=ENVELOPE_S, overflow=Spill(self))
        self.backlog_capacity = max(1_000, math.ceil(BACKLOG_CAPACITY * world.scale))
        self._backlog: dict[str, deque[WebhookJob]] = {}
        self._wake_at: dict[str, float] = {}             # when the pump next looks at a merchant's backlog
        self._due: list[tuple[float, int, str]] = []     # a heap of (wake time, serial, merchant id)
        self._serial = 0
        self._released: Counter[str] = Counter()       # sent back to a lane by the pump, not yet settled
        self._awaiting_token: Counter[str] = Counter()  # ... and not yet started (no token taken yet)
        #: Webhooks in the backlog now, in all and by tier.
        self.deferred = 0
        self.deferred_by_tier: Counter[Tier] = Counter()
        self.peak_deferred = 0
        self.tiers = {tier: _TierStats() for tier in Tier}
        self.replayed = 0
        #: Retries made so far, all merchants together (each policy also counts its own).
        self.retries_made = 0
        self.retries_by_tier: Counter[Tier] = Counter()
        self.not_closed: dict[str, BreakerState] = {}
        #: Merchants whose breaker has opened at least once, in the order it first happened.
        self.opened: list[str] = []
        self._opened_set: set[str] = set()
        self._closing = False
        # Recovery measurement (ground truth from the fault plan, read only here).
        self._revision = -1
        self._healthy: dict[str, bool] = {}
        self._troubled: set[str] = set()
        self._watches: dict[str, _Watch] = {}
        self.recoveries: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- parts
    def breaker(self, merchant: Merchant) -> CircuitBreaker:
        breaker = self.breakers.get(merchant.id)
        if breaker is None:
            breaker = self.breakers[merchant.id] = self._keyed[merchant.tier][merchant.id]
        return breaker

    def retry_policy(self, merchant: Merchant) -> RetryPolicy:
        policy = self.retries.get(merchant.id)
        if policy is None:
            budget = self.budgets[merchant.id] = RetryBudget(clock=self.world.clock, **BUDGET)
            policy = self.retries[merchant.id] = RetryPolicy(
                max_attempts=MAX_ATTEMPTS, base_delay=BASE_DELAY_S, max_delay=MAX_DELAY_S, jitter="full",
                rng=self.world.rng, budget=budget, retry_on=(EndpointError, TimeoutError),
                on_retry=partial(self._retried, merchant.tier))
        return policy

    def _retried(self, tier: Tier, *_attempt_error_delay: object) -> None:
        self.retries_made += 1
        self.retries_by_tier[tier] += 1

    # ------------------------------------------------------- critical path
    def submit(self, payment: Payment) -> None:
        """Queue ``payment``'s webhook on its tier's lane (a full lane defers it). Never waits.

        If the merchant's breaker is open (its break not over), the webhook goes
        straight to the backlog: a trip through the lane would only end there.
        """
        merchant = self.world.merchants[payment.merchant_id]
        self.tiers[merchant.tier].emitted += 1
        job = WebhookJob(payment, merchant, self.world.clock())
        breaker = self.breakers.get(merchant.id)
        if breaker is not None and breaker.state is BreakerState.OPEN and breaker.allow() is None:
            self._defer(job, "breaker_open", breaker.retry_after)  # allow() said no, and counted it
            return
        self.bus.emit(lane_event(merchant.tier), job)

    # ------------------------------------------------------------ the lanes
    async def _deliver(self, job: WebhookJob) -> None:
        """A lane worker's handler: rate limit, then retries through the breaker; settle or defer."""
        merchant = job.merchant
        if job.released:
            self._awaiting_token[merchant.id] -= 1
        try:
            if not self.limits.try_acquire(merchant.id):
                self._defer(job, "rate_limited", self.limits.retry_after(merchant.id))
                return
            breaker = self.breaker(merchant)
            permit = breaker.allow()  # asked before the retry machinery: a shut door costs nothing
            if permit is None:
                self._defer(job, "breaker_open", breaker.retry_after if breaker.recorded_state is
                            BreakerState.OPEN else PUMP_INTERVAL_S)
                return
            held = [permit]
            try:
                await self.retry_policy(merchant).run(self._attempt, breaker, job, held,
                                                      jitter_rng=self.world.dice(job.payment, "retry"))
            except BreakerOpen as exc:
                self._defer(job, "breaker_open", PUMP_INTERVAL_S if exc.retry_after is None else exc.retry_after)
            except RetryExhausted as exc:
                error = exc.last_error
                self._dead_letter(job, exc.reason, f"{type(error).__name__}: {error}")
            else:
                self._delivered(job)
            finally:
                if held:  # never used (cancelled before the first call): give the slot back
                    held.pop().release()
        finally:
            if job.released:
                job.released = False
                self._released[merchant.id] -= 1
                if job.state == "deferred":
                    self._schedule(merchant.id, self.world.clock() + PUMP_INTERVAL_S)
                self._check_watch(merchant.id)

    async def _attempt(self, breaker: CircuitBreaker, job: WebhookJob, held: list[Permit] | None = None) -> None:
        """One HTTP call under the global 5 s timeout, on a breaker permit; its outcome goes back on the permit.

        The first attempt uses the permit the lane worker was given (``held``);
        a retry asks again, so a breaker that opened meanwhile stops it with
        :class:`BreakerOpen` (which the retry policy does not retry).
        """
        permit = held.pop() if held else breaker.acquire()
        job.attempts += 1
        try:
            with anyio.fail_after(WEBHOOK_TIMEOUT_S):
                await self.world.deliver_webhook(job.payment)
        except (EndpointError, TimeoutError):
            permit.record_failure()
            raise
        except BaseException:
            permit.release()  # cancelled: no verdict on the endpoint
            raise
        permit.record_success()

    def spill(self, deliveries: Sequence[Delivery]) -> None:
        """The lanes' spill store: a full lane defers instead of refusing (see :class:`~payflow_lab.hooks.Spill`)."""
        for delivery in deliveries:
            job: WebhookJob = delivery.payload
            if self._closing:  # never started before the shutdown deadline
                self._dead_letter(job, SHUTDOWN, "still queued in its lane when the process stopped")
            else:
                self._defer(job, "lane_full", 0.0)

    def lane_outcome(self, outcome: Outcome) -> None:
        """The bus's word on a lane delivery. Only the abnormal endings need anything from us."""
        job: WebhookJob = outcome.payload
        if job.state != "lane":
            return  # settled or deferred by the handler (or spilled to the backlog at the deadline)
        if outcome.status == "cancelled":
            self._dead_letter(job, SHUTDOWN, "cancelled at the shutdown deadline")
        elif outcome.status == "timed_out":
            self._dead_letter(job, "delivery_timeout", f"took longer than the lane's {ENVELOPE_S:g} s")
        elif outcome.status == "failed":
            failure = outcome.failure
            self._dead_letter(job, "handler_error", f"{failure.error_type}: {failure.message}" if failure else None)
        elif outcome.status == "never_started":
            self._dead_letter(job, SHUTDOWN, "still queued in its lane when the process stopped")

    # ------------------------------------------------------- settling a job
    def _delivered(self, job: WebhookJob) -> None:
        job.state = "done"
        latency = self.world.clock() - job.emitted_at
        stats = self.tiers[job.merchant.tier]
        stats.delivered += 1
        stats.latencies.append(latency)
        stats.histogram.observe(latency)
        if job.deferrals:
            stats.after_deferral += 1
        elif job.attempts > 1:
            stats.after_retry += 1
        else:
            stats.first_attempt += 1
        watch = self._watches.get(job.merchant.id)
        if watch is not None and job.emitted_at < watch.back_at:
            watch.delivered += 1
        self.recorder.side_effect_finished("webhook", "delivered", latency=latency)

    def _dead_letter(self, job: WebhookJob, reason: str, error: str | None) -> None:
        job.state = "done"
        self.dead_letters.add(job.merchant.id, job, reason, attempts=job.attempts, kind="webhook", error=error)

    def _dead_lettered(self, letter: DeadLetter) -> None:
        job: WebhookJob = letter.payload
        self.tiers[job.merchant.tier].dead_lettered += 1
        self.recorder.side_effect_finished("webhook", "dead_lettered", reason=letter.reason)
        if letter.reason == SHUTDOWN:
            # Cancelled deliveries end in an order anyio does not fix (a set of tasks): name no merchant.
            self.recorder.mark_once("dead_letter:shutdown", "webhooks still waiting at shutdown kept as dead letters")
        else:
            self.recorder.mark_once(f"dead_letter:{letter.reason}",
                                    f"first webhook dead-lettered for reason {letter.reason} "
                                    f"({job.merchant.id}, {job.merchant.tier} tier)")

    def _defer(self, job: WebhookJob, cause: str, wake_in: float) -> None:
        merchant_id = job.merchant.id
        job.cause = cause
        job.deferrals += 1
        self.tiers[job.merchant.tier].deferrals[cause] += 1
        if self.deferred >= self.backlog_capacity:
            self._dead_letter(job, BACKLOG_FULL, f"backlog full ({self.backlog_capacity} webhooks)")
            return
        job.state = "deferred"
        queue = self._backlog.get(merchant_id)
        if queue is None:
            queue = self._backlog[merchant_id] = deque()
        if job.released:
            queue.appendleft(job)  # it was the oldest: keep it first
        else:
            queue.append(job)
        self.deferred += 1
        self.deferred_by_tier[job.merchant.tier] += 1
        if self.deferred > self.peak_deferred:
            self.peak_deferred = self.deferred
        self._schedule(merchant_id, min(self.world.clock() + wake_in, queue[0].emitted_at + MAX_DEFER_S))

    # ------------------------------------------------------------- the pump
    async def pump(self) -> None:
        """Once per simulated second: send deferred webhooks back to their lanes, expire the stale ones."""
        while True:
            self.pump_once()
            await anyio.sleep(PUMP_INTERVAL_S)

    def pump_once(self) -> None:
        """One pass: every merchant whose wake-up time has come gets its backlog looked at."""
        now = self.world.clock()
        if self.world.faults.revision != self._revision:
            self._faults_changed(now)
        room = {tier: handle.queue_size - handle.queued for tier, handle in self.lanes.items()}
        due: list[str] = []
        while self._due and self._due[0][0] <= now:
            at, _, merchant_id = heapq.heappop(self._due)
            if self._wake_at.get(merchant_id) == at:  # otherwise a stale entry, superseded or forgotten
                del self._wake_at[merchant_id]
                due.append(merchant_id)
        for merchant_id in due:
            self._serve(merchant_id, now, room)
        for merchant_id in list(self._watches):
            self._check_watch(merchant_id)

    def _serve(self, merchant_id: str, now: float, room: dict[Tier, int]) -> None:
        """Expire the stale, then release what the breaker and the bucket allow; schedule the next look."""
        queue = self._backlog[merchant_id]
        while queue and now - queue[0].emitted_at >= MAX_DEFER_S:
            job = self._take(queue)
            self._dead_letter(job, DEFERRAL_CAUSES[job.cause or "lane_full"],
                              f"deferred for {MAX_DEFER_S / 60:g} minutes ({job.cause})")
        if not queue:
            self._forget(merchant_id)
            return
        merchant = queue[0].merchant
        breaker = self.breaker(merchant)
        state = breaker.state
        if state is BreakerState.OPEN:
            wake = now + breaker.retry_after
            count = 0
        elif state is BreakerState.HALF_OPEN:  # the break is over: probe with the oldest, one at a time
            wake = now + PUMP_INTERVAL_S
            count = 1 if self._released[merchant_id] == 0 else 0
        else:  # closed: as fast as the merchant's bucket allows
            wake = now + PUMP_INTERVAL_S
            count = math.floor(self.limits.bucket(merchant_id).tokens) - self._awaiting_token[merchant_id]
        count = min(count, len(queue), room[merchant.tier])
        if count > 0:
            room[merchant.tier] -= count
            event = lane_event(merchant.tier)
            for _ in range(count):
                job = self._take(queue)
                job.state = "lane"
                job.released = True
                self._released[merchant_id] += 1
                self._awaiting_token[merchant_id] += 1
                self.bus.emit(event, job)
        if queue:
            self._schedule(merchant_id, min(wake, queue[0].emitted_at + MAX_DEFER_S))
        else:
            self._forget(merchant_id)

    def _schedule(self, merchant_id: str, at: float) -> None:
        """Make sure the pump looks at ``merchant_id``'s backlog no later than ``at``."""
        current = self._wake_at.get(merchant_id)
        if current is not None and current <= at:
            return
        self._wake_at[merchant_id] = at
        self._serial += 1
        heapq.heappush(self._due, (at, self._serial, merchant_id))

    def _take(self, queue: deque[WebhookJob]) -> WebhookJob:
        job = queue.popleft()
        self.deferred -= 1
        self.deferred_by_tier[job.merchant.tier] -= 1
        return job

    def _forget(self, merchant_id: str) -> None:
        del self._backlog[merchant_id]
        self._wake_at.pop(merchant_id, None)  # its heap entries are now stale
        self._check_watch(merchant_id)

    def backlog_of(self, merchant_id: str) -> int:
        """Webhooks of ``merchant_id`` deferred right now."""
        queue = self._backlog.get(merchant_id)
        return len(queue) if queue else 0

    # -------------------------------------------------------------- shutdown
    def begin_close(self) -> None:
        """The process is stopping: from now on, a lane that cannot start a delivery dead-letters it."""
        self._closing = True

    def close(self) -> int:
        """After the bus has closed: every webhook still deferred becomes a ``shutdown`` dead letter."""
        self._closing = True
        count = 0
        for merchant_id in list(self._backlog):
            queue = self._backlog.pop(merchant_id)
            while queue:
                job = self._take(queue)
                self._dead_letter(job, SHUTDOWN, f"deferred ({job.cause}) when the process stopped")
                count += 1
        self._wake_at.clear()
        self._due.clear()
        return count

    # --------------------------------------------------------------- replay
    async def replay_dead_letters(self, *, key: str | None = None, reason: str | None = None,
                                  limit: int | None = None, stop_after_failures: int | None = 1) -> ReplayReport:
        """Send dead letters again, oldest first, through the merchant's rate limit, breaker and timeout.

        A replayed webhook that is delivered leaves the store (and is counted
        in ``replayed``); one that fails stays, with its attempts updated. The
        run's outcome counts do not change: the webhook was dead-lettered, and
        was then delivered by an operator's replay.
        """
        async def deliver(letter: DeadLetter) -> None:
            job: WebhookJob = letter.payload
            await self.limits.acquire(job.merchant.id)
            await self._attempt(self.breaker(job.merchant), job)

        report = await self.dead_letters.replay(deliver, key=key, reason=reason, limit=limit,
                                                stop_after_failures=stop_after_failures)
        self.replayed += len(report.replayed)
        return report

    # -------------------------------------------------------------- breakers
    def _transition(self, transition: Transition) -> None:
        merchant_id = transition.name
        first = self._first_moves.setdefault(merchant_id, [])
        if len(first) < TRANSITIONS_KEPT // 2:
            first.append(transition)  # the breaker itself keeps only its most recent transitions
        if transition.to_state is BreakerState.CLOSED:
            self.not_closed.pop(merchant_id, None)
            watch = self._watches.get(merchant_id)
            if watch is not None and watch.closed_at is None:
                watch.closed_at = transition.at
            self._check_watch(merchant_id)
            return
        self.not_closed[merchant_id] = transition.to_state
        if transition.to_state is not BreakerState.OPEN:
            return
        if not self._healthy.get(merchant_id, True):
            self._troubled.add(merchant_id)
        if merchant_id in self._opened_set:
            return
        self._opened_set.add(merchant_id)
        self.opened.append(merchant_id)
        count = len(self.opened)
        tier = self.world.merchants[merchant_id].tier
        if count <= NAMED_EVENTS:
            self.recorder.event(f"circuit breaker of {merchant_id} ({tier} tier) opens: {transition.reason}; "
                                "its webhooks are deferred, not dropped")
        elif count in _MILESTONES:
            self.recorder.event(f"circuit breakers have opened for {count} merchants so far")

    # -------------------------------------------------------------- recovery
    def _faults_changed(self, now: float) -> None:
        self._revision = self.world.faults.revision
        # The pump runs once a second; the change came with the latest scripted or control event, if recent.
        changes = [at for at, _, kind, _ in self.recorder.events[-20:] if kind in ("scripted", "control")]
        if changes and now - PUMP_INTERVAL_S <= changes[-1] <= now:
            now = changes[-1]
        faults = self.world.faults
        for merchant in self.world.merchants.values():
            healthy = endpoint_healthy(faults, merchant)
            was = self._healthy.get(merchant.id, True)
            self._healthy[merchant.id] = healthy
            if healthy == was:
                continue
            merchant_id = merchant.id
            if not healthy:
                self._watches.pop(merchant_id, None)  # a fault again before it recovered: start over
                if self.not_closed.get(merchant_id) is BreakerState.OPEN:
                    self._troubled.add(merchant_id)
            elif merchant_id in self._troubled:
                self._troubled.discard(merchant_id)
                waiting = self.backlog_of(merchant_id) + self._released[merchant_id]
                if waiting:  # nothing waiting, nothing to recover: its next webhook will be the probe
                    self._watches[merchant_id] = _Watch(merchant, now, waiting)

    def _check_watch(self, merchant_id: str) -> None:
        watch = self._watches.get(merchant_id)
        if watch is None:
            return
        breaker = self.breakers.get(merchant_id)
        if breaker is not None and breaker.recorded_state is not BreakerState.CLOSED:
            return
        if self.backlog_of(merchant_id) or self._released[merchant_id]:
            return
        del self._watches[merchant_id]
        now = self.world.clock()
        seconds = round(now - watch.back_at, 3)
        self.recoveries.append({
            "merchant": merchant_id, "tier": watch.merchant.tier.value,
            "endpoint_back_at": hhmmss(watch.back_at),
            "breaker_closed_at": None if watch.closed_at is None else hhmmss(watch.closed_at),
            "backlog_delivered_at": hhmmss(now), "seconds": seconds,
            "backlog_at_recovery": watch.backlog, "delivered_after_recovery": watch.delivered,
        })
        count = len(self.recoveries)
        if count <= NAMED_EVENTS:
            self.recorder.event(f"{merchant_id}'s endpoint is back since {hhmmss(watch.back_at)}: breaker closed "
                                f"and its backlog of {watch.backlog} webhooks cleared {seconds:,.0f} s later, "
                                "with no one lifting a finger")
        elif count in _MILESTONES:
            self.recorder.event(f"{count} merchants have recovered automatically so far")

    # --------------------------------------------------------------- reading
    @property
    def delivered(self) -> int:
        return sum(stats.delivered for stats in self.tiers.values())

    def summary(self) -> dict[str, Any]:
        """The Phase 5 keys about webhooks: breakers, dead letters, recovery, latency by tier."""
        breakers: dict[str, Any] = {}
        for merchant_id, breaker in self.breakers.items():
            total = breaker.transitions_total
            if not total:
                continue
            half = TRANSITIONS_KEPT // 2
            last = list(breaker.transitions)
            first = self._first_moves.get(merchant_id, [])
            kept = last if total <= TRANSITIONS_KEPT else first[:half] + last[-half:]
            breakers[merchant_id] = {
                "tier": self.world.merchants[merchant_id].tier.value,
                "state": breaker.recorded_state.value,
                "opened": breaker.times_opened,
                "transitions_total": total,
                "transitions": [{"at": hhmmss(t.at), "from": t.from_state.value, "to": t.to_state.value,
                                 "reason": t.reason} for t in kept],
            }
        reasons = self.dead_letters.count_by_reason()
        by_tier_letters = {tier.value: stats.dead_lettered for tier, stats in self.tiers.items()}
        latency: dict[str, Any] = {}
        for tier, stats in self.tiers.items():
            data = sorted(stats.latencies)
            latency[tier.value] = {
                "delivered": len(data),
                "p50": round(percentile(data, 50) * 1000, 3) if data else None,
                "p99": round(percentile(data, 99) * 1000, 3) if data else None,
                "max": round(data[-1] * 1000, 3) if data else None,
            }
        seconds = [r["seconds"] for r in self.recoveries]
        slowest = sorted(self.recoveries, key=lambda r: (-r["seconds"], r["merchant"]))[:20]
        unfinished = sorted(self._watches)
        webhooks = {
            tier.value: {"emitted": s.emitted, "delivered": s.delivered, "dead_lettered": s.dead_lettered,
                         "delivered_first_attempt": s.first_attempt, "delivered_after_retry": s.after_retry,
                         "delivered_after_deferral": s.after_deferral,
                         "deferrals": dict(sorted(s.deferrals.items()))}
            for tier, s in self.tiers.items()
        }
        return {
            "breakers": breakers,
            "dead_letters": {"total": self.dead_letters.added, "by_reason": reasons, "by_tier": by_tier_letters,
                             "held": len(self.dead_letters), "replayed": self.replayed},
            "recovery_seconds": max(seconds) if seconds else None,
            "recovery": {
                "measured": len(self.recoveries), "unfinished": unfinished,
                "p50_s": percentile(sorted(seconds), 50) if seconds else None,
                "max_s": max(seconds) if seconds else None,
                "slowest": slowest,
                "how": "from the moment the fault plan says the endpoint is healthy again to its breaker "
                       "closed and its backlog empty; for merchants whose breaker opened during the fault "
                       "and who had webhooks waiting when it ended",
            },
            "webhook_latency_ms_by_tier": latency,
            "webhooks": {
                "by_tier": webhooks,
                "retries": self.retries_made,
                "retry_budget_refusals": sum(b.refusals for b in self.budgets.values()),
                "rate_limited": sum(bucket.rejected for _, bucket in self.limits.items()),
                "peak_deferred": self.peak_deferred,
                "breakers_opened": len(self.opened),
                "lanes": {tier.value: {"workers": h.workers, "queue_size": h.queue_size}
                          for tier, h in self.lanes.items()},
                "policy": {"attempts": MAX_ATTEMPTS, "backoff": f"full jitter, {BASE_DELAY_S:g} s doubling, "
                                                                 f"capped at {MAX_DELAY_S:g} s",
                           "retry_budget": dict(BUDGET), "call_timeout_s": WEBHOOK_TIMEOUT_S,
                           "max_defer_s": MAX_DEFER_S,
                           "breakers": {tier.value: {"failure_ratio": c.failure_ratio,
                                                     "minimum_throughput": c.minimum_throughput,
                                                     "window_s": c.window_size,
                                                     "consecutive_failures": c.consecutive_failures,
                                                     "break_s": c.break_duration,
                                                     "half_open_probes": c.half_open_probes}
                                        for tier, c in BREAKERS.items()}},
            },
        }
