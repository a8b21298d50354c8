"""The recorder: what happened to every payment and side effect, and a per-second series.

One :class:`Recorder` belongs to one run. Phases report to it (a payment
completed, a webhook failed, ...), the runner samples it once per simulated
second, and at the end it produces the summary that the CLI prints as JSON and
the lessons plot.

Outcomes of a payment
---------------------
``authorized``
    the request returned success: the customer was told "paid".
``failed``
    the customer was told it failed, and no money moved (a card decline, or
    no database connection before the authorization).
``stuck``
    in limbo: the payment was accepted but never resolved. Either money was
    authorized and the request then died, or the request was still waiting
    when the run ended (the customer is looking at a spinner). This is the
    story's "stuck in limbo"; ``stuck_dollars`` adds them up, and
    ``stuck_authorized`` / ``stuck_authorized_dollars`` count the subset
    where money had already moved.

``attempted == authorized + failed + stuck`` always holds.

Memory is measured for real: by default the process's resident memory
(``rss``), sampled once per simulated second, which costs next to nothing;
with ``memory="tracemalloc"``, the Python heap allocated since the run began,
byte for byte, so that a leak of tasks shows up as bytes (tracing every
allocation makes a run about three times slower: the lessons that weigh
objects ask for it). It is a measurement of this process, not a model, and
so it (with ``wall_seconds``)
is the one part of a summary that is not byte-identical between two runs of
the same seed: see :data:`NONDETERMINISTIC_KEYS`.
"""

from __future__ import annotations

import math
import threading
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from payflow_lab.core.columns import Column
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import ValidationError

__all__ = [
    "DEFAULT_MEMORY",
    "MemoryProbe",
    "NONDETERMINISTIC_KEYS",
    "Recorder",
    "SIDE_EFFECT_OUTCOMES",
    "hhmmss",
    "percentile",
    "strip_nondeterministic",
]

#: Summary keys that measure the machine rather than the model.
NONDETERMINISTIC_KEYS = ("wall_seconds", "memory", "payments_per_wall_second")
#: Series columns that measure the machine rather than the model.
NONDETERMINISTIC_SERIES = ("memory_bytes",)

SIDE_EFFECT_OUTCOMES = ("delivered", "failed", "dropped", "dead_lettered")

#: How a run measures memory unless told otherwise: cheap enough to leave on (see :class:`MemoryProbe`).
DEFAULT_MEMORY = "rss"


def hhmmss(story_seconds: float) -> str:
    """Format seconds since midnight as ``HH:MM:SS`` (wrapping past midnight)."""
    total = int(math.floor(story_seconds)) % 86_400
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _deterministic(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _deterministic(v)
            for k, v in value.items()
            if not (isinstance(k, str) and ("bytes" in k or k in NONDETERMINISTIC_KEYS))
        }
    if isinstance(value, list):
        return [_deterministic(v) for v in value]
    return value


