"""The hook bus: ``emit`` on the critical path, handlers on their own workers, shutdown with a deadline.

::

    bus = HookBus(timeout=5.0)                       # the story's global 5-second timeout

    @bus.on("payment.authorized", workers=20, queue_size=200)
    async def send_webhook(payment): ...

    bus.hook("payment.authorized", write_audit_log, name="audit", timeout=2.0)

    async with bus:                                  # workers start
        bus.emit("payment.authorized", payment)      # returns at once; never waits for a handler
        ...
        report = await bus.aclose(10)                # drain for up to 10 s, cancel the rest, report

The guarantees, each beside the hookz defect it answers:

all-or-nothing admission
    ``emit`` queues the delivery for every subscriber of the event, or for
    none, and says which (:class:`Rejected` names the full queue). hookz used
    one shared queue and, when it filled up mid-emission, had already queued
    the first hooks: a *partial fan-out* the caller could neither see nor undo.
isolation
    each subscriber has its own queue and workers. In hookz one worker pool
    served every hook, so a slow webhook starved the audit log.
timeouts by cancellation
    an anyio cancel scope around each handler call. hookz passed a
    ``context`` with a deadline that the handler had to check by itself.
shutdown with a deadline
    ``aclose(deadline)`` drains, cancels what is left, and reports; ``emit``
    during or after it raises :class:`BusClosed`. hookz's ``Close`` waited for
    ever for a stuck hook, and could panic when racing ``Emit``.
errors kept
    a failing handler is counted, kept with its traceback and passed to
    ``on_error``. hookz counted errors and panics, then threw them away.
latency per subscriber
    a histogram with percentiles for each hook; hookz measured none.

One consequence of all-or-nothing to keep in mind: a full subscriber whose
policy is :class:`~.overflow.Reject` refuses the emission *for everyone*. A
subscriber whose overflow should not veto the others gets a
:class:`~.overflow.Spill` policy (its copy goes to the spill store and the
rest are queued), or a queue sized for its worst hour.

The bus reads time only through ``anyio.current_time()`` and sleeps only
through anyio, so the same code runs on asyncio and trio, in real time and in
the virtual time of :mod:`payflow_lab.core.vtime`.

Threads: like anyio's ``send_nowait``, ``emit`` must be called from the
thread running the bus's event loop (from another thread, use
``anyio.from_thread.run_sync(bus.emit, event, payload)``). Within that thread
``emit`` runs without a checkpoint, so it is atomic: that is what makes
all-or-nothing admission and "emit racing close" simple and exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from inspect import iscoroutinefunction
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from payflow_lab.core.errors import BusClosed, BusNotStarted, Rejected
from payflow_lab.core.validation import integer, number
from payflow_lab.hooks.overflow import Delivery, OverflowPolicy, Reject, Spill, Wait
from payflow_lab.hooks.stats import HookFailure, Outcome, ShutdownReport, SubscriberShutdown, SubscriberStats
from payflow_lab.hooks.subscriber import Handler, Subscriber

__all__ = ["Handle", "HookBus"]

_NEW, _RUNNING, _CLOSING, _CLOSED = "new", "running", "closing", "closed"


class _Default:
    """Marker: use the bus's default for this setting."""

    def __repr__(self) -> str:
        return "<bus default>"


DEFAULT: Any = _Default()


def _is_async_callable(handler: Any) -> bool:
    return iscoroutinefunction(handler) or (callable(handler) and iscoroutinefunction(type(handler).__call__))


