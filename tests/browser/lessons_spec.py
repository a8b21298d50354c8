"""What each lesson must show in a real browser: one entry per lesson notebook.

Every ``lessons/NN_*.ipynb`` needs an entry in :data:`LESSONS`, and a lesson
without one fails ``test_every_lesson_has_an_entry`` (and its own browser
test): a new lesson is covered by adding one :class:`Lesson` here, never by
being forgotten. An entry says

* how many control panels (``.payflow-panel``) and plotly figures
  (``.js-plotly-plot``) the page must show after *Run All*, at least;
* for a lesson with a live run (:class:`LiveCheck`): which session to press
  Start on, and a :class:`FaultCheck`: which widgets to move, as a learner
  would, and what the dashboard must then show, in the lesson's own words and
  as :class:`Expectation` objects;
* for a lesson with a stand-alone widget demo (:class:`DemoCheck`): which
  slider drives which figure.

Numbers come from the page, never from the kernel: a *trace* is a curve of the
dashboard's plotly figure, named by its series column (its ``meta``), in the
units it is drawn in (latencies ``*_ms`` in **seconds**, memory ``*_bytes``
in **MiB**, counts as counts); a *readout metric* is one of the numbers above
the figure (``data-metric`` / ``data-value``: ``clock`` in story seconds,
``completed``, ``failed``, ``in_flight``, ``db_in_use``, ...).

An expectation is checked against the rows drawn *after* the fault was
switched on, and first checks that it did not already hold *before* (a pool
that was already full proves nothing about the toggle). Writing one for a new
phase looks like this (Phase 4: failures pile up behind the hook bus, the
payments do not notice)::

    FaultCheck(
        what="standard merchants hang: the webhook queue fills, payment latency stays flat",
        actions=(SetTier("standard", "hang"),),
        expect=(ReachesAtLeast("queue_webhook", 50), StaysAtMost("p99_ms", 1.0)),
    )
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from payflow_lab.core import calibration
from payflow_lab.runner import DEFAULT_SCALE

ROOT = Path(__file__).resolve().parents[2]
LESSONS_DIR = ROOT / "lessons"
#: The lesson notebooks, as ``tools/build_lessons.py`` and nbval find them.
LESSON_PATTERN = re.compile(r"^\d\d_.+\.ipynb$")

#: The database pool of the default-scale world: what "the pool is full" means on the dashboard.
POOL_SIZE = max(1, round(calibration.DB_POOL_SIZE * DEFAULT_SCALE))


def lesson_files() -> list[str]:
    """The lesson notebooks in ``lessons/``, by name, in order."""
    return sorted(p.name for p in LESSONS_DIR.glob("*.ipynb") if LESSON_PATTERN.match(p.name))


# --------------------------------------------------------------------------- what the page showed
Trace = tuple[list[float], list["float | None"]]


@dataclass(frozen=True)
class Sample:
    """One reading of a live session's readout: story time and every metric (``None`` when it shows "–")."""

    clock: float
    metrics: Mapping[str, float | None]


