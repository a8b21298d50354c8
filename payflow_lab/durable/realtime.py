"""The durable pipeline for real: real HTTP, real receivers on 127.0.0.1, real time, a real SQLite file.

Everything the simulation does with a virtual clock and simulated merchants,
done with the real ones, for a bounded time (``payflow-lab realtime``):

1. open (or create, or migrate) the outbox at ``db`` and register this run;
2. start the receivers: ``receivers`` merchant endpoints plus an analytics
   and an audit service, each a :class:`~.receiver.Receiver` served by
   hypercorn on its own port of 127.0.0.1, each with its own ledger file next
   to the database (so that deduplication survives a restart too). Or, with
   ``endpoints``, use receivers that run elsewhere (the crash test does);
3. for ``duration`` seconds, a Poisson stream of ``rate`` payments a second:
   authorize (the world's gateway, ~150 ms), commit the authorization and
   its events in one transaction, wake the dispatcher;
4. meanwhile the first merchant receiver fails (HTTP 503) for a stretch of
   the run and then recovers: its breaker opens, its events wait in the
   outbox, and are delivered after the recovery;
5. stop the traffic, let the dispatcher drain (up to ``drain`` seconds),
   stop everything, and check: every event of every payment in the file is
   either applied exactly once by a receiver or still in the outbox; none is
   lost.

Nothing here is simulation-specific: :class:`~.dispatcher.Dispatcher`,
:class:`~.delivery.Deliverer` and the resilience parts are the same objects
as in :mod:`.pipeline`, over :class:`~.transport.HttpTransport` instead of
:class:`~.transport.SimulatedTransport`. The clock is the real one:
``anyio.current_time()`` for timeouts and breakers, Unix time for what is
written to the database and signed into the webhooks. The world is used only
for its merchants and its payment gateway.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import Declined, ValidationError
from payflow_lab.core.recorder import Recorder
from payflow_lab.core.validation import integer, number
from payflow_lab.core.world import World
from payflow_lab.durable.deliverer import Deliverer
from payflow_lab.durable.dispatcher import Dispatcher
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.outbox import Outbox, is_postgres_url
from payflow_lab.durable.receiver import Receiver, ReceiverServer
from payflow_lab.durable.schema import MEMORY
from payflow_lab.durable.transport import RETRY_ON, HttpLimits, HttpTransport, Routes
from payflow_lab.resilience import BreakerConfig, KeyedCircuitBreaker, KeyedRateLimiter, RetryBudget, RetryPolicy

__all__ = ["RealtimeConfig", "run_realtime"]


def _number(name: str, value: Any, low: float, high: float) -> float:
    return number(name, value, minimum=low, maximum=high)


@dataclass(frozen=True)
class RealtimeConfig:
    """Everything a real-time run needs; validated on construction (each error names its field).

    ``db`` is a file path, ``":memory:"``, or ``None`` for a new temporary
    file. ``fail_window`` is the part of the traffic time (fractions from 0
    to 1) during which the first merchant receiver answers 503; ``None`` for
    no fault. ``endpoints`` is a JSON file of receivers running elsewhere
    (see :meth:`~.transport.Routes.from_dict`); the run then starts none and
    scripts no fault.
    """

    db: str | None = None
    duration: float = 10.0
    rate: float = 20.0
    receivers: int | None = None
    seed: int = 7
    scale: float = 0.01
    fail_window: tuple[float, float] | None = (0.2, 0.5)
    drain: float = 30.0
    workers: int = 16
    timeout: float = 2.0
    endpoints: str | None = None
    ack_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.db is not None and (not isinstance(self.db, str) or not self.db):
            raise ValidationError("db", f"must be a file path or ':memory:', got {self.db!r}")
        if is_postgres_url(self.db):
            raise ValidationError(
                "db",
                "realtime keeps its receivers' ledgers beside a SQLite outbox file; for PostgreSQL run "
                "`payflow-lab receivers` and one or more `payflow-lab dispatch --db postgresql://...` "
                "(docs/scale-out.md)",
            )
        _number("duration", self.duration, 0.0, 3600.0)
        _number("rate", self.rate, 0.1, 2000.0)
        integer("receivers", self.receivers, minimum=1, maximum=50, optional=True)
        integer("seed", self.seed, minimum=0)
        _number("scale", self.scale, 0.002, 0.2)
        if self.fail_window is not None:
            start, end = self.fail_window
            _number("fail_window", start, 0.0, 1.0)
            _number("fail_window", end, 0.0, 1.0)
            if not start < end:
                raise ValidationError("fail_window", f"must start before it ends, got {self.fail_window!r}")
        _number("drain", self.drain, 0.0, 3600.0)
        integer("workers", self.workers, minimum=1, maximum=1000)
        _number("timeout", self.timeout, 0.05, 60.0)
        _number("ack_delay", self.ack_delay, 0.0, 10.0)
        if self.endpoints is not None:
            Routes.load(self.endpoints)  # a bad file fails now, naming itself


@dataclass
class _Run:
    config: RealtimeConfig
    outbox: Outbox
    run: int
    receivers: list[Receiver] = field(default_factory=list)
    attempted: int = 0
    authorized: int = 0
    declined: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)


def _ledger_path(db: str, name: str) -> str:
    return MEMORY if db == MEMORY else f"{db}.receiver-{name}.sqlite"


#: Merchant receivers started for a new outbox when no count is asked for.
DEFAULT_RECEIVERS = 3


def _receiver_count(db: str, asked: int | None) -> int:
    """How many merchant receivers this run starts: as many as the outbox was run with before.

    A merchant's webhooks go to receiver ``n % receivers``; with another count,
    an event delivered before a crash would be redelivered to a receiver whose
    ledger has never seen it (applied twice), and ``check`` would look for it
    in the wrong ledger (a loss that did not happen). The ledgers beside the
    outbox say how many there were: without ``asked`` that count is used, and
    another count is refused.
    """
    before: list[str] = []
    if db != MEMORY:
        folder, name = Path(db).parent, Path(db).name
        before = sorted(p.name for p in folder.glob(f"{glob.escape(name)}.receiver-merchants-*.sqlite"))
    if not before:
        return DEFAULT_RECEIVERS if asked is None else asked
    if asked is not None and asked != len(before):
        raise ValidationError(
            "receivers",
            f"this outbox was run with {len(before)} merchant receivers (their "
            f"ledgers are beside {db}); restart it with --receivers {len(before)}, "
            f"or use a new --db, so that redeliveries reach the receiver that "
            f"saw them first",
        )
    return len(before)


async def run_realtime(config: RealtimeConfig) -> dict[str, Any]:
    """Run the durable pipeline for real as ``config`` says; return the summary (JSON-ready)."""
    db = config.db
    if db is None:
        handle, db = tempfile.mkstemp(prefix="payflow-outbox-", suffix=".sqlite")
        os.close(handle)
        os.unlink(db)  # an empty file is not a database: let SQLite create it
    wall0 = time.perf_counter()
    outbox = Outbox(db, clock=time.time, offload=True)
    receivers: list[Receiver] = []
    try:
        # Everything that can refuse the command (the endpoints file, the receivers' ledger files) is checked
        # before the run is registered: a refusal leaves the outbox as it was.
        routes: Routes | None = None
        if config.endpoints is not None:
            routes = Routes.load(config.endpoints)
        else:
            config = dataclasses.replace(config, receivers=_receiver_count(db, config.receivers))
            names = [f"merchants-{i + 1}" for i in range(config.receivers or 0)] + ["analytics", "audit"]
            for name in names:
                receivers.append(Receiver(name, ledger=ReceiverLedger(_ledger_path(db, name))))
        run_no = outbox.start_run("realtime" if config.duration > 0 else "drain")
        state = _Run(config, outbox, run_no)
        state.receivers = receivers
        async with anyio.create_task_group() as tg:
            server = None
            if routes is None:
                for receiver in receivers:
                    receiver.set_mode(ack_delay=config.ack_delay)
                server = ReceiverServer(receivers)
                await tg.start(server.serve)
                webhook = [r.endpoint for r in receivers[: config.receivers]]
                routes = Routes(webhook, {"analytics": receivers[-2].endpoint, "audit": receivers[-1].endpoint})
            summary = await _deliver(state, routes)
            if server is not None:
                server.stop()
        summary["wall_seconds"] = round(time.perf_counter() - wall0, 3)
        summary["db"] = db
        return summary
    finally:
        for receiver in receivers:
            receiver.ledger.close()
        outbox.close()


async def _deliver(state: _Run, routes: Routes) -> dict[str, Any]:
    config, outbox = state.config, state.outbox
    clock = time.time
    recorder = Recorder(clock)
    world = World(seed=config.seed + 7919 * state.run, scale=config.scale, clock=clock, recorder=recorder)
    breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(
        BreakerConfig(failure_ratio=0.5, minimum_throughput=5, window_size=5.0, break_duration=1.0)
    )
    retry = RetryPolicy(
        max_attempts=3,
        base_delay=0.05,
        max_delay=0.5,
        rng=world.rng,
        retry_on=RETRY_ON,
        budget=RetryBudget(ratio=0.2, max_tokens=20.0, refill_per_s=5.0),
    )
    limits = HttpLimits.for_workers(config.workers, config.timeout)
    async with HttpTransport(routes, limits=limits) as transport:
        deliverer = Deliverer(
            transport,
            timeout=config.timeout,
            breakers=breakers,
            limiter=KeyedRateLimiter.for_merchants(world.merchants),
            retry=retry,
        )
        dispatcher = Dispatcher(
            outbox,
            deliverer,
            workers=config.workers,
            poll_interval=0.2,
            shutdown_deadline=2.0,
            delivery_timeout=30.0,
            max_attempts=50,
            backoff_base=0.2,
            backoff_cap=2.0,
            max_defer=600.0,
            rng=world.rng,
        )
        started = anyio.current_time()
        async with dispatcher:
            async with anyio.create_task_group() as tg:
                if state.receivers and config.fail_window is not None and config.duration > 0:
                    tg.start_soon(_fault_schedule, state, started)
                await _traffic(state, world, dispatcher)
            traffic_s = anyio.current_time() - started
            delivered_in_traffic = dispatcher.actions["delivered"]
            drained = await dispatcher.drain(config.drain)
            drain_s = anyio.current_time() - started - traffic_s
        elapsed = anyio.current_time() - started
        http = {
            "statuses": {str(k): v for k, v in sorted(transport.statuses.items())},
            "errors": dict(sorted(transport.errors.items())),
        }
    delivered = dispatcher.actions["delivered"]
    counts = await outbox.run(outbox.counts)
    summary: dict[str, Any] = {
        "scenario": "realtime",
        "run": state.run,
        "seed": config.seed,
        "traffic_seconds": round(traffic_s, 3),
        "drain_seconds": round(drain_s, 3),
        "drained": drained,
        "payments": {"attempted": state.attempted, "authorized": state.authorized, "declined": state.declined},
        "outbox": counts,
        "outbox_by_kind": await outbox.run(outbox.counts_by_kind),
        "dead_letters": await outbox.run(outbox.dead_letters.count_by_reason),
        "dispatcher": dispatcher.summary(),
        "throughput": {
            "deliveries": delivered,
            "deliveries_per_second": round(delivered / elapsed, 1) if elapsed > 0 else None,
            "deliveries_per_second_during_traffic": (
                round(delivered_in_traffic / traffic_s, 1) if traffic_s > 0 else None
            ),
        },
        "http": http,
        "breakers": [
            {
                "endpoint": t.name,
                "from": t.from_state.value,
                "to": t.to_state.value,
                "at_s": round(t.at - started, 3),
                "reason": t.reason,
            }
            for t in breakers.transitions
        ],
        "breaker_transitions_total": breakers.transitions_total,
        "faults": state.faults,
    }
    if state.receivers:
        summary["receivers"] = {r.name: {k: v for k, v in r.stats().items() if k != "name"} for r in state.receivers}
        summary["check"] = await outbox.run(_check, outbox, state.receivers)
    return summary


async def _traffic(state: _Run, world: World, dispatcher: Dispatcher) -> None:
    """A Poisson stream of payments for ``duration`` seconds; each one authorized and committed in its own task."""
    config, outbox = state.config, state.outbox
    if config.duration <= 0:
        return
    serial = 0

    async def pay(drawn: Payment, payment: Payment) -> None:
        state.attempted += 1
        try:
            await world.authorize(drawn)  # the gateway knows the card by the id the world drew
        except Declined:
            state.declined += 1
            return
        await outbox.run(outbox.record_authorization, payment)  # the authorization and its events, atomically
        state.authorized += 1
        dispatcher.notify()

    end = anyio.current_time() + config.duration
    async with anyio.create_task_group() as payments:
        while True:
            gap = world.rng.expovariate(config.rate)
            if anyio.current_time() + gap >= end:
                break
            await anyio.sleep(gap)
            serial += 1
            drawn = world.new_payment()
            # Ids unique across runs on the same file: the run number, then a serial.
            payments.start_soon(pay, drawn, dataclasses.replace(drawn, id=f"pay_{state.run:04x}{serial:08x}"))
        await anyio.sleep(max(0.0, end - anyio.current_time()))


async def _fault_schedule(state: _Run, started: float) -> None:
    """The first merchant receiver fails (HTTP 503) during ``fail_window`` of the traffic time, then recovers."""
    config = state.config
    assert config.fail_window is not None
    receiver = state.receivers[0]
    begin, end = (started + f * config.duration for f in config.fail_window)
    await anyio.sleep(max(0.0, begin - anyio.current_time()))
    receiver.set_mode("fail")
    await anyio.sleep(max(0.0, end - anyio.current_time()))
    receiver.set_mode("up")
    state.faults.append(
        {
            "receiver": receiver.name,
            "failing_from_s": round(begin - started, 3),
            "recovered_at_s": round(end - started, 3),
        }
    )


def _check(outbox: Outbox, receivers: list[Receiver]) -> dict[str, Any]:
    """Compare the outbox with what the receivers applied: nothing lost, nothing applied twice."""
    applied: dict[str, int] = {}
    for receiver in receivers:
        for event_id in receiver.ledger.event_ids():
            applied[event_id] = applied.get(event_id, 0) + 1
    events = outbox.events()
    delivered_not_applied = sum(1 for e in events if e.status == "delivered" and e.event_id not in applied)
    unknown = len(set(applied) - {e.event_id for e in events})
    stats = [r.ledger.stats() for r in receivers]
    return {
        "events": len(events),
        "applied": len(applied),
        "applied_twice": sum(1 for n in applied.values() if n > 1),
        "deliveries_received": sum(s["deliveries"] for s in stats),
        "redeliveries_deduplicated": sum(s["duplicates"] for s in stats),
        "pending": sum(1 for e in events if e.status == "pending"),
        "dead_lettered": sum(1 for e in events if e.status == "dead"),
        "lost": delivered_not_applied,
        "applied_but_not_in_outbox": unknown,
        "all_delivered": all(e.status == "delivered" for e in events) and delivered_not_applied == 0,
    }
