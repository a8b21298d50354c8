"""A circuit breaker: stop calling an endpoint that is failing, and find out when it is back.

In Phase 5 every merchant's webhook endpoint gets its own breaker. While an
endpoint fails, its breaker *opens* and its deliveries are deferred at once
instead of each one waiting out a 5 s timeout; after a pause, a single probe
call finds out whether the endpoint has recovered.

The three states::

             failure ratio >= threshold over the window
             (once minimum_throughput calls were seen),
             or N consecutive failures
    CLOSED ─────────────────────────────────────────────▶ OPEN
       ▲                                                   │  ▲
       │ all half_open_probes          break_duration      │  │ a probe
       │ probes succeeded              elapsed, and a call │  │ failed
       │                               attempt arrives     ▼  │
       └────────────────────────────────────────────── HALF_OPEN

``closed``
    calls pass; each outcome goes into a sliding window (the last N calls, or
    the calls of the last N seconds). Once the window holds at least
    ``minimum_throughput`` calls and the share of failures reaches
    ``failure_ratio``, the breaker opens (resilience4j's and Polly v8's rule).
``open``
    calls are rejected at once with :class:`BreakerOpen`, whose
    ``retry_after`` says when the break ends.
``half_open``
    exactly ``half_open_probes`` calls are let through (default 1, as in
    Polly); every other call is rejected. One failed probe reopens the
    breaker for another ``break_duration``; once all probes have succeeded it
    closes with an empty window.

Two choices worth knowing
-------------------------
*Reading never changes the state.* :attr:`CircuitBreaker.state` reports the
state a call would meet *now*: an open breaker whose break has elapsed reads
as ``half_open``. But the transition itself (the event in
:attr:`CircuitBreaker.transitions`, the listeners' callback) happens on the
next call attempt, because that is the moment a probe is actually sent. So a
dashboard may poll the breaker as often as it likes without moving it, and
the ``open -> half_open`` event carries the time of the first probe, not the
time the break ended.

*History is bounded.* A breaker flapping through a four-hour outage makes
thousands of transitions. Each breaker keeps the last ``history`` of them
(default :data:`HISTORY`, 10) in :attr:`CircuitBreaker.transitions`, and
counts all of them (:attr:`CircuitBreaker.transitions_total`,
:attr:`CircuitBreaker.transition_counts` by ``(from, to)``,
:attr:`CircuitBreaker.times_opened`), so its memory stays flat however long
the outage lasts; the counts are what the Prometheus counters report. Listeners
still see every transition.

*Outcomes are reported on a permit.* :meth:`CircuitBreaker.allow` returns a
:class:`Permit` (or ``None`` when the call is rejected), and the caller
reports the call's outcome on that permit. A permit remembers which period of
the breaker admitted it, so a slow call admitted before the breaker opened
cannot close it afterwards with a late success, and a probe cancelled by
shutdown (:meth:`Permit.release`) frees its slot instead of jamming the
breaker half-open for ever (a known trap of breakers that count probes but
not abandoned probes). Nothing here awaits: in one event loop every decision
is atomic, which is what makes "exactly N probes" hold under any number of
concurrent callers.

Why not a library: pybreaker, aiobreaker and purgatory neither bound the
calls admitted in half-open nor run on trio; this module is anyio-neutral
(it only reads a clock, by default :func:`anyio.current_time`, so it runs in
virtual time).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from payflow_lab.core.enums import TextEnum
from payflow_lab.core.errors import BreakerOpen, ValidationError
from payflow_lab.core.validation import Clock, default_clock, exception_types, integer, number

__all__ = [
    "BreakerConfig",
    "BreakerOpen",
    "BreakerState",
    "CircuitBreaker",
    "HISTORY",
    "KEYED_HISTORY",
    "KeyedCircuitBreaker",
    "Permit",
    "Transition",
    "WindowStats",
]

T = TypeVar("T")
K = TypeVar("K")


class BreakerState(TextEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker decides. Validated on construction; one config can serve many breakers.

    ``window_type`` is ``"time"`` (``window_size`` seconds, like Polly's
    ``SamplingDuration``) or ``"count"`` (the last ``window_size`` calls, like
    resilience4j's count-based window). ``failure_ratio=None`` turns the
    ratio rule off, leaving only ``consecutive_failures``; at least one of
    the two rules must be on.
    """

    failure_ratio: float | None = 0.5
    minimum_throughput: int = 10
    window_type: str = "time"
    window_size: float = 30.0
    consecutive_failures: int | None = None
    break_duration: float = 10.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_ratio is None and self.consecutive_failures is None:
            raise ValidationError(
                "failure_ratio",
                "is None and so is consecutive_failures: the breaker could never open; set at least one",
            )
        if self.failure_ratio is not None:
            number("failure_ratio", self.failure_ratio, above=0.0, maximum=1.0)
        integer("minimum_throughput", self.minimum_throughput, minimum=1)
        if self.window_type == "count":
            integer("window_size", self.window_size, minimum=1)
            if self.window_size < self.minimum_throughput:
                raise ValidationError(
                    "window_size",
                    f"a count window of {self.window_size} calls can never reach "
                    f"minimum_throughput={self.minimum_throughput}",
                )
        elif self.window_type == "time":
            number("window_size", self.window_size, above=0.0)
        else:
            raise ValidationError("window_type", f"must be 'time' or 'count', got {self.window_type!r}")
        if self.consecutive_failures is not None:
            integer("consecutive_failures", self.consecutive_failures, minimum=1)
        number("break_duration", self.break_duration, above=0.0)
        integer("half_open_probes", self.half_open_probes, minimum=1)


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state: when (the breaker's clock), which breaker, from what, to what, and why."""

    at: float
    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "name": self.name,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What the closed-state window holds right now."""

    calls: int
    failures: int

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


class _CountWindow:
    """The outcomes of the last ``size`` calls."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[bool] = deque()
        self._size = size
        self._failures = 0

    def add(self, failed: bool, now: float) -> None:
        if len(self._outcomes) == self._size:
            self._failures -= self._outcomes.popleft()
        self._outcomes.append(failed)
        self._failures += failed

    def stats(self, now: float) -> WindowStats:
        return WindowStats(len(self._outcomes), self._failures)

    def clear(self) -> None:
        self._outcomes.clear()
        self._failures = 0


class _TimeWindow:
    """The outcomes recorded in the last ``seconds``.

    Exact, not bucketed: an outcome recorded at ``t`` counts while ``now - t < seconds``.
    """

    def __init__(self, seconds: float) -> None:
        self._entries: deque[tuple[float, bool]] = deque()
        self._seconds = seconds
        self._failures = 0

    def add(self, failed: bool, now: float) -> None:
        entries = self._entries
        while entries and now - entries[0][0] >= self._seconds:
            self._failures -= entries.popleft()[1]
        entries.append((now, failed))
        self._failures += failed

    def stats(self, now: float) -> WindowStats:
        # A pure read: count the expired prefix instead of evicting it.
        calls, failures = len(self._entries), self._failures
        for at, failed in self._entries:
            if now - at < self._seconds:
                break
            calls -= 1
            failures -= failed
        return WindowStats(calls, failures)

    def clear(self) -> None:
        self._entries.clear()
        self._failures = 0


class Permit:
    """The right to make one call. Report its outcome exactly once (or release it)."""

    __slots__ = ("_breaker", "_period", "probe", "settled")

    def __init__(self, breaker: CircuitBreaker, period: int, probe: bool) -> None:
        self._breaker = breaker
        self._period = period
        #: Whether this call is a half-open probe.
        self.probe = probe
        #: Whether an outcome (or a release) was already reported.
        self.settled = False

    def record_success(self) -> None:
        """The call succeeded."""
        self._settle()._outcome(self._period, self.probe, failed=False)

    def record_failure(self) -> None:
        """The call failed in a way that says the endpoint is unhealthy (error, timeout)."""
        self._settle()._outcome(self._period, self.probe, failed=True)

    def release(self) -> None:
        """The call ended without a verdict on the endpoint (cancelled, shut down): free the slot, count nothing."""
        self._settle()._release(self._period, self.probe)

    def _settle(self) -> CircuitBreaker:
        if self.settled:
            raise RuntimeError("this permit's outcome was already reported")
        self.settled = True
        return self._breaker


#: How many transitions a :class:`CircuitBreaker` keeps (the most recent); older ones are only counted.
HISTORY = 10
#: How many a :class:`KeyedCircuitBreaker` keeps, all its breakers together.
KEYED_HISTORY = 1_000


class CircuitBreaker:
    """One breaker, for one endpoint. See the module docstring for the semantics.

    ``clock`` returns monotonic seconds (default :func:`anyio.current_time`;
    Phase 5 passes the world's story clock so that transitions carry story
    times). ``on_transition`` listeners are called synchronously, after the
    state has changed, with the :class:`Transition`; they must not block
    (and an exception from one reaches the caller of the call attempt, with
    the breaker already consistent).
    ``failure_on`` says which exceptions raised inside :meth:`guard` or
    :meth:`run` count as failures; other exceptions (and cancellation) release
    the permit without a verdict. ``history`` is how many transitions
    :attr:`transitions` keeps (the most recent; all are counted).
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        name: str = "breaker",
        clock: Clock | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        failure_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        history: int = HISTORY,
    ) -> None:
        if config is None:
            config = BreakerConfig()
        if not isinstance(config, BreakerConfig):
            raise ValidationError("config", f"must be a BreakerConfig, got {type(config).__name__}")
        if not isinstance(name, str) or not name:
            raise ValidationError("name", f"must be a non-empty string, got {name!r}")
        if on_transition is not None and not callable(on_transition):
            raise ValidationError("on_transition", f"must be callable, got {on_transition!r}")
        integer("history", history, minimum=1)
        self.config = config
        self.name = name
        self.failure_on = exception_types("failure_on", failure_on)
        self._clock = default_clock(clock)
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(int(config.window_size))
            if config.window_type == "count"
            else _TimeWindow(float(config.window_size))
        )
        self._state = BreakerState.CLOSED
        self._period = 0  # bumped on every transition; permits from older periods are stale
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes_out = 0
        self._probes_passed = 0
        self._listeners: list[Callable[[Transition], None]] = [on_transition] if on_transition else []
        #: The last ``history`` transitions, oldest first.
        self.transitions: deque[Transition] = deque(maxlen=history)
        #: Every transition ever made, counted: in all, by ``(from_state, to_state)``, and how often it opened.
        self.transitions_total = 0
        self.transition_counts: Counter[tuple[BreakerState, BreakerState]] = Counter()
        self.times_opened = 0
        #: Calls admitted, calls rejected, and outcomes reported (stale ones are not counted in the window).
        self.admitted = 0
        self.rejected = 0
        self.successes = 0
        self.failures = 0
        self.stale_outcomes = 0

    # ---------------------------------------------------------------- reading (pure)
    @property
    def state(self) -> BreakerState:
        """The state a call attempt would meet now. Never changes anything."""
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.config.break_duration:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def recorded_state(self) -> BreakerState:
        """The state as of the last transition, without reading the clock (safe from any thread).

        Differs from :attr:`state` only for an open breaker whose break has
        elapsed and which no call has tried since: ``open`` here, ``half_open`` there.
        """
        return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker's break ends (0.0 if it is not open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.break_duration - self._clock())

    def window(self) -> WindowStats:
        """Calls and failures in the closed-state window now (empty while open or half-open)."""
        return self._window.stats(self._clock())

    def add_listener(self, listener: Callable[[Transition], None]) -> None:
        """Call ``listener(transition)`` on every future transition."""
        if not callable(listener):
            raise ValidationError("listener", f"must be callable, got {listener!r}")
        self._listeners.append(listener)

    # ------------------------------------------------------------------ deciding
    def allow(self) -> Permit | None:
        """Admit one call (a :class:`Permit`) or reject it (``None``). Never waits."""
        now = self._clock()
        config = self.config
        if self._state is BreakerState.OPEN:
            if now < self._opened_at + config.break_duration:
                self.rejected += 1
                return None
            self._move(BreakerState.HALF_OPEN, now, f"break of {config.break_duration:g}s over: probing")
        if self._state is BreakerState.HALF_OPEN:
            if self._probes_out + self._probes_passed >= config.half_open_probes:
                self.rejected += 1
                return None
            self._probes_out += 1
            self.admitted += 1
            return Permit(self, self._period, probe=True)
        self.admitted += 1
        return Permit(self, self._period, probe=False)

    def acquire(self) -> Permit:
        """Like :meth:`allow`, but raise :class:`BreakerOpen` instead of returning ``None``."""
        permit = self.allow()
        if permit is None:
            state = self._state
            raise BreakerOpen(self.name, state, self.retry_after if state is BreakerState.OPEN else None)
        return permit

    @contextmanager
    def guard(self) -> Iterator[Permit]:
        """``with breaker.guard(): await call()`` — admit, run the block, record its outcome.

        Raises :class:`BreakerOpen` without running the block when rejected.
        Put the call's timeout *inside* the block (``with anyio.fail_after(5)``)
        so that a timeout counts as a failure; a cancellation from outside
        only releases the permit. A plain ``with``: deciding never awaits.
        """
        permit = self.acquire()
        try:
            yield permit
        except BaseException as exc:
            if not permit.settled:
                if isinstance(exc, self.failure_on):
                    permit.record_failure()
                else:
                    permit.release()
            raise
        if not permit.settled:
            permit.record_success()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` through the breaker (see :meth:`guard`)."""
        with self.guard():
            return await fn(*args)

    # ----------------------------------------------------------------- internals
    def _outcome(self, period: int, probe: bool, *, failed: bool) -> None:
        if failed:
            self.failures += 1
        else:
            self.successes += 1
        if period != self._period:
            self.stale_outcomes += 1
            return
        now = self._clock()
        config = self.config
        if probe:
            self._probes_out -= 1
            if failed:
                self._move(BreakerState.OPEN, now, "a half-open probe failed")
                return
            self._probes_passed += 1
            if self._probes_passed >= config.half_open_probes:
                self._move(BreakerState.CLOSED, now, f"{config.half_open_probes} probe(s) succeeded")
            return
        self._window.add(failed, now)
        self._consecutive = self._consecutive + 1 if failed else 0
        if not failed:
            return
        if config.consecutive_failures is not None and self._consecutive >= config.consecutive_failures:
            self._move(BreakerState.OPEN, now, f"{self._consecutive} consecutive failures")
            return
        if config.failure_ratio is not None:
            stats = self._window.stats(now)
            if stats.calls >= config.minimum_throughput and stats.failure_ratio >= config.failure_ratio:
                self._move(
                    BreakerState.OPEN,
                    now,
                    f"{stats.failures} of {stats.calls} calls failed "
                    f"(ratio {stats.failure_ratio:.2f} >= {config.failure_ratio:g})",
                )

    def _release(self, period: int, probe: bool) -> None:
        if probe and period == self._period:
            self._probes_out -= 1

    def _move(self, to: BreakerState, now: float, reason: str) -> None:
        transition = Transition(now, self.name, self._state, to, reason)
        self._state = to
        self._period += 1
        self._probes_out = self._probes_passed = 0
        self._consecutive = 0
        self._window.clear()
        if to is BreakerState.OPEN:
            self._opened_at = now
            self.times_opened += 1
        self.transitions.append(transition)
        self.transitions_total += 1
        self.transition_counts[transition.from_state, to] += 1
        for listener in self._listeners:
            listener(transition)


class KeyedCircuitBreaker(Generic[K]):
    """One :class:`CircuitBreaker` per key (a merchant id, say), created on first use.

    All breakers share ``config``, ``clock``, ``failure_on`` and ``history``.
    ``transitions`` keeps the last ``keyed_history`` transitions of all the
    breakers together, in the order they happened; ``transitions_total`` counts them all.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        failure_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        history: int = HISTORY,
        keyed_history: int = KEYED_HISTORY,
    ) -> None:
        self.config = config if config is not None else BreakerConfig()
        if not isinstance(self.config, BreakerConfig):
            raise ValidationError("config", f"must be a BreakerConfig, got {type(config).__name__}")
        if on_transition is not None and not callable(on_transition):
            raise ValidationError("on_transition", f"must be callable, got {on_transition!r}")
        self._clock = default_clock(clock)
        self._on_transition = on_transition
        self._failure_on = exception_types("failure_on", failure_on)
        integer("history", history, minimum=1)
        integer("keyed_history", keyed_history, minimum=1)
        self._history = history
        self._breakers: dict[K, CircuitBreaker] = {}
        #: The last ``keyed_history`` transitions of all the breakers, in order.
        self.transitions: deque[Transition] = deque(maxlen=keyed_history)
        #: Transitions ever made by all the breakers together.
        self.transitions_total = 0

    def __getitem__(self, key: K) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(
                self.config,
                name=str(key),
                clock=self._clock,
                on_transition=self._record,
                failure_on=self._failure_on,
                history=self._history,
            )
            self._breakers[key] = breaker
        return breaker

    def get(self, key: K) -> CircuitBreaker | None:
        """The breaker for ``key`` if it exists (without creating one)."""
        return self._breakers.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __iter__(self) -> Iterator[K]:
        return iter(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)

    def items(self) -> list[tuple[K, CircuitBreaker]]:
        """A snapshot of (key, breaker) pairs in creation order."""
        return list(self._breakers.items())

    def states(self) -> dict[K, BreakerState]:
        """Every breaker's current state (a pure read), in creation order."""
        return {key: breaker.state for key, breaker in self._breakers.items()}

    def not_closed(self) -> dict[K, BreakerState]:
        """The breakers that are open or half-open now."""
        return {key: state for key, state in self.states().items() if state is not BreakerState.CLOSED}

    def _record(self, transition: Transition) -> None:
        self.transitions.append(transition)
        self.transitions_total += 1
        if self._on_transition is not None:
            self._on_transition(transition)
