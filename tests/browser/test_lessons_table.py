"""The browser tests' table of lessons is complete and well-formed. Needs no browser: runs everywhere.

A lesson notebook without an entry in :data:`lessons_spec.LESSONS` fails here
even where Chromium is missing and the browser tests themselves are skipped.
"""

from __future__ import annotations

import json
import math

import pytest
from lessons_spec import (
    LESSONS,
    LESSONS_DIR,
    FaultCheck,
    Lesson,
    LiveCheck,
    Observed,
    ReachesAtLeast,
    Rises,
    Sample,
    SetSlider,
    SetTier,
    Stalls,
    StaysAtMost,
    check_table,
    lesson_files,
)


def code_of(name: str) -> str:
    notebook = json.loads((LESSONS_DIR / name).read_text())
    return "\n".join(
        "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
    )


def test_every_lesson_has_an_entry() -> None:
    files = lesson_files()
    assert "00_start_here.ipynb" in files and "01_synchronous.ipynb" in files, files
    problems = check_table(LESSONS, files, {name: code_of(name) for name in files})
    assert not problems, "\n".join(problems)


def _live(*actions, expect=None, **fault) -> Lesson:
    expect = (Stalls("completed"),) if expect is None else expect
    return Lesson(panels=1, figures=1, live=LiveCheck(FaultCheck("x", tuple(actions), tuple(expect), **fault)))


@pytest.mark.parametrize(
    ("lessons", "files", "sources", "complaint"),
    [
        ({}, ["00_x.ipynb"], None, "00_x.ipynb has no entry"),
        ({"00_x.ipynb": Lesson(1, 1)}, [], None, "which is not in lessons/"),
        (
            {"00_x.ipynb": Lesson(1, 1)},
            ["00_x.ipynb"],
            {"00_x.ipynb": "lab.LiveSession(scenario='normal')"},
            "has no LiveCheck",
        ),
        ({"00_x.ipynb": _live(SetSlider("webhook-errors", 0.5))}, ["00_x.ipynb"], None, "no fault slider"),
        ({"00_x.ipynb": _live(SetTier("gold", "hang"))}, ["00_x.ipynb"], None, "no tier toggle"),
        (
            {"00_x.ipynb": _live(SetTier("standard", "hang"), expect=(Stalls("payments"),))},
            ["00_x.ipynb"],
            None,
            "the readout has no 'payments'",
        ),
        ({"00_x.ipynb": _live(SetTier("standard", "hang"), met_by="2pm")}, ["00_x.ipynb"], None, "HH:MM:SS"),
        (
            {"00_x.ipynb": _live(SetTier("standard", "hang"), within_story_s=580)},
            ["00_x.ipynb"],
            None,
            "ten-minute window",
        ),
        (
            {f"0{i}_x.ipynb": Lesson(1, 1) for i in range(4)},
            [f"0{i}_x.ipynb" for i in range(4)],
            {f"0{i}_x.ipynb": "" for i in range(4)},
            None,
        ),
    ],
)
def test_the_table_check_names_what_is_wrong(lessons, files, sources, complaint) -> None:
    problems = check_table(lessons, files, sources)
    if complaint is None:
        assert problems == []
    else:
        assert any(complaint in p for p in problems), problems


def test_fewer_than_three_fault_checks_are_refused_once_lessons_have_live_sessions() -> None:
    files = [f"0{i}_x.ipynb" for i in range(4)]
    lessons = {name: Lesson(1, 1) for name in files}
    lessons[files[0]] = _live(SetTier("standard", "hang"))
    problems = check_table(lessons, files, {name: "" for name in files} | {files[0]: "LiveSession("})
    assert problems == []
    sources = {name: "LiveSession(" for name in files}
    problems = check_table(lessons, files, sources)
    assert any("issue 7 wants at least three" in p for p in problems), problems


