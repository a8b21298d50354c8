"""Scale out: several dispatcher processes on one PostgreSQL outbox, and the receivers they deliver to.

Lesson 07 ends with one process and one SQLite file. This module is the next
step, in three parts that each run as their own process:

:func:`dispatch` (``payflow-lab dispatch``)
    one dispatcher process: it claims due events from the outbox with a
    lease (:meth:`.Outbox.claim`), delivers them over HTTP and writes each
    outcome only if its claim is still its own. It wakes on PostgreSQL's
    ``NOTIFY`` when new events are recorded, and polls as the fallback.
    Start as many as you like, on one machine or several.
:func:`serve_receivers` (``payflow-lab receivers``)
    the loopback receivers: one per merchant group plus analytics and
    audit, each with a ledger file that applies an event once and counts
    the repeats; it writes the routes file the dispatchers read.
:class:`Fleet` and :class:`ReceiverProcess`
    start, kill (SIGKILL), pause (SIGSTOP), resume and restart those
    processes from Python: the tests, ``payflow-lab bench`` and lesson 08
    use them.

What holds across processes, and what does not
==============================================

Holds, and tested (``tests/test_scaleout_kill.py``):

* **nothing is lost**: an event leaves ``pending`` only after a receiver
  acknowledged it, whichever process sent it, and a killed process's claims
  lapse with their lease and are taken over;
* **no event is held by two live claims**; a repeat happens only when a
  claim was taken over (its dispatcher died or paused past its lease), and
  the receiver's idempotency key absorbs it;
* **a fenced outcome**: a dispatcher whose lease was taken over cannot mark
  the event delivered, rescheduled or dead (``owner=`` on every write);
* **oldest first**: due events are claimed in ``(available_at, seq)`` order.

Does not hold across processes:

* **per-merchant delivery order**: it did not hold within one process
  either (several workers per side effect deliver at once); receivers order
  by the event's time, not by arrival;
* **per-merchant rate limits and circuit breakers** are each process's own:
  four dispatchers may send a merchant up to four times the rate one would.
  A shared limit needs shared state (a token bucket row per merchant,
  updated with each claim), which this module does not build.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.recorder import Recorder
from payflow_lab.core.validation import integer, number
from payflow_lab.core.world import World
from payflow_lab.durable.deliverer import Deliverer
from payflow_lab.durable.dispatcher import Dispatcher
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.outbox import Outbox, is_postgres_url
from payflow_lab.durable.receiver import Receiver, ReceiverServer
from payflow_lab.durable.stores import open_outbox
from payflow_lab.durable.transport import HttpLimits, HttpTransport, Routes
from payflow_lab.resilience import BreakerConfig, KeyedCircuitBreaker

__all__ = [
    "DispatchConfig",
    "Fleet",
    "ReceiverProcess",
    "dispatch",
    "load_payments",
    "serve_receivers",
]


@dataclass(frozen=True)
class DispatchConfig:
    """One dispatcher process (``payflow-lab dispatch``).

    ``workers`` concurrent deliveries per side effect; ``lease`` seconds a
    claim lasts (it must outlast one delivery: ``timeout`` plus a second);
    ``poll`` seconds between looks when no ``NOTIFY`` came; ``timeout``
    seconds one HTTP delivery may take; ``name`` the claimer's name (default
    host:pid); ``until_empty`` stops when nothing is pending; ``duration``
    stops after that many seconds; ``status_every`` seconds between status
    lines on stdout (0: none).
    """

    db: str
    routes: str
    workers: int = 8
    lease: float = 30.0
    poll: float = 1.0
    timeout: float = 5.0
    name: str | None = None
    until_empty: bool = False
    duration: float | None = None
    status_every: float = 0.5
    seed: int = 7

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or not self.db:
            raise ValidationError("db", f"must name an outbox (a postgresql:// URL or a file), got {self.db!r}")
        integer("workers", self.workers, minimum=1, maximum=1000)
        number("lease", self.lease, above=0, maximum=86_400, unit=" seconds")
        number("poll", self.poll, above=0, maximum=3600, unit=" seconds")
        number("timeout", self.timeout, above=0, maximum=3600, unit=" seconds")
        if self.lease <= self.timeout + 1.0:
            raise ValidationError(
                "lease",
                f"must be longer than one delivery (timeout {self.timeout:g} s + 1 s), got {self.lease:g} s",
            )
        number("duration", self.duration, above=0, unit=" seconds", optional=True)
        number("status_every", self.status_every, minimum=0, maximum=3600, unit=" seconds")
        integer("seed", self.seed, minimum=0)
        if self.name is not None and (not isinstance(self.name, str) or not 1 <= len(self.name) <= 200):
            raise ValidationError("name", f"must be 1 to 200 characters, got {self.name!r}")


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new soft limit.

    A receiver serves every dispatcher's connections, and a dispatcher keeps
    several per endpoint; sockets of a SIGKILLed peer stay open until the
    kernel and the server notice. A normal user's default soft limit (1024
    on Debian, against root's 20,000 here) ran out after about twenty kills:
    every accept failed, every breaker opened, and nothing was delivered
    again. Servers raise it at start for the same reason.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return int(soft)


async def dispatch(config: DispatchConfig, *, emit: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Run one dispatcher until SIGTERM/SIGINT, ``duration`` or (``until_empty``) an empty outbox; return its summary.

    ``emit`` receives a status dict every ``status_every`` seconds (the
    command prints each as one JSON line).
    """
    routes = Routes.load(config.routes)  # a bad routes file is refused before anything is claimed
    raise_open_files_limit()
    outbox = open_outbox(config.db, clock=time.time, offload=True)
    owner = config.name or f"{socket.gethostname()}:{os.getpid()}"
    started = time.time()
    stopped_by = "end"
    try:
        limits = HttpLimits.for_workers(config.workers, config.timeout)
        breakers: KeyedCircuitBreaker[str] = KeyedCircuitBreaker(
            BreakerConfig(failure_ratio=0.5, minimum_throughput=5, window_size=5.0, break_duration=1.0)
        )
        async with HttpTransport(routes, limits=limits) as transport:
            deliverer = Deliverer(transport, timeout=config.timeout, breakers=breakers)
            dispatcher = Dispatcher(
                outbox,
                deliverer,
                workers=config.workers,
                queue_size=config.workers,  # claim only what can start soon: a queued claim is a lease others wait on
                poll_interval=config.poll,
                delivery_timeout=config.timeout + 1.0,
                shutdown_deadline=2.0,
                max_attempts=50,
                backoff_base=0.2,
                backoff_cap=5.0,
                max_defer=3600.0,
                rng=random.Random(f"{config.seed}:{owner}"),
                owner=owner,
                lease=config.lease,
            )

            def status() -> dict[str, Any]:
                return {
                    "owner": owner,
                    "pid": os.getpid(),
                    "at": round(time.time(), 3),
                    "claimed": dispatcher.claimed,
                    "delivered": dispatcher.actions["delivered"],
                    "rescheduled": dispatcher.actions["rescheduled"] + dispatcher.actions["deferred"],
                    "in_flight": dispatcher.in_flight,
                    "lease_lost": dispatcher.lease_lost,
                }

            async with dispatcher, anyio.create_task_group() as tg:
                stop = anyio.Event()

                async def on_signal() -> None:
                    nonlocal stopped_by
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            stopped_by = signal.Signals(signum).name
                            stop.set()
                            return

                async def listen() -> None:
                    from payflow_lab.durable.postgres import PostgresOutbox

                    assert isinstance(outbox, PostgresOutbox)
                    listener = await anyio.to_thread.run_sync(outbox.listener)
                    try:
                        while True:
                            if await anyio.to_thread.run_sync(listener.wait, 0.5, abandon_on_cancel=True):
                                dispatcher.notify()
                    finally:
                        listener.close()

                async def report() -> None:
                    while emit is not None and config.status_every > 0:
                        emit(status())
                        await anyio.sleep(config.status_every)

                async def until_empty() -> None:
                    nonlocal stopped_by
                    while True:
                        await anyio.sleep(min(config.poll, 0.25))
                        if dispatcher.in_flight == 0 and await outbox.run(outbox.pending) == 0:
                            stopped_by = "empty"
                            stop.set()
                            return

                async def timer(seconds: float) -> None:
                    nonlocal stopped_by
                    await anyio.sleep(seconds)
                    stopped_by = "duration"
                    stop.set()

                if threading.current_thread() is threading.main_thread():
                    tg.start_soon(on_signal)
                if is_postgres_url(config.db):
                    tg.start_soon(listen)
                tg.start_soon(report)
                if config.until_empty:
                    tg.start_soon(until_empty)
                if config.duration is not None:
                    tg.start_soon(timer, config.duration)
                await stop.wait()
                tg.cancel_scope.cancel()
        summary = {
            "owner": owner,
            "db": outbox.path,
            "stopped_by": stopped_by,
            "seconds": round(time.time() - started, 3),
            **status(),
            "dispatcher": dispatcher.summary(),
            "http": {
                "statuses": {str(k): v for k, v in sorted(transport.statuses.items())},
                "errors": dict(sorted(transport.errors.items())),
            },
        }
        if emit is not None:
            emit({**status(), "final": True})
        return summary
    finally:
        outbox.close()