@dataclass
class Observed:
    """Everything the page showed around a fault: readout samples since Start, and the latest traces.

    ``fault_at`` is the story time the readout showed right after the last
    widget change was acknowledged; the change itself applies at the next
    simulated second, so rows up to ``fault_at`` are "before". Rows from
    ``fault_at + settle_s`` on are "after": payments that started before the
    fault and finish after it are given ``settle_s`` to leave. Nothing later
    than ``until`` (story seconds) counts at all.
    """

    fault_at: float
    settle_s: float
    samples: list[Sample] = field(default_factory=list)
    traces: Mapping[str, Trace] = field(default_factory=dict)
    before: Mapping[str, Trace] = field(default_factory=dict)
    until: float = math.inf

    @property
    def now(self) -> float:
        """The latest story time the readout showed (capped at ``until``)."""
        return min(self.samples[-1].clock if self.samples else self.fault_at, self.until)

    def points(self, column: str, when: Literal["before", "after", "since"]) -> list[tuple[float, float]]:
        """Non-empty ``(story seconds, value)`` points of a trace: before the fault, after it settled, or
        since it was switched on."""
        source = self.before if when == "before" else self.traces
        x, y = source.get(column, ([], []))
        points = [
            (ms / 1000.0, v) for ms, v in zip(x, y) if v is not None and math.isfinite(v) and ms / 1000.0 <= self.until
        ]
        if when == "before":
            return [(t, v) for t, v in points if t <= self.fault_at]
        start = self.fault_at + (self.settle_s if when == "after" else 0.0)
        return [(t, v) for t, v in points if t > start]

    def readings(self, metric: str, when: Literal["before", "since"]) -> list[tuple[float, float]]:
        """``(story seconds, value)`` readings of a readout metric, before or since the fault."""
        out = [(s.clock, v) for s in self.samples if (v := s.metrics.get(metric)) is not None and s.clock <= self.until]
        if when == "before":
            return [(t, v) for t, v in out if t <= self.fault_at]
        return [(t, v) for t, v in out if t > self.fault_at]

    def has_trace(self, column: str) -> bool:
        return column in self.traces or column in self.before


# --------------------------------------------------------------------------- expectations
Verdict = tuple[Literal["met", "pending", "violated"], str]


class Expectation(Protocol):
    """Something the dashboard must show after the fault. ``check`` returns ("met" | "pending" | "violated", why)."""

    def precondition(self, seen: Observed) -> str | None:
        """Why the check would prove nothing (it already held before the fault), or ``None``."""

    def check(self, seen: Observed) -> Verdict:
        """Judge what the page shows now."""

    def describe(self) -> str:
        """The expectation in words, for failure messages."""


@dataclass(frozen=True)
class Rises:
    """A trace's median after the fault is at least ``factor`` times its median before it."""

    column: str
    factor: float
    min_points: int = 8

    def describe(self) -> str:
        return f"{self.column} rises to at least {self.factor:g}× its median before the fault"

    def precondition(self, seen: Observed) -> str | None:
        before = seen.points(self.column, "before")
        if len(before) < 3:
            return f"{self.column}: only {len(before)} points before the fault, too few to compare with"
        return None

    def check(self, seen: Observed) -> Verdict:
        before = statistics.median(v for _, v in seen.points(self.column, "before"))
        after = [v for _, v in seen.points(self.column, "after")]
        if len(after) < self.min_points:
            return "pending", f"{self.column}: {len(after)} points after the fault so far (median before {before:g})"
        median = statistics.median(after)
        verdict = "met" if median >= self.factor * before else "pending"
        return verdict, f"{self.column}: median {before:g} before, {median:g} after ({len(after)} points)"


@dataclass(frozen=True)
class ReachesAtLeast:
    """A trace reaches ``value`` after the fault, having stayed below it before."""

    column: str
    value: float

    def describe(self) -> str:
        return f"{self.column} reaches {self.value:g}"

    def precondition(self, seen: Observed) -> str | None:
        before = [v for _, v in seen.points(self.column, "before")]
        if before and max(before) >= self.value:
            return f"{self.column} was already {max(before):g} before the fault"
        return None

    def check(self, seen: Observed) -> Verdict:
        since = seen.points(self.column, "since")
        if not since:
            return "pending", f"{self.column}: nothing drawn since the fault"
        peak_at, peak = max(since, key=lambda p: p[1])
        if peak >= self.value:
            return "met", f"{self.column} reached {peak:g} at {_hhmmss(peak_at)}"
        return "pending", f"{self.column}: at most {peak:g} since the fault"


