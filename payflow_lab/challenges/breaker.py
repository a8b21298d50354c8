"""Lesson 05's challenge: write the circuit breaker.

The judge puts the candidate in front of a simulated endpoint and calls
through it, in virtual time, from three callers at once, every tenth of a
second: through a healthy stretch, an outage, a hang (calls time out after a
second), a flapping endpoint, one that fails nine calls in ten, and one that
fails one call in ten. It watches only what the breaker lets through and the
``state`` it reports, so any implementation that keeps the interface can be
judged.
"""

from __future__ import annotations

import html
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from payflow_lab.challenges.base import Challenge, Verdict
from payflow_lab.core.recorder import hhmmss
from payflow_lab.core.vtime import run_virtual

__all__ = ["CHALLENGE"]

FAILURES_TO_OPEN = 5
BREAK_S = 10.0
CALL_TIMEOUT_S = 1.0
STATES = ("closed", "open", "half_open")
ALLOWED = {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}
#: Story time the judge's runs start at (14:00:00), so that counter-examples read like the lessons'.
START = 14 * 3600.0

STARTER = '''\
class Breaker:
    """Stop calling an endpoint that keeps failing; try it again, carefully, after a break.

    closed     calls go through; FAILURES_TO_OPEN failures in a row open the breaker
    open       allow() says no, until BREAK_S seconds have passed since it opened
    half_open  one probe call is let through: its success closes the breaker, its failure opens it again
    """

    FAILURES_TO_OPEN = 5
    BREAK_S = 10.0

    def __init__(self, clock):
        self.clock = clock          # clock() -> the current time in seconds (virtual in the checker)
        self.state = "closed"       # "closed", "open" or "half_open"

    def allow(self) -> bool:
        """May a call go out now? (If it may, its outcome will come back through record.)"""
        return True                 # TODO

    def record(self, ok: bool) -> None:
        """The outcome of a call that allow() let through."""
        pass                        # TODO
'''


class Breaker:
    """The reference: a consecutive-failures breaker with one probe at a time when half-open."""

    FAILURES_TO_OPEN = FAILURES_TO_OPEN
    BREAK_S = BREAK_S

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False

    def allow(self) -> bool:
        if self.state == "open" and self.clock() - self.opened_at >= self.BREAK_S:
            self.state, self.probing = "half_open", False
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self.probing:
            self.probing = True  # one probe at a time
            return True
        return False

    def record(self, ok: bool) -> None:
        if self.state == "half_open":
            self.probing = False
            if ok:
                self.state, self.failures = "closed", 0
            else:
                self.state, self.opened_at = "open", self.clock()
        elif ok:
            self.failures = 0
        else:
            self.failures += 1
            if self.failures >= self.FAILURES_TO_OPEN:
                self.state, self.opened_at = "open", self.clock()


class NeverHalfOpens(Breaker):
    """Wrong: once open, it stays open; the endpoint's recovery is never noticed."""

    def allow(self) -> bool:
        return self.state == "closed"


class LetsEveryoneProbe(Breaker):
    """Wrong: half-open lets every caller through at once, so a still-broken endpoint takes a burst."""

    def allow(self) -> bool:
        if self.state == "open" and self.clock() - self.opened_at >= self.BREAK_S:
            self.state = "half_open"
        return self.state in ("closed", "half_open")


class CountsAllFailures(Breaker):
    """Wrong: counts failures in total rather than in a row, so scattered failures open it."""

    def record(self, ok: bool) -> None:
        if self.state == "half_open":
            self.probing = False
            if ok:
                self.state, self.failures = "closed", 0
            else:
                self.state, self.opened_at = "open", self.clock()
        elif not ok:
            self.failures += 1
            if self.failures >= self.FAILURES_TO_OPEN:
                self.state, self.opened_at = "open", self.clock()


# ------------------------------------------------------------------ the endpoint's weather
@dataclass(frozen=True)
class Weather:
    """How the endpoint behaves over the run: (start s, end s, mode, failure share) windows; healthy elsewhere."""

    name: str
    windows: tuple[tuple[float, float, str, float], ...]
    duration: float = 140.0

    def at(self, t: float) -> tuple[str, float]:
        for start, end, mode, share in self.windows:
            if start <= t < end:
                return mode, share
        return "up", 0.0


WEATHERS = (
    Weather("outage", ((20.0, 80.0, "down", 1.0),)),
    Weather("hang", ((20.0, 80.0, "hang", 1.0),)),
    Weather("flapping", tuple((20.0 + 6 * k, 23.0 + 6 * k, "down", 1.0) for k in range(10))),
    Weather("fails 90%", ((20.0, 80.0, "flaky", 0.9),)),
    Weather("fails 10%", ((0.0, 140.0, "flaky", 0.1),)),
)
SEEDS = (1, 2)


@dataclass
class Call:
    start: float
    end: float
    ok: bool
    state_before: str


@dataclass
class Trace:
    weather: Weather
    seed: int
    calls: list[Call]
    refused: list[tuple[float, str]]
    states: list[tuple[float, str]]