def load_payments(
    outbox: Outbox, count: int, *, seed: int = 7, kinds: tuple[str, ...] = ("webhook",), first: int = 1
) -> int:
    """Record ``count`` authorized payments of the world's merchants (by volume), with an event per ``kinds`` each.

    The payments are those a :class:`~payflow_lab.core.world.World` of
    ``seed`` draws, numbered from ``first`` (so a second load adds new
    ones); written in batches of one transaction each. Returns the number
    of events recorded.
    """
    integer("count", count, minimum=0, maximum=10_000_000)
    integer("first", first, minimum=1)
    world = World(seed=seed, scale=1.0, clock=outbox.clock, recorder=Recorder(outbox.clock))
    events = 0
    for n in range(first, first + count):
        drawn = world.new_payment()
        payment = type(drawn)(
            id=f"pay_{n:012x}",
            merchant_id=drawn.merchant_id,
            amount_cents=drawn.amount_cents,
            currency=drawn.currency,
            created_at=drawn.created_at,
        )
        events += len(outbox.record_authorization(payment, kinds=kinds))
    return events


# --------------------------------------------------------------------------------------------- receivers
def _ledger_name(name: str) -> str:
    return f"ledger-{name}.sqlite"


def _open_receivers(folder: str | os.PathLike[str], merchants: int, delay: float) -> tuple[Path, list[Receiver]]:
    """Check the settings and open each receiver's ledger (blocking: done before anything is served)."""
    integer("merchants", merchants, minimum=1, maximum=64)
    number("delay", delay, minimum=0, maximum=60, unit=" seconds")
    base = Path(folder)
    if not base.is_dir():
        raise ValidationError("dir", f"{base} is not a directory")
    names = [f"merchants-{i + 1}" for i in range(merchants)] + ["analytics", "audit"]
    receivers = [Receiver(name, ledger=ReceiverLedger(base / _ledger_name(name))) for name in names]
    for receiver in receivers:
        receiver.set_mode(delay=delay)
    return base, receivers


