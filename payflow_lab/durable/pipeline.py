"""The durable pipeline in the simulation: the outbox, the dispatcher and the simulated receivers, in virtual time.

The critical path is Phase 4's, with one change that matters: the
authorization and its events are committed together (:meth:`.Outbox.record_authorization`),
and the side effects leave from the outbox instead of from memory::

    async with pool.connection(timeout=2):
        INSERT the payment; authorize; COMMIT    <- the authorization record and its
                                                    webhook, analytics and audit events
    dispatcher.notify()                          <- return: the customer is told "paid"

The :class:`~.dispatcher.Dispatcher` delivers through the hook bus and the
:class:`~.delivery.Deliverer` (per-endpoint breakers, per-merchant rate
limits, retries with jitter and a budget, the 5 s timeout) over a
:class:`~.transport.SimulatedTransport`, whose receivers deduplicate on the
event id in a :class:`~.ledger.ReceiverLedger`. Nothing in it is new code for
the simulation: the same classes deliver over real HTTP in :mod:`.realtime`.

:func:`run_durable` runs it through a scenario, like :func:`payflow_lab.run`;
:func:`crash_demo` shows the point of it all in a few seconds of real time:
a process that crashes mid-afternoon, once with the in-memory hook bus
(Phase 4) and once with the outbox, and what each finds after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from payflow_lab.core.calibration import WEBHOOK_TIMEOUT_S
from payflow_lab.core.domain import Payment
from payflow_lab.core.recorder import DEFAULT_MEMORY
from payflow_lab.core.scenarios import Scenario
from payflow_lab.core.vtime import in_virtual_time, in_worker_thread, loop_running_here, run_virtual
from payflow_lab.core.world import World
from payflow_lab.durable.deliverer import Deliverer, DeliveryResult
from payflow_lab.durable.dispatcher import Dispatcher
from payflow_lab.durable.events import OutboxEvent
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.outbox import Outbox
from payflow_lab.durable.schema import MEMORY
from payflow_lab.durable.transport import RETRY_ON, SimulatedTransport
from payflow_lab.phases.base import Pipeline
from payflow_lab.phases.hook_bus import CAPACITY, CHECKOUT_TIMEOUT_S, SIDE_EFFECT_CHECKOUT_TIMEOUT_S
from payflow_lab.resilience import BreakerConfig, KeyedCircuitBreaker, KeyedRateLimiter, RetryBudget, RetryPolicy
from payflow_lab.runner import DEFAULT_BACKEND, DEFAULT_SCALE, DEFAULT_SEED, RunConfig, RunResult, Simulation

__all__ = ["CrashDemo", "DurablePipeline", "crash_demo", "run_durable"]

#: Seconds between a receiver applying an event and its answer reaching PayFlow (the crash window).
ACK_LATENCY_S = 0.05


#: How a simulated run notes itself in the outbox's ``runs`` table (its times are story time).
SIMULATED = "simulated"


class DurablePipeline(Pipeline):
    """Authorize and commit the payment with its events in the outbox; the dispatcher delivers them.

    ``outbox`` defaults to a fresh in-memory one on the world's clock;
    ``ledger`` (the simulated receivers' memory) to a fresh in-memory one.
    Pass the same ``outbox`` file and ``ledger`` to a second run to restart
    after a crash.
    """

    number = 6
    name = "durable_outbox"
    title = "Beyond the story: the durable outbox"
    lesson = "authorization and events in one transaction; delivered at least once, applied exactly once"

    def __init__(self, world: World, *, outbox: Outbox | None = None, ledger: ReceiverLedger | None = None,
                 shutdown_deadline: float = 2 * WEBHOOK_TIMEOUT_S) -> None:
        super().__init__(world)
        self.outbox = outbox if outbox is not None else Outbox(MEMORY, clock=world.clock)
        self.ledger = ledger if ledger is not None else ReceiverLedger()
        self.transport = SimulatedTransport(world, ledger=self.ledger, checkout_timeout=SIDE_EFFECT_CHECKOUT_TIMEOUT_S,
                                            ack_latency=ACK_LATENCY_S)
        self.breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(BreakerConfig(), clock=world.clock)
        self.retry = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5.0, rng=world.rng, retry_on=RETRY_ON,
                                 budget=RetryBudget(ratio=0.1, max_tokens=50.0))
        self.deliverer = Deliverer(self.transport, timeout=WEBHOOK_TIMEOUT_S, breakers=self.breakers,
                                   limiter=KeyedRateLimiter.for_merchants(world.merchants, clock=world.clock),
                                   retry=self.retry)
        workers = {kind: max(1, math.ceil(CAPACITY[kind][0] * world.scale)) for kind in self.outbox.kinds}
        self.dispatcher = Dispatcher(self.outbox, self.deliverer, workers=workers, poll_interval=1.0,
                                     shutdown_deadline=shutdown_deadline, backoff_base=2.0, backoff_cap=120.0,
                                     rng=world.rng, on_result=self._result)
        self.recorded = 0

    async def start(self, stack: AsyncExitStack) -> None:
        self.recorder.add_gauge("outbox_pending", self.outbox.pending)
        self.outbox.start_run(SIMULATED)  # the file's times are story time: `payflow-lab replay` reads this
        # Events left pending by an earlier (crashed) process are this process's work too.
        for kind in self.outbox.kinds:
            for _ in range(len(self.outbox.events(status="pending", kind=kind))):
                self.recorder.side_effect_started(kind)
        await stack.enter_async_context(self.dispatcher)

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection(timeout=CHECKOUT_TIMEOUT_S):
            await world.db_query(payment)             # INSERT the payment as pending
            await world.authorize(payment)            # the only step the customer needs
            await world.db_query(payment)             # the COMMIT's latency...
            self.outbox.record_authorization(payment)  # ...and the commit: the record and its events, atomically
        self.recorded += 1
        for kind in self.outbox.kinds:
            self.recorder.side_effect_started(kind)
        self.dispatcher.notify()

    def _result(self, event: OutboxEvent, result: DeliveryResult, action: str) -> None:
        if action == "delivered":
            self.recorder.side_effect_finished(event.kind, "delivered")
        elif action == "dead_lettered":
            self.recorder.side_effect_finished(event.kind, "dead_lettered", reason=result.reason)

    def summary(self) -> dict[str, Any]:
        return {
            "db_pool": self.world.pool.summary(),
            "outbox": self.outbox.counts(),
            "outbox_by_kind": self.outbox.counts_by_kind(),
            "dead_letters": self.outbox.dead_letters.count_by_reason(),
            "receivers": self.ledger.stats(),
            "dispatcher": self.dispatcher.summary(),
            "breaker_transitions": self.breakers.transitions_total,
            "retries": {"calls": self.retry.calls, "attempts": self.retry.attempts, "retries": self.retry.retries,
                        "exhausted": dict(self.retry.exhausted)},
        }


def run_durable(scenario: str | Scenario = "normal", *, seed: int = DEFAULT_SEED, scale: float = DEFAULT_SCALE,
                duration: float | None = None, faults: Mapping[str, Any] | None = None,
                outbox: Outbox | None = None, ledger: ReceiverLedger | None = None,
                drain_seconds: float = 30.0, shutdown_deadline: float = 2 * WEBHOOK_TIMEOUT_S,
                backend: str = DEFAULT_BACKEND, memory: str = DEFAULT_MEMORY) -> RunResult:
    """Run the durable pipeline through ``scenario`` in virtual time (arguments as :func:`payflow_lab.run`).

    ``outbox`` (built on the run's clock if not given) and ``ledger`` may be
    reused across runs to model a restart. ``drain_seconds=0`` and
    ``shutdown_deadline=0`` model a crash: the process stops at the end of
    ``duration`` without waiting for anything.
    """
    config = RunConfig(scenario=scenario, phase=4, seed=seed, scale=scale, backend=backend, duration=duration,
                       memory=memory, faults=dict(faults or {}), drain_seconds=drain_seconds)
    simulation = Simulation(config)

    caller_clock = outbox.clock if outbox is not None else None

    def build(world: World) -> DurablePipeline:
        box = outbox
        if box is None:
            box = Outbox(MEMORY, clock=world.clock)
        else:
            box.clock = world.clock
        return DurablePipeline(world, outbox=box, ledger=ledger, shutdown_deadline=shutdown_deadline)

    simulation.pipeline_cls = build  # type: ignore[assignment]

    def go() -> RunResult:
        try:
            result = run_virtual(simulation.run, backend=config.backend, seed=config.seed)
        finally:
            if outbox is not None and caller_clock is not None:
                # The run's clock dies with its event loop; give the caller's outbox its own clock back.
                outbox.clock = caller_clock
        result.summary["phase"] = DurablePipeline.number
        return result

    return in_worker_thread(go) if loop_running_here() else go()


@dataclass
class CrashDemo:
    """What :func:`crash_demo` found: per pipeline, the side effects authorized, applied, lost and duplicated."""

    crash_at: str
    in_memory: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"crash_at": self.crash_at, "in_memory": self.in_memory, "outbox": self.outbox}


def crash_demo(*, seed: int = DEFAULT_SEED, scale: float = 0.05, crash_after: float = 300.0, restart_for: float = 300.0,
               scenario: str = "normal") -> CrashDemo:
    """Crash the process ``crash_after`` simulated seconds into ``scenario``, restart it, and count what survived.

    Phase 4 (the in-memory hook bus) and the outbox pipeline each run until
    the crash, which waits for nothing (no drain, no shutdown deadline): what
    is queued or in flight in memory at that moment is gone. The outbox
    pipeline then restarts on the same database and runs ``restart_for``
    seconds more of the same afternoon (the receivers, with their ledger,
    never went down). Deterministic for a given seed; about a second of real
    time at the default scale.
    """
    from payflow_lab.core.recorder import hhmmss
    from payflow_lab.core.scenarios import get_scenario
    from payflow_lab.phases.hook_bus import HookBusPipeline

    base = get_scenario(scenario)
    crash_at = base.start + crash_after
    before = Scenario(name=f"{base.name} until the crash", title=base.title, start=base.start,
                      duration=crash_after, steps=tuple(s for s in base.steps if s.at < crash_at),
                      initial=base.initial)
    # The restarted process finds the world as the crash left it: earlier steps apply at once.
    after = Scenario(name=f"{base.name} after the restart", title=base.title, start=crash_at, duration=restart_for,
                     steps=tuple(s if s.at >= crash_at else replace(s, at=crash_at) for s in base.steps),
                     initial=base.initial)

    class CrashingHookBus(HookBusPipeline):
        async def stop(self) -> None:  # a crash: no drain, nothing waits
            await self.bus.aclose(0)

    config = RunConfig(scenario=before, phase=4, seed=seed, scale=scale, memory="off", drain_seconds=0.0)
    simulation = Simulation(config)
    simulation.pipeline_cls = CrashingHookBus

    crash = in_virtual_time(simulation.run, backend=config.backend, seed=config.seed)
    fx = crash.summary["side_effects"]["by_kind"]
    kinds = ("webhook", "analytics", "audit")
    authorized = crash.summary["payments"]["authorized"] + crash.summary["payments"]["stuck_authorized"]
    applied = sum(fx[kind]["delivered"] for kind in kinds)
    in_memory = {"authorized_payments": authorized, "events": authorized * len(kinds),
                 "applied_before_crash": applied, "lost": authorized * len(kinds) - applied}

    ledger = ReceiverLedger()
    box = Outbox(MEMORY)
    first = run_durable(before, seed=seed, scale=scale, outbox=box, ledger=ledger, drain_seconds=0.0,
                        shutdown_deadline=0.0, memory="off")
    # Authorized in the commit's last milliseconds, and not yet on disk: the window the outbox shrinks but
    # cannot close (the gateway call itself is outside the transaction).
    unrecorded = first.summary["payments"]["stuck_authorized"]
    at_crash = box.counts()
    applied_at_crash = ledger.stats()["applied"]
    run_durable(after, seed=seed + 1, scale=scale, outbox=box, ledger=ledger, memory="off")
    counts = box.counts()
    stats = ledger.stats()
    applied_ids = set(ledger.event_ids())
    # Lost: marked delivered, yet never applied by a receiver (never happens), or never recorded at all.
    marked_not_applied = sum(1 for e in box.events(status="delivered") if e.event_id not in applied_ids)
    box.close()
    outbox = {"authorized_payments": at_crash["payments"], "events": at_crash["events"],
              "applied_before_crash": applied_at_crash, "pending_at_crash": at_crash["pending"],
              "authorized_after_restart": counts["payments"] - at_crash["payments"],
              "events_in_all": counts["events"], "applied_in_all": stats["applied"],
              "dead_lettered": counts["dead"], "still_pending": counts["pending"],
              "authorized_unrecorded": unrecorded,
              "lost": marked_not_applied + unrecorded * len(kinds),
              "duplicates_ignored": stats["duplicates"]}
    return CrashDemo(crash_at=hhmmss(crash_at), in_memory=in_memory, outbox=outbox)
