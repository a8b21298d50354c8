"""What every challenge is made of, and how a candidate is judged.

A :class:`Challenge` has a statement, a starter (the code a learner fills in,
with the engine's real interfaces), a reference solution, wrong solutions
that make the mistakes learners actually make, and a judge. The judge runs a
candidate inside the engine, in virtual time, over several seeds and fault
schedules, and returns one :class:`Verdict` per named invariant: what held,
with the measured figure next to the target; for what did not, the first
counter-example and a hint that points at the idea, not the answer.

:func:`judge` wraps the challenge's own judge so that nothing a candidate
does escapes as a traceback: a candidate of the wrong shape, one that raises,
and one that hangs or blocks the event loop past the deadline each get a
verdict that says so.
"""

from __future__ import annotations

import html
import inspect
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.vtime import BACKENDS

__all__ = ["DEADLINE_S", "CandidateResult", "Challenge", "CheckReport", "Verdict", "judge"]

#: Seconds of CPU a candidate's whole check may use, and seconds it may go without progress, before it is
#: called hung (a reference's check uses one to six).
DEADLINE_S = 30.0


@dataclass(frozen=True)
class Verdict:
    """One invariant, judged: held or not, the figure measured beside its target, and why."""

    invariant: str
    held: bool
    measured: str
    target: str
    why: str
    #: Where it first failed: seed, story time, merchant, payment, ... (only what applies).
    counterexample: Mapping[str, Any] | None = None
    #: For a failure: the idea to look at, not the answer.
    hint: str | None = None
    #: For a failure a trace explains better than words: a small SVG figure (shown in notebooks only).
    figure: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "invariant": self.invariant,
            "held": self.held,
            "measured": self.measured,
            "target": self.target,
            "why": self.why,
        }
        if self.counterexample is not None:
            data["counterexample"] = dict(self.counterexample)
        if self.hint is not None:
            data["hint"] = self.hint
        return data


@dataclass(frozen=True)
class CandidateResult:
    """Every verdict on one candidate; it passes when every invariant held."""

    challenge: str
    candidate: str
    verdicts: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.held for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "passed": self.passed, "verdicts": [v.as_dict() for v in self.verdicts]}

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        lines = [f"{self.challenge} · {self.candidate}: {'PASSED' if self.passed else 'NOT YET'}"]
        for v in self.verdicts:
            lines.append(f"  [{'ok' if v.held else 'x '}] {v.invariant}: {v.measured} (target {v.target})")
            if not v.held:
                lines.append(f"       {v.why}")
                if v.counterexample:
                    lines.append("       first counter-example: " + _where(v.counterexample))
                if v.hint:
                    lines.append(f"       hint: {v.hint}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        head = (
            f"<div style='font-weight:600;color:{colour};margin:4px 0'>{html.escape(self.challenge)} · "
            f"{html.escape(self.candidate)}: {'passed' if self.passed else 'not yet'}</div>"
        )
        rows = []
        for v in self.verdicts:
            mark = (
                "<span style='color:#1a7f37'>&#10004;</span>"
                if v.held
                else "<span style='color:#cf222e'>&#10008;</span>"
            )
            detail = html.escape(v.why)
            if not v.held and v.counterexample:
                detail += "<br><i>first counter-example:</i> " + html.escape(_where(v.counterexample))
            if not v.held and v.hint:
                detail += "<br><i>hint:</i> " + html.escape(v.hint)
            if not v.held and v.figure:
                detail += "<br>" + v.figure
            rows.append(
                f"<tr><td>{mark}</td><td>{html.escape(v.invariant)}</td><td>{html.escape(v.measured)}</td>"
                f"<td>{html.escape(v.target)}</td><td style='text-align:left'>{detail}</td></tr>"
            )
        return (
            head + "<table><thead><tr><th></th><th>invariant</th><th>measured</th><th>target</th>"
            "<th style='text-align:left'>why</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )


def _where(counterexample: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counterexample.items())


@dataclass(frozen=True)
class CheckReport:
    """A check of one challenge: one result per candidate (``check --demo`` has several)."""

    name: str
    results: tuple[CandidateResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "results": [r.as_dict() for r in self.results]}

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return "\n\n".join(str(r) for r in self.results)

    def _repr_html_(self) -> str:
        return "".join(r._repr_html_() for r in self.results)


@dataclass(frozen=True)
class Challenge:
    """One exercise: the statement, the starter, the reference, the wrong solutions, and the judge.

    ``entry`` names what a candidate file must define (a class or a function);
    ``shape`` says whether a candidate has the right kind of object and, if
    not, what is wrong with it. ``wrong`` maps a label to a wrong solution and
    the invariant it was written to break.
    """

    name: str
    lesson: str
    title: str
    statement: str
    entry: str
    starter: str
    reference: Any
    wrong: Mapping[str, tuple[Any, str]]
    shape: Callable[[Any], str | None]
    run: Callable[[Any, str], list[Verdict]]
    invariants: Sequence[str] = field(default_factory=tuple)
    #: The reference as a learner would write it: the lines it needs first, then the reference's own code.
    solution_header: str = ""
    solution_parts: Sequence[Any] = field(default_factory=tuple)
    solution_renames: Mapping[str, str] = field(default_factory=dict)
    solution_footer: str = ""

    def solution(self) -> str:
        """The reference solution as source text, in the starter's names (what the lessons' solution cells hold)."""
        text = self.solution_header + "\n\n".join(inspect.getsource(part) for part in self.solution_parts)
        for old, new in self.solution_renames.items():
            text = text.replace(old, new)
        return text + self.solution_footer

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lesson": self.lesson,
            "title": self.title,
            "entry": self.entry,
            "invariants": list(self.invariants),
        }