async def serve_receivers(
    folder: str | os.PathLike[str],
    *,
    merchants: int = 3,
    delay: float = 0.05,
    ready: Callable[[dict[str, Any]], Any] | None = None,
    stop: anyio.Event | None = None,
) -> dict[str, Any]:
    """Serve ``merchants`` webhook receivers plus analytics and audit on 127.0.0.1 until SIGTERM/SIGINT (or ``stop``).

    Each answers after ``delay`` seconds and keeps its ledger in
    ``folder`` (``ledger-NAME.sqlite``); ``folder/routes.json`` tells the
    dispatchers where they are (it holds the signing secrets: mode 0600).
    ``ready`` receives ``{"routes": path, "receivers": [...]}`` once every
    socket listens. Returns each receiver's counters.
    """
    base, receivers = _open_receivers(folder, merchants, delay)
    raise_open_files_limit()
    try:
        server = ReceiverServer(receivers)
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            routes = Routes(
                [r.endpoint for r in receivers[:merchants]],
                {"analytics": receivers[-2].endpoint, "audit": receivers[-1].endpoint},
            )
            path = base / "routes.json"
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(routes.as_dict(), out)
            os.replace(path.with_suffix(".tmp"), path)
            if ready is not None:
                ready({"routes": str(path), "receivers": [{"name": r.name, "url": r.url} for r in receivers]})
            if stop is None and threading.current_thread() is threading.main_thread():
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
            elif stop is not None:
                await stop.wait()
            server.stop()
        return {r.name: {k: v for k, v in r.stats().items() if k != "name"} for r in receivers}
    finally:
        for receiver in receivers:
            receiver.ledger.close()