def _drive(candidate_cls: type, weather: Weather, seed: int, backend: str) -> Trace:
    rng = random.Random(seed * 7919 + len(weather.name))
    calls: list[Call] = []
    refused: list[tuple[float, str]] = []
    states: list[tuple[float, str]] = []

    async def main() -> None:
        t0 = anyio.current_time()

        def clock() -> float:
            return anyio.current_time() - t0

        breaker = candidate_cls(clock)

        def note_state() -> None:
            state = str(getattr(breaker, "state", None))
            if not states or states[-1][1] != state:
                states.append((clock(), state))

        async def one_call(state_before: str) -> None:
            start = clock()
            mode, share = weather.at(start)
            ok = True
            if mode == "down":
                await anyio.sleep(0.01)
                ok = False
            elif mode == "hang":
                await anyio.sleep(CALL_TIMEOUT_S)  # the caller's own timeout
                ok = False
            else:
                await anyio.sleep(0.05)
                ok = not (mode == "flaky" and rng.random() < share)
            calls.append(Call(start, clock(), ok, state_before))
            breaker.record(ok)
            note_state()

        async with anyio.create_task_group() as tg:
            note_state()
            while clock() < weather.duration:
                for _ in range(3):
                    state_before = str(getattr(breaker, "state", None))
                    if breaker.allow():
                        tg.start_soon(one_call, state_before)
                    else:
                        refused.append((clock(), state_before))
                    note_state()
                await anyio.sleep(0.1)

    run_virtual(main, backend=backend)
    return Trace(weather, seed, calls, refused, states)


def _broken(weather: Weather, t: float) -> bool:
    mode, share = weather.at(t)
    return mode in ("down", "hang") or (mode == "flaky" and share >= 0.5)


def _judge(candidate_cls: Any, backend: str) -> list[Verdict]:
    traces = [_drive(candidate_cls, w, seed, backend) for w in WEATHERS for seed in SEEDS]
    return [_stops_calling(traces), _one_probe(traces), _recovers(traces), _scattered(traces), _transitions(traces)]


def _figure(trace: Trace, mark: float) -> str:
    """Calls let through per second over the run, the endpoint's broken windows shaded, the counter-example marked."""
    width, height, seconds = 560, 90, int(trace.weather.duration)
    per_second = [0] * seconds
    for call in trace.calls:
        if 0 <= call.start < seconds:
            per_second[int(call.start)] += 1
    top = max(per_second) or 1
    x = width / seconds
    shades = "".join(
        f"<rect x='{start * x:.1f}' y='0' width='{(end - start) * x:.1f}' height='{height}' fill='#ffd7d5'/>"
        for start, end, mode, share in trace.weather.windows
        if mode in ("down", "hang") or share >= 0.5
    )
    bars = "".join(
        f"<rect x='{i * x:.1f}' y='{height - n / top * height:.1f}' width='{max(x - 0.5, 0.5):.1f}' "
        f"height='{n / top * height:.1f}' fill='#0969da'/>"
        for i, n in enumerate(per_second)
        if n
    )
    marker = f"<line x1='{mark * x:.1f}' x2='{mark * x:.1f}' y1='0' y2='{height}' stroke='#cf222e' stroke-width='2'/>"
    caption = (
        f"calls per second ({trace.weather.name}, seed {trace.seed}, at most {top}); red: the endpoint is broken; "
        "line: the counter-example"
    )
    return (
        f"<svg width='{width}' height='{height + 16}' xmlns='http://www.w3.org/2000/svg' "
        f"style='font:11px sans-serif'>{shades}{bars}{marker}"
        f"<text x='0' y='{height + 12}'>{html.escape(caption)}</text></svg>"
    )


def _at(trace: Trace, t: float) -> dict[str, Any]:
    return {"weather": trace.weather.name, "seed": trace.seed, "story time": hhmmss(START + t)}


def _stops_calling(traces: list[Trace]) -> Verdict:
    worst, where = 0, None
    for trace in traces:
        if trace.weather.name == "fails 10%":
            continue
        for start, end, _, _ in trace.weather.windows:
            if not _broken(trace.weather, start):
                continue
            # after the first FAILURES_TO_OPEN + a few failures, a breaker may send one probe per break
            window = [c for c in trace.calls if start + 1.5 <= c.start < end]
            breaks = int((end - start) / BREAK_S) + 2
            # a probe that happens to succeed closes it: then it takes some failures in a row to open again
            allowed = breaks * (1 if trace.weather.at(start)[0] != "flaky" else 3 * FAILURES_TO_OPEN)
            if len(window) > allowed and len(window) - allowed > worst:
                worst, where = len(window) - allowed, (trace, window[allowed].start)
    held = where is None
    measured = "as few as a probe per break" if held else f"{worst:,} calls too many"
    return Verdict(
        "stops calling a broken endpoint",
        held,
        measured,
        f"a probe per {BREAK_S:g} s break (a few calls more if the endpoint answers now and then)",
        "once open, a breaker sends nothing but probes"
        if held
        else "calls kept reaching the endpoint while it was broken",
        None if where is None else _at(*where),
        None if held else "after enough failures in a row, allow() must say no until the break is over",
        figure=None if held or where is None else _figure(*where),
    )


