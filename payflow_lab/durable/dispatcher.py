"""The dispatcher: reads the outbox and delivers through the hook bus, marking an event done only when it is.

::

    outbox (SQLite) --due events--> pump --emit--> HookBus: one subscriber per side effect
                                                   (own queue, workers, timeout, Spill(outbox))
                                                        |
                                     Deliverer (rate limit, breaker, timeout, retries)
                                                        |
                         delivered -> mark_delivered    retry -> reschedule with backoff, or dead letter
                         deferred  -> reschedule        rejected -> dead letter

The rule that makes delivery *at least once*: an event leaves ``pending``
only after its receiver acknowledged it (or after it was dead-lettered, which
is a decision, recorded in the same file). Everything before that point may
be lost in a crash, and nothing is lost with it: the queues, the workers,
the in-flight set all live in memory, and the next process rebuilds them
from the rows still ``pending``. An event whose receiver answered but whose
"done" was never written is simply sent again, with the same id, and the
receiver's ledger (:mod:`.ledger`) makes the repeat harmless.

The pump claims due events (oldest first) only as far as each subscriber's
queue has room, remembers them as in flight (so it never queues one twice)
and wakes up when told there is new work (:meth:`Dispatcher.notify`), when a
delivery finishes, or every ``poll_interval`` seconds. It reads on from where
it stopped (a cursor on ``(available_at, seq)``: an event rescheduled or
recorded later sorts after it), so a wake-up costs an index lookup, not a
re-read of everything in flight; every ``10 x poll_interval`` it reads from
the start, as a safety net. At shutdown the bus
drains for its deadline and then hands what never started to the outbox
(:meth:`.Outbox.spill`): those events simply stay pending, due now.

Several dispatchers on one outbox
=================================

With ``owner`` and ``lease`` the pump *claims* (:meth:`.Outbox.claim`)
instead of reading: each event it takes is held for ``lease`` seconds under
its name, and every outcome is written only if the claim is still its own.
That is what lets several dispatcher processes share a PostgreSQL outbox
(:mod:`.fleet`): nobody takes an event another one holds, and a dispatcher
that dies loses its claims when their leases lapse. A dispatcher that was
paused (SIGSTOP, a long GC, a frozen VM) past its lease does not start a
delivery it no longer holds; one already on the wire may still arrive late
and is absorbed by the receiver's idempotency key. The lease must outlast
``delivery_timeout``, so that an honest delivery never outlives its claim.

Retries happen at two scales. The :class:`~.delivery.Deliverer`'s retry
policy retries within one call, for seconds; when it gives up, the event is
rescheduled in the outbox with a capped, jittered backoff (minutes, and it
survives a restart), until ``max_attempts`` attempts in all, and only then
dead-lettered. An event deferred by an open breaker waits in the outbox, not
in a worker; after ``max_defer`` seconds of that it is dead-lettered too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import anyio

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import integer, number
from payflow_lab.durable.deliverer import Deliverer, DeliveryResult
from payflow_lab.durable.events import OutboxEvent
from payflow_lab.durable.outbox import Outbox
from payflow_lab.hooks import HookBus, Outcome, ShutdownReport, Spill
from payflow_lab.resilience import FullJitter
from payflow_lab.resilience.dead_letters import RETRIES_EXHAUSTED

__all__ = ["Dispatcher"]

#: What :meth:`Dispatcher` did with a delivery's result.
ACTIONS = ("delivered", "rescheduled", "deferred", "dead_lettered")
#: A claimer's outcome that could not be written because its lease had been taken over.
LEASE_LOST = "lease_lost"


class Dispatcher:
    """Delivers ``outbox``'s events with ``deliverer``; ``async with`` runs it. See the module docstring.

    ``workers`` per side effect (an int for all, or a mapping by kind),
    ``queue_size`` per side effect (default four times its workers).
    ``delivery_timeout`` bounds one event's whole delivery call, retries
    included (the bus cancels it, and the event stays pending).
    ``on_result(event, result, action)`` is called after each outcome is
    written (``action`` in :data:`ACTIONS`), for a recorder or a dashboard.
    ``rng`` draws the outbox backoff's jitter (pass the world's RNG in a
    simulation; a seeded one otherwise). ``owner`` and ``lease`` make it a
    claimer among several (see "Several dispatchers" above).
    """

    def __init__(
        self,
        outbox: Outbox,
        deliverer: Deliverer,
        *,
        workers: int | Mapping[str, int] = 8,
        queue_size: int | None = None,
        delivery_timeout: float | None = 120.0,
        poll_interval: float = 0.5,
        shutdown_deadline: float = 5.0,
        max_attempts: int = 12,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        max_defer: float = 3600.0,
        rng: random.Random | None = None,
        on_result: Callable[[OutboxEvent, DeliveryResult, str], Any] | None = None,
        owner: str | None = None,
        lease: float | None = None,
    ) -> None:
        if not isinstance(outbox, Outbox):
            raise ValidationError("outbox", f"must be an Outbox, got {type(outbox).__name__}")
        if not isinstance(deliverer, Deliverer):
            raise ValidationError("deliverer", f"must be a Deliverer, got {type(deliverer).__name__}")
        self.outbox = outbox
        self.deliverer = deliverer
        self.kinds = outbox.kinds
        per_kind = workers if isinstance(workers, Mapping) else {kind: workers for kind in self.kinds}
        self.workers: dict[str, int] = {}
        for kind in self.kinds:
            n = per_kind.get(kind)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000:
                raise ValidationError("workers", f"needs an integer from 1 to 10000 for {kind!r}, got {n!r}")
            self.workers[kind] = n
        self.queue_size = integer("queue_size", queue_size, minimum=1, optional=True)
        self.delivery_timeout = number("delivery_timeout", delivery_timeout, above=0, unit=" seconds", optional=True)
        self.poll_interval = number("poll_interval", poll_interval, above=0, unit=" seconds")
        self.shutdown_deadline = number(
            "shutdown_deadline", shutdown_deadline, minimum=0, maximum=3600, unit=" seconds"
        )
        self.max_attempts = integer("max_attempts", max_attempts, minimum=1)
        self.max_defer = number("max_defer", max_defer, above=0, unit=" seconds")
        self.backoff = FullJitter(
            number("backoff_base", backoff_base, above=0, unit=" seconds"),
            number("backoff_cap", backoff_cap, above=0, unit=" seconds"),
            rng or random.Random(0),
        )
        if on_result is not None and not callable(on_result):
            raise ValidationError("on_result", f"must be callable, got {on_result!r}")
        self.on_result = on_result
        if (owner is None) != (lease is None):
            raise ValidationError("lease", "a claiming dispatcher needs both owner and lease (or neither)")
        self.owner = owner
        self.lease = number("lease", lease, above=0, maximum=86_400, unit=" seconds", optional=True)
        if self.lease is not None and self.delivery_timeout is not None and self.lease <= self.delivery_timeout:
            raise ValidationError(
                "lease",
                f"must outlast delivery_timeout ({self.delivery_timeout:g} s), got {self.lease:g} s: "
                "an honest delivery would outlive its claim and be sent twice",
            )
        self._lease_ends: dict[str, float] = {}
        #: Claimed deliveries not started (the lease had lapsed) or whose outcome another claimer owns now.
        self.lease_lost = 0
        self.bus: HookBus | None = None
        self._handles: dict[str, Any] = {}
        self._in_flight: dict[str, str] = {}  # event id -> kind
        self._in_flight_by_kind: dict[str, int] = {kind: 0 for kind in self.kinds}
        self._settled_while_querying: set[str] | None = None
        # Where each kind's reading stopped: events due later, or recorded later, sort after it.
        self._cursor: dict[str, tuple[float, int] | None] = {kind: None for kind in self.kinds}
        self._next_rescan = -math.inf
        #: Seconds between full re-reads of the due events (a safety net under the cursor).
        self.rescan_interval = 10 * self.poll_interval
        self._wake: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._pump_scope: anyio.CancelScope | None = None
        #: What happened to the deliveries, by action; and events handed to the bus.
        self.actions: dict[str, int] = {action: 0 for action in ACTIONS}
        self.claimed = 0
        #: Calls that ended without an outcome (timed out by the bus, cancelled, never started): still pending.
        self.unfinished = 0
        self.report: ShutdownReport | None = None

    # ---------------------------------------------------------------- running
    async def __aenter__(self) -> Dispatcher:
        bus = HookBus(
            timeout=self.delivery_timeout,
            shutdown_deadline=self.shutdown_deadline,
            on_outcome=self._settled,
            overflow=Spill(self.outbox),
        )
        for kind in self.kinds:
            workers = self.workers[kind]
            self._handles[kind] = bus.hook(
                f"outbox.{kind}", self._handle, name=kind, workers=workers, queue_size=self.queue_size or 4 * workers
            )
        self.bus = bus
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            await stack.enter_async_context(bus)
            self._pump_scope = anyio.CancelScope()
            stack.callback(self._pump_scope.cancel)  # runs first on exit: stop claiming, then close the bus
            tg.start_soon(self._pump)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._stack is not None and self.bus is not None
        try:
            if self._pump_scope is not None:
                self._pump_scope.cancel()
            self.report = await self.bus.aclose(self.shutdown_deadline)
            if self.owner is not None:
                with anyio.CancelScope(shield=True):  # give back what was claimed and not settled: others take it now
                    await self.outbox.run(self.outbox.release, self.owner)
        finally:
            await self._stack.aclose()

    def notify(self) -> None:
        """New events are in the outbox: look now rather than at the next poll."""
        if self._wake is not None:
            self._wake.set()

    @property
    def in_flight(self) -> int:
        """Events handed to the bus and not settled yet."""
        return len(self._in_flight)

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight (True), or ``timeout`` seconds (False)."""
        with anyio.move_on_after(timeout):
            while True:
                pending = await self.outbox.run(self.outbox.pending)
                if pending == 0 and not self._in_flight:
                    return True
                self.notify()
                await anyio.sleep(min(self.poll_interval, 0.1))
        return False

    # ------------------------------------------------------------------ pump
    async def _pump(self) -> None:
        assert self._pump_scope is not None
        with self._pump_scope:
            while True:
                self._wake = anyio.Event()
                await self._fill()
                with anyio.move_on_after(self.poll_interval):
                    await self._wake.wait()

    async def _fill(self) -> None:
        """Claim due events for every side effect whose queue has room, and queue them."""
        bus, outbox = self.bus, self.outbox
        assert bus is not None
        now = outbox.clock()
        rescan = now >= self._next_rescan
        if rescan:
            self._next_rescan = now + self.rescan_interval
        for kind in self.kinds:
            handle = self._handles[kind]
            room = handle.queue_size - handle.queued
            if room <= 0:
                continue
            after = None if rescan else self._cursor[kind]
            self._settled_while_querying = set()
            try:
                if self.owner is not None and self.lease is not None:
                    events = await outbox.run(partial(outbox.claim, self.owner, room, lease=self.lease, kinds=(kind,)))
                    ends = outbox.clock() + self.lease
                    self._lease_ends.update((event.event_id, ends) for event in events)
                else:
                    limit = room + (self._in_flight_by_kind[kind] if after is None else 0)
                    events = await outbox.run(outbox.due, kind, limit, now, after)
            finally:
                settled, self._settled_while_querying = self._settled_while_querying, None
            if bus.state != "running":
                return
            for event in events:
                if handle.queued >= handle.queue_size:
                    break
                self._cursor[kind] = (event.available_at, event.seq)
                if event.event_id in self._in_flight:
                    continue  # already queued or running (a claim renewed on our own event keeps it ours)
                if event.event_id in settled and self.owner is None:
                    continue  # finished while we were reading (claimed again, it is due again: deliver it)
                self._in_flight[event.event_id] = kind
                self._in_flight_by_kind[kind] += 1
                self.claimed += 1
                bus.emit(f"outbox.{kind}", event)  # room checked above, with no await since: never spills

    def _release(self, event_id: str) -> None:
        self._lease_ends.pop(event_id, None)
        kind = self._in_flight.pop(event_id, None)
        if kind is not None:
            self._in_flight_by_kind[kind] -= 1
        if self._settled_while_querying is not None:
            self._settled_while_querying.add(event_id)
        if self._wake is not None:
            self._wake.set()

    # -------------------------------------------------------------- delivering
    async def _handle(self, event: OutboxEvent) -> None:
        """One subscriber call: deliver, then write the outcome (shielded: a delivered event gets marked)."""
        ends = self._lease_ends.get(event.event_id)
        if ends is not None and self.outbox.clock() >= ends:
            self.lease_lost += 1  # we were paused past the lease: someone else may hold it now
            self._release(event.event_id)
            return
        try:
            result = await self.deliverer.deliver(event)
        except Exception as exc:  # a bug below us: back off and count it, rather than spin on the same event
            result = DeliveryResult("retry", 1, RETRIES_EXHAUSTED, f"{type(exc).__name__}: {exc}")
        with anyio.CancelScope(shield=True):
            action = await self.outbox.run(self._record, event, result)
            self._release(event.event_id)
        if action == LEASE_LOST:
            self.lease_lost += 1
            return
        self.actions[action] += 1
        if self.on_result is not None:
            self.on_result(event, result, action)

    def _record(self, event: OutboxEvent, result: DeliveryResult) -> str:
        """Write one delivery's outcome to the outbox; return the action taken. Runs in the outbox's thread."""
        outbox, owner = self.outbox, self.owner
        attempts = event.attempts + result.attempts
        if result.status == "delivered":
            written = outbox.mark_delivered(event.event_id, attempts=result.attempts, owner=owner)
            return "delivered" if written or owner is None else LEASE_LOST
        now = outbox.clock()
        if result.status == "deferred":
            if now - event.created_at >= self.max_defer:
                return self._dead(event, result, attempts)
            written = outbox.reschedule(
                event.event_id,
                available_at=now + (result.retry_after or 0.0),
                attempts=result.attempts,
                error=result.error,
                owner=owner,
            )
            return "deferred" if written or owner is None else LEASE_LOST
        if result.status == "retry" and attempts < self.max_attempts:
            rounds = max(0, attempts - 1)
            written = outbox.reschedule(
                event.event_id,
                available_at=now + self.backoff.delay(rounds),
                attempts=result.attempts,
                error=result.error,
                owner=owner,
            )
            return "rescheduled" if written or owner is None else LEASE_LOST
        return self._dead(event, result, attempts)

    def _dead(self, event: OutboxEvent, result: DeliveryResult, attempts: int) -> str:
        try:
            self.outbox.dead_letters.add(
                event.key,
                event,
                result.reason or "unknown",
                attempts=attempts,
                kind=event.kind,
                error=result.error,
                owner=self.owner,
            )
        except ValidationError:
            if self.owner is None:
                raise
            return LEASE_LOST  # taken over between the check and the write
        return "dead_lettered"

    def _settled(self, outcome: Outcome) -> None:
        """The bus's view: a call that ended without writing an outcome leaves its event pending, to claim again."""
        if outcome.status != "completed":
            payload = outcome.payload
            if isinstance(payload, OutboxEvent) and payload.event_id in self._in_flight:
                self.unfinished += 1
                self._release(payload.event_id)
                self._cursor[payload.kind] = None  # it is due again, behind the cursor: read from the start

    # ----------------------------------------------------------------- reading
    def summary(self) -> dict[str, Any]:
        """Counters of this dispatcher (this process), JSON-ready."""
        return {
            "claimed": self.claimed,
            **self.actions,
            "unfinished": self.unfinished,
            "lease_lost": self.lease_lost,
            "in_flight": self.in_flight,
            "deliverer": dict(self.deliverer.results),
            "shutdown": None if self.report is None else self.report.as_dict(),
        }