# --------------------------------------------------------------------------------------------- processes
def _command() -> list[str]:
    return [sys.executable, "-m", "payflow_lab"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout, so a child imports this very code
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ReceiverProcess:
    """``payflow-lab receivers`` in a process of its own (``with ReceiverProcess(folder) as r: r.routes``).

    Separate from the dispatchers and from the caller, so that the
    receivers' work does not share a Python interpreter (and its GIL) with
    what is being measured.
    """

    def __init__(self, folder: str | os.PathLike[str], *, merchants: int = 3, delay: float = 0.05) -> None:
        self.folder = Path(folder)
        self.merchants = integer("merchants", merchants, minimum=1, maximum=64)
        self.delay = number("delay", delay, minimum=0, maximum=60, unit=" seconds")
        self.names = [f"merchants-{i + 1}" for i in range(merchants)] + ["analytics", "audit"]
        self.routes = str(self.folder / "routes.json")
        self._proc: subprocess.Popen[str] | None = None
        #: The receivers' counters, once stopped.
        self.final: dict[str, Any] | None = None

    def start(self, timeout: float = 60.0) -> ReceiverProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            *_command(),
            "receivers",
            "--dir",
            str(self.folder),
            "--merchants",
            str(self.merchants),
            "--delay",
            str(self.delay),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
        self._proc = proc
        assert proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline() if proc.stdout else ""))
        reader.start()
        reader.join(timeout)  # the first line says the sockets listen
        line = ready[0] if ready else ""
        if not line.strip():
            self.stop()
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"the receivers did not start within {timeout:g} s: {err.strip()[-2000:]}")
        return self

    @property
    def pid(self) -> int | None:
        """The receivers' process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self) -> dict[str, Any] | None:
        """SIGTERM, wait, and keep the receivers' final counters (``final``)."""
        proc = self._proc
        if proc is None:
            return self.final
        self._proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _err = proc.communicate()
        for line in reversed((out or "").splitlines()):
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict) and "receivers" in document and "final" in document:
                self.final = document["receivers"]
                break
        return self.final

    def ledgers(self) -> dict[str, dict[str, Any]]:
        """Each receiver's ledger, read from its file: ``event_ids``, ``applied``, ``duplicates``, ``deliveries``."""
        result: dict[str, dict[str, Any]] = {}
        for name in self.names:
            with ReceiverLedger(self.folder / _ledger_name(name)) as ledger:
                result[name] = {"event_ids": ledger.event_ids(), **ledger.stats()}
        return result

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class _Member:
    name: str
    generation: int
    proc: subprocess.Popen[str]
    status: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    log: list[str] = field(default_factory=list)