def strip_nondeterministic(summary: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``summary`` without the machine's measurements.

    Dropped: :data:`NONDETERMINISTIC_KEYS` and, at any depth, every key whose
    name contains ``bytes`` (the convention for memory figures), plus the
    series columns in :data:`NONDETERMINISTIC_SERIES`. What is left must be
    byte-identical between two runs with the same seed and inputs.
    """
    clean = _deterministic(summary)
    if "series" in clean:
        clean["series"] = {k: v for k, v in clean["series"].items() if k not in NONDETERMINISTIC_SERIES}
    return clean


class MemoryProbe:
    """Measures the process's memory for the recorder.

    ``how="rss"`` (the default, :data:`DEFAULT_MEMORY`) reports the resident
    set size from ``psutil``: what the OS sees, read once per simulated
    second, so it costs a run almost nothing. It is coarser than the heap: it
    includes everything the process holds, and memory freed by an earlier run
    is reused before it grows. ``how="tracemalloc"`` reports bytes of Python
    heap allocated while tracing: precise, blind to everything allocated before
    the run, and about three times slower, because every allocation is traced.
    Tracing is reference-counted so that concurrent runs (a live run and a
    quick cell in the same notebook) share it. ``how="off"`` reports zeros
    (for benchmarks of the engine alone).
    """

    _lock = threading.Lock()
    _users = 0
    _we_started = False

    DESCRIPTIONS = {
        "rss": "rss: resident set size of the process (psutil), sampled each simulated second",
        "tracemalloc": "tracemalloc: bytes of Python heap allocated since tracing began, sampled each simulated second",
        "off": "off: memory was not measured",
    }

    def __init__(self, how: str = DEFAULT_MEMORY) -> None:
        if how not in self.DESCRIPTIONS:
            raise ValueError(f"memory must be one of {', '.join(self.DESCRIPTIONS)}, got {how!r}")
        self.how = how
        self._process: Any = None
        self._open = False

    def __enter__(self) -> MemoryProbe:
        if self.how == "tracemalloc":
            with MemoryProbe._lock:
                if MemoryProbe._users == 0 and not tracemalloc.is_tracing():
                    tracemalloc.start(1)
                    MemoryProbe._we_started = True
                MemoryProbe._users += 1
        elif self.how == "rss":
            import psutil

            self._process = psutil.Process()
        self._open = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.how == "tracemalloc" and self._open:
            with MemoryProbe._lock:
                MemoryProbe._users -= 1
                if MemoryProbe._users == 0 and MemoryProbe._we_started:
                    tracemalloc.stop()
                    MemoryProbe._we_started = False
        self._open = False

    @property
    def description(self) -> str:
        return self.DESCRIPTIONS[self.how]

    def sample(self) -> int:
        if self.how == "tracemalloc":
            return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        if self.how == "rss":
            return int(self._process.memory_info().rss)
        return 0


@dataclass(slots=True)
class _InFlight:
    payment: Payment
    started: float
    authorized: bool = False


class Recorder:
    """Collects outcomes, latencies and the per-second series of one run.

    ``clock`` returns story time in seconds since midnight. All methods are
    called from the simulation's thread; the series columns only ever grow, so
    another thread (the notebook dashboard) may read them while a run is live.
    Every value is kept (percentiles are exact), but only the newest of each
    column in memory: see :mod:`payflow_lab.core.columns`.
    """

    def __init__(self, clock: Callable[[], float], memory: MemoryProbe | None = None) -> None:
        self.clock = clock
        self.memory = memory or MemoryProbe("off")
        self.attempted = 0
        self.authorized = 0
        self.failed = 0
        self.stuck = 0
        self.stuck_cents_usd = 0.0
        self.stuck_authorized = 0
        self.stuck_authorized_usd = 0.0
        self.failed_reasons: Counter[str] = Counter()
        #: Seconds every payment spent in flight, all of them (completed, failed, or cut off by the run's end).
        self.time_in_system = 0.0
        self.stuck_reasons: Counter[str] = Counter()
        # Compact storage: the recorder's own memory is part of what tracemalloc measures.
        self.latencies = Column("d")
        self.authorization_latencies = Column("d")
        self._in_flight: dict[str, _InFlight] = {}
        self._window: list[float] = []
        self._last_window: list[float] = []  # the last row's window and counts, to amend it
        self._last_counts = (0, 0)
        self.recent: deque[tuple[float, float]] = deque()  # (completed at, latency) over the last minute
        self._window_failed = 0
        self._window_arrivals = 0
        self.last_completion: float | None = None
        self.side_effects: dict[str, Counter[str]] = {}
        self.side_effect_reasons: Counter[tuple[str, str, str]] = Counter()
        self.side_effect_latencies: dict[str, Column] = {}
        self.tasks_in_flight = 0
        self.peak_tasks = 0
        self.tasks_killed: int | None = None
        self.events: list[tuple[float, int, str, str]] = []
        self._event_serial = 0
        self._marks: set[str] = set()
        self.gauges: dict[str, Callable[[], float]] = {}
        self._untyped: set[str] = set()
        # Columns (payflow_lab.core.columns): 8 bytes a value, the newest in memory and the rest in a temporary
        # file, so a four-hour run takes no more memory than a ten-minute one. They index, slice and sum
        # like lists; p50/p99 are None for a second in which nothing completed.
        self.series: dict[str, Any] = {
            "t": Column("d"),
            "clock": Column("d"),
            "arrivals": Column("q"),
            "completed": Column("q"),
            "failed": Column("q"),
            "p50_ms": Column("d", optional=True),
            "p99_ms": Column("d", optional=True),
            "in_flight_payments": Column("q"),
            "in_flight_tasks": Column("q"),
            "db_in_use": Column("q"),
            "db_waiting": Column("q"),
            "memory_bytes": Column("q"),
        }
        self.memory_start = 0
        self.memory_peak = 0
        self.memory_end = 0
        self._t0 = clock()

    # ----------------------------------------------------------------- events
    def event(self, what: str, kind: str = "observed", at: float | None = None) -> None:
        """Log a story-time event. ``kind`` is ``"scripted"`` for inputs, ``"observed"`` for what emerged."""
        self._event_serial += 1
        self.events.append((self.clock() if at is None else at, self._event_serial, kind, what))

    def mark_once(self, key: str, what: str, kind: str = "observed", at: float | None = None) -> bool:
        """Log ``what`` the first time ``key`` is marked; return whether it was the first time."""
        if key in self._marks:
            return False
        self._marks.add(key)
        self.event(what, kind, at)
        return True

    def marked(self, key: str) -> bool:
        return key in self._marks

    # --------------------------------------------------------------- payments
    def payment_started(self, payment: Payment) -> None:
        """Count ``payment`` as attempted. Refuses, recording nothing, an id that is still in flight."""
        if payment.id in self._in_flight:
            raise ValidationError("id", f"payment {payment.id} is already in flight in this run")
        self.attempted += 1
        self._window_arrivals += 1
        self._in_flight[payment.id] = _InFlight(payment, self.clock())

    def payment_authorized(self, payment: Payment, latency: float) -> None:
        """The gateway approved: from now on the money has moved."""
        entry = self._in_flight.get(payment.id)
        if entry is not None:
            entry.authorized = True
        self.authorization_latencies.append(latency)

    def payment_completed(self, payment: Payment) -> None:
        entry = self._in_flight.pop(payment.id, None)
        if entry is None:
            return
        now = self.clock()
        latency = now - entry.started
        self.time_in_system += latency
        self.authorized += 1
        self.latencies.append(latency)
        self._window.append(latency)
        self.recent.append((now, latency))
        self.last_completion = now

    def payment_errored(self, payment: Payment, reason: str) -> None:
        """The request ended in an error: failed if no money moved, stuck if it had."""
        entry = self._in_flight.pop(payment.id, None)
        if entry is None:
            return
        self.time_in_system += self.clock() - entry.started
        if entry.authorized:
            self._stuck(entry, f"authorized, then {reason}")
        else:
            self.failed += 1
            self.failed_reasons[reason] += 1
            self._window_failed += 1

    def _stuck(self, entry: _InFlight, reason: str) -> None:
        dollars = entry.payment.dollars
        self.stuck += 1
        self.stuck_reasons[reason] += 1
        self.stuck_cents_usd += dollars
        if entry.authorized:
            self.stuck_authorized += 1
            self.stuck_authorized_usd += dollars

    def close_in_flight(self) -> None:
        """The run is over: every payment still in flight is stuck in limbo.

        The run drained first (:data:`payflow_lab.runner.DRAIN_SECONDS`): a
        payment still here did not finish in all that time.
        """
        now = self.clock()
        for entry in list(self._in_flight.values()):
            del self._in_flight[entry.payment.id]
            self.time_in_system += now - entry.started
            if entry.authorized:
                self._stuck(entry, "authorized, never finished (still in flight when the run ended)")
            else:
                self._stuck(entry, "never authorized (still waiting when the run ended)")

    @property
    def in_flight_payments(self) -> int:
        return len(self._in_flight)

    def recent_median(self, seconds: float = 60.0, minimum: int = 10) -> float | None:
        """Median latency of the payments completed in the last ``seconds`` (None if fewer than ``minimum``)."""
        horizon = self.clock() - seconds
        recent = self.recent
        while recent and recent[0][0] < horizon:
            recent.popleft()
        if len(recent) < minimum:
            return None
        values = sorted(latency for _, latency in recent)
        return values[len(values) // 2]

    # ----------------------------------------------------------- side effects
    def side_effect_started(self, kind: str) -> None:
        counts = self.side_effects.get(kind)
        if counts is None:
            counts = self.side_effects[kind] = Counter()
        counts["started"] += 1

    def side_effect_finished(
        self, kind: str, outcome: str, *, latency: float | None = None, reason: str | None = None
    ) -> None:
        """Record the end of one side effect: ``delivered``, ``failed``, ``dropped`` or ``dead_lettered``."""
        if outcome not in SIDE_EFFECT_OUTCOMES:
            raise ValueError(f"unknown side-effect outcome {outcome!r}")
        counts = self.side_effects.get(kind)
        if counts is None:
            counts = self.side_effects[kind] = Counter()
        counts[outcome] += 1
        if reason is not None:
            self.side_effect_reasons[(kind, outcome, reason)] += 1
        if latency is not None and outcome == "delivered":
            column = self.side_effect_latencies.get(kind)
            if column is None:
                column = self.side_effect_latencies[kind] = Column("d")
            column.append(latency)

    def side_effect_totals(self) -> dict[str, int]:
        totals = {outcome: 0 for outcome in SIDE_EFFECT_OUTCOMES}
        started = 0
        for counts in self.side_effects.values():
            started += counts["started"]
            for outcome in SIDE_EFFECT_OUTCOMES:
                totals[outcome] += counts[outcome]
        totals["pending"] = started - sum(totals[o] for o in SIDE_EFFECT_OUTCOMES)
        return totals

    # ------------------------------------------------------------------ tasks
    def task_started(self) -> None:
        self.tasks_in_flight += 1
        if self.tasks_in_flight > self.peak_tasks:
            self.peak_tasks = self.tasks_in_flight

    def task_finished(self) -> None:
        self.tasks_in_flight -= 1

    def process_killed(self) -> None:
        """The process is killed now: the tasks still in flight are the run's end state, not the 0 left after."""
        self.tasks_killed = self.tasks_in_flight

    @property
    def tasks_at_end(self) -> int:
        """Tasks in flight now, or, once the process was killed, the ones it killed."""
        return self.tasks_in_flight if self.tasks_killed is None else self.tasks_killed

    # ----------------------------------------------------------------- series
    def add_gauge(self, name: str, read: Callable[[], float]) -> None:
        """Sample ``read()`` into a series column called ``name`` every simulated second."""
        if name in self.series and name not in self.gauges:
            raise ValueError(f"series column {name!r} already exists")
        self.gauges[name] = read
        # Typed by its first value (integers or floats); the seconds before the gauge existed are None.
        self.series.setdefault(name, Column("q", [None] * len(self.series["t"]), optional=True))
        self._untyped.add(name)

    def sample(self, db_in_use: int, db_waiting: int) -> None:
        """Append one row to the series (called once per simulated second).

        Sampled twice in the same second (the ticker's row, then the one the
        run takes as it ends, at that instant or a fraction of a second later),
        the second sample amends the first row instead of adding another: one
        row per simulated second, the last describing the run as it ended
        (still labelled with its whole second), with both samples' arrivals
        and completions.
        """
        now = self.clock()
        t = round(now - self._t0, 6)
        times = self.series["t"]
        amend = len(times) > 0 and math.floor(times[-1]) == math.floor(t)
        if amend:
            self._window = self._last_window + self._window
            self._window_arrivals += self._last_counts[0]
            self._window_failed += self._last_counts[1]
        window = sorted(self._window)
        memory = self.memory.sample()
        if memory > self.memory_peak:
            self.memory_peak = memory
        self.memory_end = memory
        row: dict[str, Any] = {
            "t": t,
            "clock": round(now, 6),
            "arrivals": self._window_arrivals,
            "completed": len(window),
            "failed": self._window_failed,
            "p50_ms": round(percentile(window, 50) * 1000, 3) if window else None,
            "p99_ms": round(percentile(window, 99) * 1000, 3) if window else None,
            "in_flight_payments": len(self._in_flight),
            "in_flight_tasks": self.tasks_at_end,
            "db_in_use": db_in_use,
            "db_waiting": db_waiting,
            "memory_bytes": memory,
        }
        for name, read in self.gauges.items():
            value = row[name] = read()
            if name in self._untyped and value is not None:
                self._untyped.discard(name)
                if isinstance(value, float):
                    self.series[name] = Column("d", self.series[name], optional=True)
        if amend:
            for name, value in row.items():
                if name not in ("t", "clock"):  # the row keeps its second's label
                    self.series[name].set_last(value)
        else:
            # Append column by column; "t" last, so a reader that sizes by "t" sees complete rows.
            for name, value in row.items():
                if name != "t":
                    self.series[name].append(value)
            times.append(t)
        self._last_window, self._last_counts = self._window, (self._window_arrivals, self._window_failed)
        self._window = []
        self._window_failed = 0
        self._window_arrivals = 0

    def start_memory(self) -> None:
        self.memory_start = self.memory_peak = self.memory_end = self.memory.sample()

    # ---------------------------------------------------------------- summary
    def latency_summary(self, values: Iterable[float] | None = None) -> dict[str, float | None]:
        data = sorted(self.latencies if values is None else values)
        if not data:
            return {"mean": None, "p50": None, "p95": None, "p99": None, "max": None}
        return {
            "mean": round(sum(data) / len(data) * 1000, 3),
            "p50": round(percentile(data, 50) * 1000, 3),
            "p95": round(percentile(data, 95) * 1000, 3),
            "p99": round(percentile(data, 99) * 1000, 3),
            "max": round(data[-1] * 1000, 3),
        }

    def sorted_events(self) -> list[dict[str, str]]:
        return [
            {"at": hhmmss(at), "what": what, "kind": kind}
            for at, _, kind, what in sorted(self.events, key=lambda e: (e[0], e[1]))
        ]

    def summary(self) -> dict[str, Any]:
        """The parts of the JSON contract the recorder owns."""
        by_kind = {
            kind: {
                "started": counts["started"],
                **{o: counts[o] for o in SIDE_EFFECT_OUTCOMES},
                "pending": counts["started"] - sum(counts[o] for o in SIDE_EFFECT_OUTCOMES),
            }
            for kind, counts in sorted(self.side_effects.items())
        }
        reasons: dict[str, dict[str, int]] = {}
        for (kind, outcome, reason), n in sorted(self.side_effect_reasons.items()):
            reasons.setdefault(f"{kind}.{outcome}", {})[reason] = n
        return {
            "payments": {
                "attempted": self.attempted,
                "authorized": self.authorized,
                "failed": self.failed,
                "stuck": self.stuck,
                "stuck_dollars": round(self.stuck_cents_usd, 2),
                "stuck_authorized": self.stuck_authorized,
                "stuck_authorized_dollars": round(self.stuck_authorized_usd, 2),
                "failed_by_reason": dict(sorted(self.failed_reasons.items())),
                "stuck_by_reason": dict(sorted(self.stuck_reasons.items())),
            },
            "latency_ms": self.latency_summary(),
            "authorization_ms": self.latency_summary(self.authorization_latencies),
            "side_effects": {**self.side_effect_totals(), "by_kind": by_kind, "reasons": reasons},
            "memory": {
                "start_bytes": self.memory_start,
                "peak_bytes": self.memory_peak,
                "end_bytes": self.memory_end,
                "how": self.memory.description,
            },
            "tasks": {"peak_in_flight": self.peak_tasks, "end_in_flight": self.tasks_at_end},
            "events": self.sorted_events(),
        }