def _seen(
    before: list[tuple[float, float | None]],
    after: list[tuple[float, float | None]],
    *,
    column: str = "p50_ms",
    fault_at: float = 100.0,
    settle_s: float = 10.0,
    until: float = math.inf,
) -> Observed:
    def trace(points):
        return ([t * 1000.0 for t, _ in points], [v for _, v in points])

    return Observed(
        fault_at=fault_at,
        settle_s=settle_s,
        before={column: trace(before)},
        traces={column: trace(before + after)},
        until=until,
        samples=[Sample(t, {"clock": t}) for t, _ in before + after],
    )


def test_rises_compares_medians_after_the_settling_time() -> None:
    before = [(t, 10.0) for t in range(90, 100)]
    seen = _seen(before, [(105, 100.0), (106, 100.0)] + [(t, 12.0) for t in range(111, 120)])
    verdict, why = Rises("p50_ms", factor=1.5).check(seen)
    assert verdict == "pending", why  # the two spikes fall inside the settling time; 12 is not 1.5 x 10
    seen = _seen(before, [(t, 16.0) for t in range(111, 120)])
    assert Rises("p50_ms", factor=1.5).check(seen)[0] == "met"
    assert Rises("p50_ms", factor=1.5).precondition(_seen([(99, 1.0)], [])) is not None


def test_reaches_at_least_refuses_a_value_already_reached_before_the_fault() -> None:
    seen = _seen([(90, 65.0), (95, 10.0)], [(101, 65.0)], column="db_in_use")
    assert ReachesAtLeast("db_in_use", 65).precondition(seen) is not None
    seen = _seen([(90, 5.0)], [(101, 40.0), (102, 65.0)], column="db_in_use")
    assert ReachesAtLeast("db_in_use", 65).precondition(seen) is None
    assert ReachesAtLeast("db_in_use", 65).check(seen)[0] == "met"
    late = _seen([(90, 5.0)], [(101, 40.0), (130, 65.0)], column="db_in_use", until=120.0)
    assert ReachesAtLeast("db_in_use", 65).check(late)[0] == "pending"  # after the lesson's time limit


def test_stays_at_most_is_violated_by_one_point_and_met_only_after_watching_long_enough() -> None:
    quiet = [(t, 0.2) for t in range(111, 140)]
    bound = StaysAtMost("p50_ms", 1.0, for_story_s=20)
    assert StaysAtMost("p50_ms", 1.0, for_story_s=60).check(_seen([], quiet))[0] == "pending"
    assert bound.check(_seen([], quiet))[0] == "met"
    assert bound.check(_seen([], quiet + [(141, 3.0)]))[0] == "violated"
    assert bound.check(_seen([], [(105, 3.0)] + quiet))[0] == "met"  # inside the settling time: not judged


def test_stalls_needs_a_counter_that_moved_before_and_stands_still_after() -> None:
    def seen(values_before, values_after):
        samples = [Sample(t, {"completed": v}) for t, v in values_before + values_after]
        return Observed(fault_at=100.0, settle_s=0.0, samples=samples)

    stalls = Stalls("completed", for_story_s=30)
    assert stalls.precondition(seen([(90, 5.0), (99, 5.0)], [])) is not None
    moving_then_still = seen([(90, 5.0), (99, 9.0)], [(105, 12.0), (120, 14.0), (151, 14.0)])
    assert stalls.precondition(moving_then_still) is None
    assert stalls.check(moving_then_still)[0] == "met"
    still_moving = seen([(90, 5.0), (99, 9.0)], [(105, 12.0), (120, 14.0), (149, 15.0)])
    assert stalls.check(still_moving)[0] == "pending"


def test_acknowledgements_match_the_panels_status_line() -> None:
    line = "running · webhook_latency_multiplier=5.0: applies at the next simulated second"
    assert SetSlider("webhook-latency-multiplier", 5).acknowledged(line)
    assert not SetSlider("webhook-latency-multiplier", 4).acknowledged(line)
    assert not SetSlider("webhook-latency-multiplier", 5).acknowledged(
        line.replace("applies at the next simulated second", "used when the next run starts")
    )
    tier = "paused · tier_modes={'standard': 'hang'}: applies at the next simulated second"
    assert SetTier("standard", "hang").acknowledged(tier)
    assert not SetTier("premium", "hang").acknowledged(tier)