class Fleet:
    """Dispatcher processes on one outbox: :meth:`start`, :meth:`kill`, :meth:`pause`, :meth:`resume`, :meth:`stop`.

    Each process is ``payflow-lab dispatch`` with this fleet's settings and
    a name of its own (``dispatcher-1``, ...); a restarted one keeps its name
    and gets a new generation (``dispatcher-1#2``), which is the owner its
    claims are written under, so the dead generation's late writes are
    refused. Each process's latest status line is in :meth:`status`.
    """

    def __init__(
        self,
        db: str,
        routes: str | os.PathLike[str],
        *,
        workers: int = 8,
        lease: float = 5.0,
        poll: float = 0.5,
        timeout: float = 2.0,
        status_every: float = 0.25,
    ) -> None:
        self.settings = DispatchConfig(
            db=db,
            routes=str(routes),
            workers=workers,
            lease=lease,
            poll=poll,
            timeout=timeout,
            status_every=status_every,
        )
        self._members: dict[str, _Member] = {}
        self._lock = threading.Lock()
        #: Every process that ended, with how: ``(name#generation, "killed" | "stopped" | returncode)``.
        self.ended: list[tuple[str, Any]] = []
        self.kills = 0

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, generation: int) -> _Member:
        s = self.settings
        owner = f"{name}#{generation}"
        cmd = [
            *_command(),
            "dispatch",
            "--db",
            s.db,
            "--routes",
            s.routes,
            "--workers",
            str(s.workers),
            "--lease",
            str(s.lease),
            "--poll",
            str(s.poll),
            "--timeout",
            str(s.timeout),
            "--name",
            owner,
            "--status-every",
            str(s.status_every),
            "--json-lines",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
        member = _Member(name, generation, proc)
        threading.Thread(target=self._read, args=(member,), daemon=True, name=f"fleet {owner}").start()
        threading.Thread(target=self._read_err, args=(member,), daemon=True, name=f"fleet {owner} stderr").start()
        return member

    def _read(self, member: _Member) -> None:
        assert member.proc.stdout is not None
        for line in member.proc.stdout:
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if not isinstance(document, dict):
                continue
            with self._lock:
                if "dispatcher" in document:
                    member.final = document
                else:
                    member.status = document

    def _read_err(self, member: _Member) -> None:
        assert member.proc.stderr is not None
        for line in member.proc.stderr:
            member.log.append(line.rstrip())
            del member.log[:-50]

    def start(self, count: int = 1) -> list[str]:
        """Start ``count`` more dispatchers; return their names."""
        integer("count", count, minimum=1, maximum=64)
        names = []
        for _ in range(count):
            name = f"dispatcher-{len(self._members) + 1}"
            self._members[name] = self._spawn(name, 1)
            names.append(name)
        return names

    def _member(self, name: str) -> _Member:
        member = self._members.get(name)
        if member is None:
            raise ValidationError("name", f"no dispatcher {name!r} in this fleet (have: {', '.join(self._members)})")
        return member

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no release of its claims; they return when their leases lapse."""
        member = self._member(name)
        if member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait()
            self.kills += 1
            self.ended.append((f"{name}#{member.generation}", "killed"))

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its claims in memory but does nothing until :meth:`resume`."""
        self._member(name).proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self._member(name).proc.send_signal(signal.SIGCONT)

    def restart(self, name: str) -> None:
        """Start ``name`` again (killing it first if it runs), as its next generation."""
        member = self._member(name)
        self.kill(name)
        self._members[name] = self._spawn(name, member.generation + 1)

    def alive(self) -> list[str]:
        return [name for name, m in self._members.items() if m.proc.poll() is None]

    def status(self) -> dict[str, dict[str, Any]]:
        """Each dispatcher's latest status line (``claimed``, ``delivered``, ``in_flight``, ...) and ``alive``."""
        with self._lock:
            return {
                name: {**m.status, "alive": m.proc.poll() is None, "generation": m.generation}
                for name, m in self._members.items()
            }

    def logs(self, name: str) -> list[str]:
        """The last lines ``name`` wrote to stderr."""
        return list(self._member(name).log)

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM every live dispatcher (they give back their claims), wait; SIGKILL what does not end."""
        for member in self._members.values():
            if member.proc.poll() is None:
                member.proc.send_signal(signal.SIGCONT)
                member.proc.terminate()
        deadline = time.monotonic() + timeout
        for name, member in self._members.items():
            try:
                member.proc.wait(max(0.1, deadline - time.monotonic()))
                self.ended.append((f"{name}#{member.generation}", "stopped"))
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()
                self.ended.append((f"{name}#{member.generation}", "killed at stop"))
        return {name: m.final for name, m in self._members.items()}

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