@dataclass(frozen=True)
class RisesBy:
    """A trace climbs at least ``amount`` above where it stood when the fault was switched on."""

    column: str
    amount: float

    def describe(self) -> str:
        return f"{self.column} climbs by at least {self.amount:g}"

    def precondition(self, seen: Observed) -> str | None:
        if not seen.points(self.column, "before"):
            return f"{self.column}: nothing drawn before the fault to climb from"
        return None

    def check(self, seen: Observed) -> Verdict:
        start = seen.points(self.column, "before")[-1][1]
        since = seen.points(self.column, "since")
        if not since:
            return "pending", f"{self.column}: nothing drawn since the fault (it stood at {start:g})"
        peak_at, peak = max(since, key=lambda p: p[1])
        verdict = "met" if peak - start >= self.amount else "pending"
        return verdict, f"{self.column} went from {start:g} to {peak:g} (at {_hhmmss(peak_at)})"


@dataclass(frozen=True)
class StaysAtMost:
    """A trace never exceeds ``value`` after the fault settled, for at least ``for_story_s`` of story time."""

    column: str
    value: float
    for_story_s: float = 60.0

    def describe(self) -> str:
        return f"{self.column} stays at most {self.value:g} for {self.for_story_s:g} story seconds"

    def precondition(self, seen: Observed) -> str | None:
        return None

    def check(self, seen: Observed) -> Verdict:
        after = seen.points(self.column, "after")
        worst = [p for p in after if p[1] > self.value]
        if worst:
            at, value = worst[0]
            return "violated", f"{self.column} was {value:g} at {_hhmmss(at)}, above {self.value:g}"
        watched = seen.now - (seen.fault_at + seen.settle_s)
        if watched >= self.for_story_s:
            return "met", f"{self.column} stayed at most {self.value:g} for {watched:g} story seconds"
        return "pending", f"{self.column} within bounds so far ({watched:g} of {self.for_story_s:g} s watched)"


@dataclass(frozen=True)
class Stalls:
    """A readout counter that was moving before the fault stops moving for ``for_story_s`` after it."""

    metric: str
    for_story_s: float = 60.0

    def describe(self) -> str:
        return f"the readout's {self.metric} stops moving for {self.for_story_s:g} story seconds"

    def precondition(self, seen: Observed) -> str | None:
        before = seen.readings(self.metric, "before")
        if len(before) < 2 or before[-1][1] <= before[0][1]:
            return f"the readout's {self.metric} was not moving before the fault ({before[:1]} .. {before[-1:]})"
        return None

    def check(self, seen: Observed) -> Verdict:
        since = seen.readings(self.metric, "since")
        if not since:
            return "pending", f"no readout of {self.metric} since the fault"
        last_at, last = since[-1]
        first_at = next(t for t, v in since if v == last)
        still = last_at - first_at
        if still >= self.for_story_s:
            return "met", f"{self.metric} stayed at {last:g} from {_hhmmss(first_at)} to {_hhmmss(last_at)}"
        return "pending", f"{self.metric} at {last:g}, unchanged for {still:g} story seconds"


def _hhmmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- what the test does
@dataclass(frozen=True)
class SetSlider:
    """Type ``value`` into the readout of the slider ``.payflow-<control>`` and press Enter, as a learner can."""

    control: str
    value: float

    @property
    def fault_key(self) -> str:
        """The :class:`~payflow_lab.FaultPlan` key the panel reports in its status line."""
        return self.control.replace("-", "_")

    def describe(self) -> str:
        return f"set {self.control} to {self.value:g}"

    def acknowledged(self, status: str) -> bool:
        """Whether the panel's status line reports this change as sent to the live run."""
        found = re.search(rf"\b{self.fault_key}=([-+0-9.e]+)", status)
        return (
            found is not None
            and "next simulated second" in status
            and math.isclose(float(found.group(1)), self.value, rel_tol=1e-6)
        )


@dataclass(frozen=True)
class SetTier:
    """Click ``mode`` ("up", "down" or "hang") on the toggle buttons of ``.payflow-tier-<tier>``."""

    tier: str
    mode: str

    def describe(self) -> str:
        return f"switch {self.tier} merchants to {self.mode}"

    def acknowledged(self, status: str) -> bool:
        """Whether the panel's status line reports this change as sent to the live run."""
        return f"tier_modes={{'{self.tier}': '{self.mode}'}}" in status and "next simulated second" in status


Action = SetSlider | SetTier