class Handle:
    """A registered hook. Read its settings and statistics; :meth:`unhook` removes it."""

    __slots__ = ("_bus", "_sub")

    def __init__(self, bus: HookBus, subscriber: Subscriber) -> None:
        self._bus = bus
        self._sub = subscriber

    @property
    def name(self) -> str:
        return self._sub.name

    @property
    def event(self) -> str:
        return self._sub.event

    @property
    def handler(self) -> Handler:
        return self._sub.handler

    @property
    def queue_size(self) -> int:
        return self._sub.capacity

    @property
    def workers(self) -> int:
        return self._sub.workers

    @property
    def timeout(self) -> float | None:
        return self._sub.timeout

    @property
    def overflow(self) -> OverflowPolicy:
        return self._sub.overflow

    @property
    def active(self) -> bool:
        """Whether the hook still receives emissions."""
        return self._sub.state in ("idle", "active")

    @property
    def queued(self) -> int:
        """Deliveries waiting in this hook's queue right now (cheap: for gauges)."""
        return len(self._sub.queue)

    def queue_depth(self) -> int:
        """:attr:`queued` as a method: a gauge to hand to ``Recorder.add_gauge``, read at every sample."""
        return len(self._sub.queue)

    @property
    def running(self) -> int:
        """Handler calls in progress right now."""
        return self._sub.running

    def stats(self) -> SubscriberStats:
        return self._sub.stats()

    def unhook(self) -> None:
        """Stop receiving emissions. Deliveries already queued are still run (under the timeout); idempotent."""
        self._bus._unhook(self._sub)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and other._sub is self._sub

    def __hash__(self) -> int:
        return id(self._sub)

    def __repr__(self) -> str:
        state = "active" if self.active else self._sub.state
        return f"<Handle {self.name!r} on {self.event!r}, {state}>"


class _Side:
    """The bus as its subscribers see it (:class:`~.subscriber.BusSide`): three callbacks, nothing else."""

    __slots__ = ("settled", "handler_failed", "worker_exited")

    def __init__(self, bus: HookBus) -> None:
        self.settled = bus._settled
        self.handler_failed = bus._failed
        self.worker_exited = bus._worker_exited