def _one_probe(traces: list[Trace]) -> Verdict:
    worst, where = 1, None
    for trace in traces:
        probes = sorted((c for c in trace.calls if c.state_before == "half_open"), key=lambda c: c.start)
        for c in probes:
            together = sum(1 for d in probes if d.start <= c.start < d.end)
            if together > worst:
                worst, where = together, (trace, c.start)
    held = where is None
    return Verdict(
        "half-open lets one probe through",
        held,
        f"{worst} probe(s) at once",
        "1",
        "a half-open breaker tests the endpoint with one call, not a crowd"
        if held
        else "several calls went out together while the breaker was half-open",
        None if where is None else _at(*where),
        None if held else "remember that a probe is out, and refuse everyone else until it returns",
        figure=None if held or where is None else _figure(*where),
    )


def _recovers(traces: list[Trace]) -> Verdict:
    slowest, where = 0.0, None
    for trace in traces:
        if trace.weather.name in ("fails 10%", "flapping"):
            continue
        healed = max(end for _, end, _, _ in trace.weather.windows)
        later = [c for c in trace.calls if c.start >= healed and c.ok]
        back = later[0].start - healed if later else float("inf")
        if back > slowest:
            slowest, where = back, (trace, healed)
    limit = BREAK_S + 2.0
    held = slowest <= limit
    shown = "never" if slowest == float("inf") else f"{slowest:.1f} s"
    return Verdict(
        "recovers by itself",
        held,
        f"slowest: {shown}",
        f"at most {limit:g} s after the endpoint is back",
        "the breaker notices a healed endpoint within one break"
        if held
        else "the endpoint was healthy again, and the breaker did not let calls through",
        None if held or where is None else _at(*where),
        None if held else "an open breaker must try again by itself after BREAK_S: that is half-open",
        figure=None if held or where is None else _figure(*where),
    )


def _scattered(traces: list[Trace]) -> Verdict:
    refused, where = 0, None
    for trace in traces:
        if trace.weather.name != "fails 10%":
            continue
        mine = [t for t, _ in trace.refused]
        if mine and len(mine) > refused:
            refused, where = len(mine), (trace, mine[0])
    held = refused <= 30  # a rare run of five failures in a row may open it once for a break
    return Verdict(
        "ignores scattered failures",
        held,
        f"{refused:,} calls refused",
        "at most 30 (one rare break)",
        "one failure in ten does not open the breaker" if held else "the breaker opened although most calls succeeded",
        None if held or where is None else _at(*where),
        None if held else "count failures *in a row*: a success in between starts the count again",
        figure=None if held or where is None else _figure(*where),
    )


def _transitions(traces: list[Trace]) -> Verdict:
    for trace in traces:
        for (_, a), (t, b) in zip(trace.states, trace.states[1:]):
            if a not in STATES or b not in STATES or (a, b) not in ALLOWED:
                return Verdict(
                    "moves only along allowed transitions",
                    False,
                    f"{a} -> {b}",
                    "closed->open->half_open->closed (or back to open)",
                    f"state went from {a!r} to {b!r}",
                    _at(trace, t),
                    "state must be 'closed', 'open' or 'half_open', and open never closes directly",
                )
    return Verdict(
        "moves only along allowed transitions",
        True,
        "all allowed",
        "closed->open->half_open->closed (or back to open)",
        "every change of state was an allowed one",
    )


def _shape(candidate: Any) -> str | None:
    if not isinstance(candidate, type):
        return "must be a class (Breaker), constructed with the clock"
    for name in ("allow", "record"):
        if not callable(getattr(candidate, name, None)):
            return f"the class has no {name}() method"
    return None


CHALLENGE = Challenge(
    name="circuit-breaker",
    lesson="05",
    title="Write the circuit breaker",
    statement=(
        "Write `Breaker`: closed, it lets calls through and counts failures in a row; five in a row open it; "
        "open, it refuses every call for ten seconds; then half-open, it lets exactly one probe through, whose "
        "success closes it and whose failure opens it again. The checker calls through it from three callers at "
        "once against an endpoint that goes down, hangs, flaps, fails nine calls in ten and one in ten."
    ),
    entry="Breaker",
    starter=STARTER,
    reference=Breaker,
    wrong={
        "never-half-opens": (NeverHalfOpens, "recovers by itself"),
        "half-open-lets-everyone-through": (LetsEveryoneProbe, "half-open lets one probe through"),
        "counts-all-failures": (CountsAllFailures, "ignores scattered failures"),
    },
    shape=_shape,
    run=_judge,
    invariants=(
        "stops calling a broken endpoint",
        "half-open lets one probe through",
        "recovers by itself",
        "ignores scattered failures",
        "moves only along allowed transitions",
    ),
    solution_header="from collections.abc import Callable\n\n"
    f"FAILURES_TO_OPEN = {FAILURES_TO_OPEN}\nBREAK_S = {BREAK_S}\n\n\n",
    solution_parts=(Breaker,),
)