@dataclass(frozen=True)
class FaultCheck:
    """Move widgets while a run is live, then watch the dashboard do what the lesson says.

    The test lets the run go for ``baseline_story_s`` first (the "before"),
    presses Pause, performs ``actions`` in order, presses Resume, then polls
    the page until every expectation is met, one is violated, or
    ``within_story_s`` of story time has passed since the fault. Pausing
    makes every change apply at the same simulated second however slowly
    the browser and the kernel answer (``pause=False`` moves the widgets
    while the run goes on, as in a hurried demo). ``met_by`` ("HH:MM:SS") is a hard story-time
    limit: a scenario whose own script changes the world later (Black Friday
    at 14:00) could otherwise produce the expected picture without the
    widget's help.
    """

    what: str
    actions: tuple[Action, ...]
    expect: tuple[Expectation, ...]
    baseline_story_s: float = 90.0
    settle_s: float = 30.0
    within_story_s: float = 300.0
    met_by: str | None = None
    pause: bool = True

    @property
    def met_by_seconds(self) -> float:
        """``met_by`` in story seconds since midnight (infinity when there is no such limit)."""
        if self.met_by is None:
            return math.inf
        hours, minutes, seconds = (int(part) for part in self.met_by.split(":"))
        return hours * 3600.0 + minutes * 60.0 + seconds


@dataclass(frozen=True)
class LiveCheck:
    """A lesson's live session: press Start, see the series grow, then the :class:`FaultCheck`.

    ``session`` is the index of the ``.payflow-session`` on the page (in page
    order) the check drives. ``pace``, if given, is typed into the session's
    pace slider before Start (simulated seconds per real second), for a
    lesson whose own pace leaves the test too little story time.
    """

    fault: FaultCheck
    session: int = 0
    pace: float | None = None


@dataclass(frozen=True)
class DemoCheck:
    """A stand-alone slider (``.<slider>``) that must change a figure (``.<figure>``, the graph div)."""

    slider: str
    figure: str
    value: float


@dataclass(frozen=True)
class FleetCheck:
    """Lesson 08's live view (``.payflow-fleet``): Start, kill one dispatcher mid-run, nothing lost.

    Real processes in real time, so every wait is in real seconds: ``kill_after`` deliveries
    before the kill button is pressed, and everything done within ``within_s``.
    """

    kill_after: int = 200
    within_s: float = 240.0


@dataclass(frozen=True)
class Lesson:
    """What one lesson must show after Run All, and what its widgets must do."""

    panels: int
    figures: int
    live: LiveCheck | None = None
    demo: DemoCheck | None = None
    fleet: FleetCheck | None = None
    run_all_timeout_s: float = 120.0