def judge(
    challenge: Challenge, candidate: Any, label: str, *, backend: str = "asyncio", deadline: float = DEADLINE_S
) -> CandidateResult:
    """Run ``challenge``'s judge on ``candidate``; whatever the candidate does, return verdicts.

    The judge runs in a thread of its own, watched: virtual time skips any
    wait a candidate makes on the event loop, so a check that uses
    ``deadline`` seconds of CPU (a busy loop), or makes no progress for as
    long (``time.sleep``, a blocking call), is stopped by its candidate.
    """
    if backend not in BACKENDS:
        raise ValidationError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    problem = challenge.shape(candidate)
    if problem is not None:
        return CandidateResult(
            challenge.name,
            label,
            (
                Verdict(
                    "has the right shape",
                    False,
                    _kind(candidate),
                    f"{challenge.entry}, as the starter defines it",
                    problem,
                    hint="start again from the starter: keep its names and signatures, change the body",
                ),
            ),
        )
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["verdicts"] = challenge.run(candidate, backend)
        except BaseException as exc:  # the candidate's own error, reported as a verdict
            box["error"] = exc

    started = time.perf_counter()
    thread = threading.Thread(target=work, name=f"check {challenge.name}", daemon=True)
    thread.start()
    stuck = _watch(thread, deadline)
    took = time.perf_counter() - started
    if stuck is not None:
        return CandidateResult(
            challenge.name,
            label,
            (
                Verdict(
                    "finishes in time",
                    False,
                    f"{stuck} after {took:.0f} real s",
                    f"at most {deadline:.0f} s",
                    "in virtual time every wait on the event loop is skipped, so a check that does not end was "
                    "stopped by something the loop cannot skip: a blocking call (time.sleep, a synchronous HTTP "
                    "call) or a busy loop in the candidate",
                    hint="await anyio.sleep(...) instead of time.sleep(...); never spin (a spinning check keeps "
                    "its thread busy until the process ends: in a notebook, restart the kernel)",
                ),
            ),
        )
    if "error" in box:
        exc = box["error"]
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # a task group's: report what raised
            exc = exc.exceptions[0]
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" (line {where.lineno} of {where.filename.rsplit('/', 1)[-1]})" if where else ""
        return CandidateResult(
            challenge.name,
            label,
            (
                Verdict(
                    "runs without raising",
                    False,
                    f"{type(exc).__name__}: {exc}"[:300],
                    "no exception escapes",
                    f"the candidate raised {type(exc).__name__}{at} and the run stopped there",
                    hint="an exception that escapes a handler or the critical path is the candidate's, not the "
                    "endpoint's: catch what the endpoint can raise, let nothing else out",
                ),
            ),
        )
    verdicts = tuple(box["verdicts"])
    return CandidateResult(challenge.name, label, verdicts)


def _cpu_clock(thread: threading.Thread) -> Callable[[], float] | None:
    """The CPU time ``thread`` has used so far, where the system can say (Linux, macOS)."""
    try:
        clock_id = time.pthread_getcpuclockid(thread.ident or 0)
        time.clock_gettime(clock_id)
    except (AttributeError, OSError):
        return None
    return lambda: time.clock_gettime(clock_id)


def _watch(thread: threading.Thread, deadline: float) -> str | None:
    """Wait for ``thread``; say why it is stuck if it uses ``deadline`` s of CPU or makes no progress for as long.

    Counting the check's own CPU time, not the wall clock, keeps a busy machine (a workshop laptop, a CI
    runner with one core taken) from calling a slow but honest check hung; a candidate blocked in
    ``time.sleep`` uses no CPU at all, so it is caught by the stall instead.
    """
    cpu = _cpu_clock(thread)
    if cpu is None:  # no per-thread clock: the wall clock is all there is
        thread.join(deadline)
        return "still running" if thread.is_alive() else None
    last_progress, last_used = time.perf_counter(), 0.0
    while True:
        thread.join(min(0.5, deadline))
        if not thread.is_alive():
            return None
        try:
            used = cpu()
        except OSError:  # the thread ended between the two calls
            return None
        now = time.perf_counter()
        if used >= deadline:
            return f"{used:.0f} s of CPU used"
        if used - last_used >= 0.05:
            last_progress, last_used = now, used
        elif now - last_progress >= deadline:
            return "no progress (blocked)"


def _kind(candidate: Any) -> str:
    if isinstance(candidate, type):
        return f"class {candidate.__name__}"
    if callable(candidate):
        return f"function {getattr(candidate, '__name__', type(candidate).__name__)}"
    return f"{type(candidate).__name__} {candidate!r}"[:80]