class HookBus:
    """An in-process publish/subscribe bus whose handlers run on bounded, per-subscriber worker pools.

    Defaults apply to every hook that does not set its own:

    ``timeout``
        seconds a handler call may run before it is cancelled (``None``: no
        limit, which the bus allows but a payment system should not use).
    ``queue_size``, ``workers``, ``overflow``
        each subscriber's queue capacity, worker count and overflow policy
        (:class:`~.overflow.Reject` unless told otherwise).
    ``shutdown_deadline``
        seconds :meth:`aclose` (and leaving ``async with``) gives queued and
        running deliveries before cancelling them.
    ``cancel_grace``
        after cancelling, how long shutdown waits for handlers to actually
        stop; one still running then ignores cancellation and is reported as
        *abandoned* instead of holding shutdown hostage.
    ``on_error(failure)``
        called with a :class:`~.report.HookFailure` whenever a handler raises.
    ``on_outcome(outcome)``
        called once for every admitted delivery when it ends (completed,
        failed, timed out, cancelled or never started): the hook a caller uses
        to keep its own books, as Phase 4 does with the run's recorder.
    ``failure_history``
        how many recent failures (with tracebacks) each subscriber keeps.

    Callbacks are plain functions, called on the event loop by the worker (or,
    for deliveries that never started, by the task closing the bus); one that
    raises is counted in ``callback_errors`` and otherwise ignored, so it
    cannot kill a worker or break a shutdown.
    """

    def __init__(
        self,
        *,
        timeout: float | None = 5.0,
        queue_size: int = 1000,
        workers: int = 4,
        overflow: OverflowPolicy | None = None,
        shutdown_deadline: float = 10.0,
        cancel_grace: float = 1.0,
        on_error: Callable[[HookFailure], Any] | None = None,
        on_outcome: Callable[[Outcome], Any] | None = None,
        failure_history: int = 20,
    ) -> None:
        self.timeout = number("timeout", timeout, above=0, unit=" seconds", optional=True)
        self.queue_size = integer("queue_size", queue_size, minimum=1, maximum=10_000_000)
        self.workers = integer("workers", workers, minimum=1, maximum=10_000)
        self.overflow = Reject() if overflow is None else self._check_overflow(overflow)
        self.shutdown_deadline = number("shutdown_deadline", shutdown_deadline, minimum=0, unit=" seconds")
        self.cancel_grace = number("cancel_grace", cancel_grace, minimum=0, unit=" seconds")
        for name, callback in (("on_error", on_error), ("on_outcome", on_outcome)):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable or None, got {type(callback).__name__}")
        self.on_error = on_error
        self.on_outcome = on_outcome
        self.failure_history = integer("failure_history", failure_history, minimum=0)
        self._routes: dict[str, tuple[Subscriber, ...]] = {}
        self._subscribers: dict[str, Subscriber] = {}
        self._state = _NEW
        self._side = _Side(self)
        self._tg: anyio.abc.TaskGroup | None = None
        self._workers: anyio.abc.TaskGroup | None = None
        self._live = 0
        self._exited: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._report: ShutdownReport | None = None
        #: Emissions of an event nobody had hooked (not an error: nothing was lost).
        self.unheard = 0
        #: Emissions refused because the bus was closing or closed.
        self.rejected_after_close = 0
        #: Exceptions raised by ``on_error`` / ``on_outcome`` (counted, then ignored).
        self.callback_errors = 0

    @staticmethod
    def _check_overflow(overflow: Any) -> OverflowPolicy:
        if not isinstance(overflow, OverflowPolicy):
            raise TypeError(f"overflow must be Reject(), Wait(max_wait) or Spill(store), got {overflow!r}")
        return overflow

    # ------------------------------------------------------------ registration
    def hook(
        self,
        event: str,
        handler: Handler,
        *,
        name: str | None = None,
        queue_size: int | Any = DEFAULT,
        workers: int | Any = DEFAULT,
        timeout: float | None | Any = DEFAULT,
        overflow: OverflowPolicy | Any = DEFAULT,
    ) -> Handle:
        """Run ``handler(payload)`` for every ``event`` emitted from now on; return its :class:`Handle`.

        ``name`` (default: the handler's ``__name__``) must be unique on this
        bus for its whole life, so that statistics and reports never mix two
        hooks up. Every argument is checked before anything is registered.
        """
        if self._state in (_CLOSING, _CLOSED):
            raise BusClosed(f"cannot hook {event!r}: the bus is {self._state}")
        if not isinstance(event, str) or not event:
            raise ValueError(f"event must be a non-empty string, got {event!r}")
        if not _is_async_callable(handler):
            raise TypeError(
                f"handler must be an async function (async def), got {handler!r}; a plain function "
                "would run on the event loop and block every other task while it runs"
            )
        if name is None:
            name = getattr(handler, "__name__", None) or type(handler).__name__
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if name in self._subscribers:
            raise ValueError(f"name: a hook called {name!r} already exists on this bus; pass a different name=")
        queue_size = (
            self.queue_size
            if queue_size is DEFAULT
            else integer("queue_size", queue_size, minimum=1, maximum=10_000_000)
        )
        workers = self.workers if workers is DEFAULT else integer("workers", workers, minimum=1, maximum=10_000)
        timeout = (
            self.timeout if timeout is DEFAULT else number("timeout", timeout, above=0, unit=" seconds", optional=True)
        )
        overflow = self.overflow if overflow is DEFAULT else self._check_overflow(overflow)
        if isinstance(overflow, Spill):
            for other in self._routes.get(event, ()):
                if isinstance(other.overflow, Spill) and other.overflow.store is not overflow.store:
                    raise ValueError(
                        f"overflow: hooks of {event!r} that spill must share one store "
                        f"({other.name!r} uses another), or one emission could be half spilled"
                    )
        subscriber = Subscriber(
            self._side,
            event,
            handler,
            name=name,
            queue_size=queue_size,
            workers=workers,
            timeout=timeout,
            overflow=overflow,
            failure_history=self.failure_history,
        )
        self._subscribers[name] = subscriber
        self._routes[event] = self._routes.get(event, ()) + (subscriber,)
        if self._state is _RUNNING:
            self._start(subscriber)
        return Handle(self, subscriber)

    def on(self, event: str, **options: Any) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`hook`; returns the function unchanged (find its handle with :meth:`hooks`)."""

        def decorator(handler: Handler) -> Handler:
            self.hook(event, handler, **options)
            return handler

        return decorator

    def hooks(self, event: str | None = None) -> list[Handle]:
        """The active hooks (of ``event``, or of every event), in the order they were registered."""
        return [
            Handle(self, s)
            for s in self._subscribers.values()
            if s.state in ("idle", "active") and (event is None or s.event == event)
        ]

    def unhook(self, name: str) -> None:
        """Remove the hook called ``name`` (see :meth:`Handle.unhook`)."""
        try:
            subscriber = self._subscribers[name]
        except KeyError:
            raise ValueError(f"name: no hook called {name!r} on this bus") from None
        self._unhook(subscriber)

    def _unhook(self, subscriber: Subscriber) -> None:
        if subscriber.state not in ("idle", "active"):
            return
        subscriber.state = "unhooked"
        # Copy-on-write: an emit in progress keeps the tuple it already read.
        remaining = tuple(s for s in self._routes.get(subscriber.event, ()) if s is not subscriber)
        if remaining:
            self._routes[subscriber.event] = remaining
        else:
            self._routes.pop(subscriber.event, None)
        subscriber.begin_drain()

    # ----------------------------------------------------------------- emitting
    def emit(self, event: str, payload: Any = None) -> int:
        """Queue ``payload`` for every subscriber of ``event``, or for none; never wait for a handler.

        Returns how many subscribers received it (queued, or spilled by their
        overflow policy); 0 if nobody listens to ``event``. Raises
        :class:`Rejected` if a subscriber refused it (nothing was queued
        anywhere; the rejection is already counted), :class:`BusClosed` once
        shutdown has begun, :class:`BusNotStarted` before ``async with bus``.
        """
        if self._state is not _RUNNING:
            self._refuse(event)
        subscribers = self._routes.get(event)
        if not subscribers:
            self.unheard += 1
            return 0
        for sub in subscribers:
            if len(sub.queue) >= sub.capacity:
                return self._admit_crowded(event, payload, subscribers, may_wait=False)  # type: ignore[return-value]
        for sub in subscribers:
            sub.queue.append(payload)
            sub.admitted += 1
            if sub.parked:
                sub.parked.pop().set()
        return len(subscribers)

    async def emit_wait(self, event: str, payload: Any = None) -> int:
        """Like :meth:`emit`, but a full subscriber whose policy is :class:`~.overflow.Wait` makes it wait.

        It waits, up to that subscriber's ``max_wait`` (counted from the call),
        until every subscriber has room at the same moment, and then admits the
        delivery to all of them at once. It raises :class:`Rejected` if the
        wait runs out (nothing queued) and :class:`BusClosed` if shutdown
        begins meanwhile. Being async, it is a checkpoint: a cancelled caller
        is refused before anything is admitted.
        """
        await anyio.lowlevel.checkpoint()
        started: float | None = None
        while True:
            if self._state is not _RUNNING:
                self._refuse(event)
            subscribers = self._routes.get(event)
            if not subscribers:
                self.unheard += 1
                return 0
            result = self._admit_crowded(event, payload, subscribers, may_wait=True)
            if isinstance(result, int):
                return result
            policy = result.overflow
            assert isinstance(policy, Wait)
            now = anyio.current_time()
            if started is None:
                started = now
            deadline = started + policy.max_wait
            if now >= deadline:
                self._reject(event, subscribers, [(result, f"queue full for {policy.max_wait:g} s")])
            room = anyio.Event()
            result.space_waiters.append(room)
            try:
                with anyio.move_on_at(deadline):
                    await room.wait()
            finally:
                if not room.is_set():
                    result.space_waiters.remove(room)

    def _refuse(self, event: str) -> None:
        if self._state is _NEW:
            raise BusNotStarted(f"cannot emit {event!r}: the bus has not been started (use `async with bus:`)")
        self.rejected_after_close += 1
        raise BusClosed(f"cannot emit {event!r}: the bus is {self._state}")

    def _admit_crowded(
        self, event: str, payload: Any, subscribers: tuple[Subscriber, ...], *, may_wait: bool
    ) -> int | Subscriber:
        """The slow path of admission: some queue is full. Decide for every subscriber first, then act.

        Returns the number of subscribers served, or (only if ``may_wait``)
        the first full subscriber with a :class:`Wait` policy, for the caller
        to wait on. Raises :class:`Rejected` with nothing queued.
        """
        spill: list[Subscriber] = []
        blocked: list[tuple[Subscriber, str]] = []
        wait_for: Subscriber | None = None
        for sub in subscribers:
            if len(sub.queue) < sub.capacity:
                continue
            policy = sub.overflow
            if isinstance(policy, Spill):
                spill.append(sub)
            elif isinstance(policy, Wait):
                if may_wait:
                    wait_for = wait_for or sub
                else:
                    blocked.append((sub, "queue full (its policy is to wait, which only emit_wait() can do)"))
            else:
                blocked.append((sub, "queue full"))
        if blocked:
            self._reject(event, subscribers, blocked)
        if wait_for is not None:
            return wait_for
        if spill:
            store = spill[0].overflow.store  # type: ignore[attr-defined]  # one store per event (checked in hook)
            try:
                store.spill([Delivery(event, sub.name, payload) for sub in spill])
            except Exception as exc:
                why = f"queue full and spill store failed: {type(exc).__name__}: {exc}"
                self._reject(event, subscribers, [(sub, why) for sub in spill])
            for sub in spill:
                sub.spilled += 1
        for sub in subscribers:
            if sub in spill:
                continue
            sub.queue.append(payload)
            sub.admitted += 1
            if sub.parked:
                sub.parked.pop().set()
        return len(subscribers)

    def _reject(self, event: str, subscribers: Iterable[Subscriber], blocked: list[tuple[Subscriber, str]]) -> None:
        """Count a refused emission on every subscriber of the event, with its reason, and raise."""
        culprits = {sub.name: reason for sub, reason in blocked}
        first_name, first_reason = blocked[0][0].name, blocked[0][1]
        reasons: dict[str, str] = {}
        for sub in subscribers:
            reason = culprits.get(sub.name) or f"rejected with the emission ({first_name}: {first_reason})"
            sub.rejected += 1
            sub.rejected_reasons[reason] += 1
            reasons[sub.name] = reason
        raise Rejected(event, reasons, tuple(culprits))

    # ----------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> HookBus:
        if self._state is not _NEW:
            raise RuntimeError(f"a HookBus can be started once; this one is {self._state}")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await tg.start(self._supervise)
        except BaseException as exc:
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._state = _RUNNING
        for sub in self._subscribers.values():
            if sub.state == "idle":
                self._start(sub)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        try:
            if self._state in (_RUNNING, _CLOSING):
                # Leaving because of an error (or a cancellation): stop now, but still account for everything.
                deadline = self.shutdown_deadline if exc_type is None else 0.0
                with anyio.CancelScope(shield=True):
                    await self.aclose(deadline)
        finally:
            # The body's exception is the caller's, not the task group's: passing it on would
            # wrap it in an ExceptionGroup. Python re-raises it unchanged when we return None.
            await self._tg.__aexit__(None, None, None)
        return None

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the workers in a task group of their own.

        The cancel scope of a task group covers the body of its ``async with``
        too. Were the workers started in the outer group, cancelling them at
        the shutdown deadline would also cancel the code that called
        ``aclose`` inside ``async with bus:``. This inner group, hosted by a
        task that does nothing else, can be cancelled alone.
        """
        async with anyio.create_task_group() as workers:
            self._workers = workers
            task_status.started()
            await anyio.sleep_forever()

    def _start(self, sub: Subscriber) -> None:
        assert self._workers is not None
        sub.state = "active"
        for worker in range(sub.workers):
            self._live += 1
            self._workers.start_soon(sub.work, name=f"hook {sub.name!r} worker {worker}")

    def _worker_exited(self) -> None:
        self._live -= 1
        if self._live == 0 and self._exited is not None:
            self._exited.set()

    async def aclose(self, deadline: float | None = None, *, cancel_grace: float | None = None) -> ShutdownReport:
        """Shut down: admit nothing more, drain for up to ``deadline`` seconds, then cancel; report.

        ``deadline`` is a duration from now (like ``anyio.move_on_after``),
        ``None`` for the bus's ``shutdown_deadline``; 0 cancels at once. When
        it passes, deliveries still queued are counted *never started* (and
        handed to the spill store, for a :class:`~.overflow.Spill`
        subscriber), and running handlers are cancelled. Handlers that are
        still running ``cancel_grace`` seconds later ignore cancellation: they
        are reported *abandoned*, and ``aclose`` returns anyway: a stuck hook
        cannot hold shutdown hostage. (Python cannot kill a task: an abandoned
        handler keeps running until it ends by itself, and the task group of
        ``async with bus`` waits for it; the report says who it is.)

        Safe to call more than once and from several tasks: every caller gets
        the same report. Emitting meanwhile raises :class:`BusClosed`.
        """
        deadline = (
            self.shutdown_deadline if deadline is None else number("deadline", deadline, minimum=0, unit=" seconds")
        )
        grace = (
            self.cancel_grace
            if cancel_grace is None
            else number("cancel_grace", cancel_grace, minimum=0, unit=" seconds")
        )
        if self._state in (_CLOSING, _CLOSED):
            assert self._closed is not None
            await self._closed.wait()
            assert self._report is not None
            return self._report
        self._closed = anyio.Event()
        started = anyio.current_time()
        subscribers = list(self._subscribers.values())
        before: dict[str, tuple[int, ...]] = {
            s.name: (s.completed, s.failed, s.timed_out, s.cancelled, s.never_started) for s in subscribers
        }
        spilled: dict[str, int] = {s.name: 0 for s in subscribers}
        if self._state is _NEW:
            self._state = _CLOSED
        else:
            self._state = _CLOSING
        exited = self._exited = anyio.Event()
        if self._live == 0:
            exited.set()
        for sub in subscribers:
            sub.begin_drain()
        stopped = False

        def unfinished() -> bool:
            # Workers still running, or (if something cancelled them from outside) work left queued.
            return not exited.is_set() or any(sub.queue for sub in subscribers)

        try:
            with anyio.move_on_after(deadline):
                await self._exited.wait()
            if unfinished():
                stopped = True
                self._stop_now(subscribers, spilled)
                with anyio.move_on_after(grace):
                    await self._exited.wait()
        finally:
            if not stopped and unfinished():  # our caller was cancelled mid-shutdown
                self._stop_now(subscribers, spilled)
            report = self._shutdown_report(deadline, started, subscribers, before, spilled)
            self._state = _CLOSED
            for sub in subscribers:
                sub.state = "closed"
            self._report = report
            self._closed.set()
            if self._workers is not None:
                self._workers.cancel_scope.cancel()  # lets the supervisor go (the workers have left)
        return report

    def _stop_now(self, subscribers: list[Subscriber], spilled: dict[str, int]) -> None:
        for sub in subscribers:
            _, spilled[sub.name] = sub.discard_queue()
        if self._workers is not None:
            self._workers.cancel_scope.cancel()

    def _shutdown_report(
        self,
        deadline: float,
        started: float,
        subscribers: list[Subscriber],
        before: dict[str, tuple[int, ...]],
        spilled: dict[str, int],
    ) -> ShutdownReport:
        per: dict[str, SubscriberShutdown] = {}
        for sub in subscribers:
            completed, failed, timed_out, cancelled, never_started = before[sub.name]
            never = sub.never_started - never_started
            per[sub.name] = SubscriberShutdown(
                completed=sub.completed - completed,
                failed=sub.failed - failed,
                timed_out=sub.timed_out - timed_out,
                cancelled=sub.cancelled - cancelled - never,
                never_started=never,
                spilled=spilled[sub.name],
                abandoned=sub.running,
            )
        drained = all(s.never_started == 0 and s.cancelled == 0 and s.abandoned == 0 for s in per.values())
        return ShutdownReport(
            deadline=deadline,
            drained=drained,
            elapsed=anyio.current_time() - started,
            subscribers=per,
            rejected_after_close=self.rejected_after_close,
        )

    # --------------------------------------------------------------- callbacks
    def _settled(self, outcome: Outcome) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:
                self.callback_errors += 1

    def _failed(self, failure: HookFailure) -> None:
        if self.on_error is not None:
            try:
                self.on_error(failure)
            except Exception:
                self.callback_errors += 1

    # ----------------------------------------------------------------- reading
    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"closing"`` or ``"closed"``."""
        return self._state

    @property
    def report(self) -> ShutdownReport | None:
        """The shutdown report, once :meth:`aclose` has finished."""
        return self._report

    def stats(self) -> dict[str, SubscriberStats]:
        """Every subscriber's statistics (unhooked ones included), by name."""
        return {name: sub.stats() for name, sub in self._subscribers.items()}

    def failures(self, name: str | None = None) -> list[HookFailure]:
        """Recent handler failures with their tracebacks (of one subscriber, or of all), oldest first."""
        subs = self._subscribers.values() if name is None else [self._subscribers[name]]
        return sorted((f for s in subs for f in s.recent_failures), key=lambda f: f.at)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready snapshot: per-subscriber statistics, bus counters and the shutdown report.

        The cumulative latency buckets are left out to keep a run summary
        readable; :meth:`stats` has them (``latency_buckets``) for exporters.
        """
        subscribers = {}
        for name, stats in self.stats().items():
            data = stats.as_dict()
            del data["latency_buckets"]
            subscribers[name] = data
        return {
            "subscribers": subscribers,
            "unheard": self.unheard,
            "rejected_after_close": self.rejected_after_close,
            "callback_errors": self.callback_errors,
            "shutdown": None if self._report is None else self._report.as_dict(),
        }