# --------------------------------------------------------------------------- the table
LESSONS: dict[str, Lesson] = {
    "00_start_here.ipynb": Lesson(
        panels=1,
        figures=3,  # the normal afternoon's latency, the slider demo, the live dashboard
        demo=DemoCheck(slider="payflow-demo-slider", figure="payflow-demo-figure", value=20),
        live=LiveCheck(
            FaultCheck(
                what="drag webhook latency × to 5 and watch p50 climb within a simulated minute",
                actions=(SetSlider("webhook-latency-multiplier", 5),),
                # Webhooks 5x slower blow through the 5 s timeout: three attempts, 15 s, for most payments.
                expect=(Rises("p50_ms", factor=1.4),),
                settle_s=40,  # a payment takes ~13 s, ~24 s once its webhook times out: let the old ones leave
                within_story_s=240,
            )
        ),
    ),
    "01_synchronous.ipynb": Lesson(
        panels=1,
        figures=3,  # the normal afternoon, Black Friday's static figure, the live dashboard
        # At a tenth of the lesson's pace the test has real time to spare before 14:00 (see met_by).
        live=LiveCheck(
            pace=10,
            fault=FaultCheck(
                what=(
                    "ten times the traffic and hanging merchants fill the pool: DB in use reaches its size, "
                    "requests queue for a connection, and the completed counter freezes"
                ),
                actions=(SetSlider("traffic-multiplier", 10), SetTier("standard", "hang"), SetTier("premium", "hang")),
                expect=(
                    ReachesAtLeast("db_in_use", POOL_SIZE),
                    ReachesAtLeast("db_waiting", 20),
                    Stalls("completed", for_story_s=60),
                ),
                baseline_story_s=60,  # enough for the completed counter to be seen moving first
                within_story_s=420,
                # Black Friday's script takes over at 14:00 (the sale); by then the widgets alone must have done it.
                met_by="14:00:00",
            ),
        ),
    ),
    "02_fire_and_forget.ipynb": Lesson(
        panels=1,
        figures=2,  # Black Friday's static figure, the live dashboard
        live=LiveCheck(
            FaultCheck(
                what=(
                    "set the standard tier to hang: endpoints hanging steps up to 1, tasks in flight climb by about "
                    "80 per simulated minute, and the p50 and p99 lines do not move"
                ),
                actions=(SetTier("standard", "hang"),),
                expect=(
                    ReachesAtLeast("endpoints_hanging", 1),
                    RisesBy("in_flight_tasks", 80),
                    StaysAtMost("p99_ms", 1.0, for_story_s=60),
                ),
            )
        ),
    ),
    "03_channels.ipynb": Lesson(
        panels=1,
        figures=3,  # Black Friday's static figure, phase 2 against phase 3's heap, the live dashboard
        live=LiveCheck(
            FaultCheck(
                what=(
                    "set the standard tier to hang: abandoned couriers step up to 15 and the webhook queue climbs "
                    "to 200, while latency does not move"
                ),
                actions=(SetTier("standard", "hang"),),
                expect=(
                    ReachesAtLeast("abandoned_couriers", 15),
                    ReachesAtLeast("webhook_queue", 200),
                    StaysAtMost("p99_ms", 1.0, for_story_s=60),
                ),
            )
        ),
    ),
    "04_hook_bus.ipynb": Lesson(
        panels=1,
        figures=3,  # the heap of phases 2 and 4, Black Friday's panels, the live dashboard
        live=LiveCheck(
            FaultCheck(
                what=(
                    "hang all three tiers and push traffic to x40: the audit queue fills to its bound of 40 and "
                    "p50 does not move"
                ),
                actions=(
                    SetTier("enterprise", "hang"),
                    SetTier("premium", "hang"),
                    SetTier("standard", "hang"),
                    SetSlider("traffic-multiplier", 40),
                ),
                expect=(ReachesAtLeast("queue_audit", 40), StaysAtMost("p50_ms", 1.0, for_story_s=60)),
            )
        ),
    ),
    "05_production_hardening.ipynb": Lesson(
        panels=1,
        figures=3,
        live=LiveCheck(
            FaultCheck(
                what=(
                    "switch standard merchants to down: breakers open by the dozen, webhooks pile up in the backlog, "
                    "dead letters climb, latency does not move"
                ),
                actions=(SetTier("standard", "down"),),
                expect=(
                    ReachesAtLeast("breakers_open", 10),
                    RisesBy("deferred_webhooks", 20),
                    RisesBy("dead_letters", 20),
                    StaysAtMost("p99_ms", 1.0, for_story_s=60),
                ),
            )
        ),
    ),
    "06_monitoring.ipynb": Lesson(
        panels=1,
        figures=2,
        # The monitoring scenario scripts its own webhook faults from 14:08 (errors) and 14:25 (standard
        # tier hangs); taking the standard tier *down* before 14:25 is an effect the script cannot fake.
        live=LiveCheck(
            FaultCheck(
                what=(
                    "take standard merchants down before 14:25: breakers open, dead letters climb, the dashboard's "
                    "latency does not move"
                ),
                actions=(SetTier("standard", "down"),),
                expect=(
                    ReachesAtLeast("breakers_open", 10),
                    RisesBy("dead_letters", 20),
                    StaysAtMost("p99_ms", 1.0, for_story_s=60),
                ),
                met_by="14:25:00",
            ),
            pace=15,
        ),
    ),
    "07_durable_delivery.ipynb": Lesson(
        panels=1,
        figures=1,  # the live dashboard (the lesson's other outputs are text)
        live=LiveCheck(
            FaultCheck(
                what=(
                    "set the standard tier to down: breakers open, dead letters held in memory reach 50 and deferred "
                    "webhooks 100, and p50 stays under a second"
                ),
                actions=(SetTier("standard", "down"),),
                expect=(
                    ReachesAtLeast("dead_letters", 50),
                    ReachesAtLeast("deferred_webhooks", 100),
                    StaysAtMost("p50_ms", 1.0, for_story_s=60),
                ),
            )
        ),
    ),
    "08_scale_out.ipynb": Lesson(
        panels=0,
        figures=1,  # the fleet's live figure (the lesson's other outputs are text)
        fleet=FleetCheck(kill_after=200),
        run_all_timeout_s=300.0,  # real processes, real HTTP: four fleets and three fault drills
    ),
}


def check_table(
    lessons: Mapping[str, Lesson], files: Sequence[str], sources: Mapping[str, str] | None = None
) -> list[str]:
    """Everything wrong with the table for these lesson files (an empty list when it is right).

    ``sources`` maps a lesson file to its code cells' text; a lesson that
    makes a ``LiveSession`` must have a :class:`LiveCheck`.
    """
    from payflow_lab.core.domain import Tier
    from payflow_lab.core.faults import LIMITS, EndpointMode
    from payflow_lab.lab.dashboard import READOUT_METRICS

    sliders = {key.replace("_", "-") for key in LIMITS}
    readout = {key for key, _label in READOUT_METRICS}
    problems = [
        f"{name} has no entry in tests/browser/lessons_spec.py LESSONS: add one"
        for name in files
        if name not in lessons
    ]
    problems += [f"LESSONS has an entry for {name}, which is not in lessons/" for name in lessons if name not in files]
    for name, lesson in lessons.items():
        if sources is not None and "LiveSession(" in sources.get(name, "") and lesson.live is None:
            problems.append(f"{name} makes a LiveSession but its entry has no LiveCheck")
        if sources is not None and "FleetView(" in sources.get(name, "") and lesson.fleet is None:
            problems.append(f"{name} makes a FleetView but its entry has no FleetCheck")
        if lesson.live is None:
            continue
        fault = lesson.live.fault
        if not fault.actions or not fault.expect:
            problems.append(f"{name}: a fault check needs at least one action and one expectation")
        for action in fault.actions:
            if isinstance(action, SetSlider) and action.control not in sliders:
                problems.append(f"{name}: no fault slider .payflow-{action.control} (there are {sorted(sliders)})")
            if isinstance(action, SetTier) and (
                action.tier not in {t.value for t in Tier} or action.mode not in {m.value for m in EndpointMode}
            ):
                problems.append(f"{name}: no tier toggle {action.tier!r} with mode {action.mode!r}")
        for expectation in fault.expect:
            metric = getattr(expectation, "metric", None)
            if metric is not None and metric not in readout:
                problems.append(f"{name}: the readout has no {metric!r} (it has {sorted(readout)})")
        if fault.met_by is not None:
            try:
                fault.met_by_seconds
            except ValueError:
                problems.append(f"{name}: met_by must be HH:MM:SS, got {fault.met_by!r}")
        if fault.baseline_story_s + fault.within_story_s > 600:
            problems.append(
                f"{name}: baseline + within ({fault.baseline_story_s + fault.within_story_s:g} s) "
                "exceeds the dashboard's default ten-minute window"
            )
    live = [name for name in files if name in lessons and lessons[name].live is not None]
    if sources is not None:
        with_sessions = [name for name in files if "LiveSession(" in sources.get(name, "")]
        if len(live) < min(3, len(with_sessions)):
            problems.append(f"only {len(live)} lessons have a fault-toggle check; issue 7 wants at least three")
    return problems
