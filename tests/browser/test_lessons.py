"""Every lesson, as a workshop participant meets it: JupyterLab in Chromium, Run All, then the widgets.

For each ``lessons/NN_*.ipynb`` (see :mod:`lessons_spec` for what each must show):

1. open it in a fresh workspace, *Run All*, wait until every cell ran and the kernel is idle;
2. no cell shows an error, every control panel and plotly figure rendered, the console is clean;
3. a stand-alone widget demo: moving the slider changes the figure;
4. a live run: press Start, the plotted series and the readout's story time grow; then move the
   fault widgets and watch the dashboard do what the lesson says (read from the page, not the kernel);
5. Stop leaves the session stopped, and the console is still clean.

On failure the screenshot, console, visible errors and dashboard numbers are saved under
``test-artifacts/browser/<test name>/``, and the failure message names that folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chromium import require_browser
from lessons_spec import (
    LESSONS,
    DemoCheck,
    FaultCheck,
    FleetCheck,
    Lesson,
    LiveCheck,
    Observed,
    Sample,
    Trace,
    lesson_files,
)

if TYPE_CHECKING:  # Playwright is imported only when the browser tests can run (see conftest.require_browser)
    from notebook_page import NotebookPage, SessionView

pytestmark = pytest.mark.browser

#: Story seconds the readout must advance to show that a started run moves.
GROWTH_STORY_S = 5.0
#: Real seconds between two reads of the page while waiting for a story-time condition.
POLL_S = 0.3
#: The pace every check runs at unless its lesson entry says otherwise (simulated seconds per real second):
#: the test's, not the lesson's, so that how much story time passes per real second is the test's choice.
TEST_PACE = 20.0
#: Safety nets only (real seconds): every wait is on a story-time condition; these stop a stalled page from
#: hanging the suite, and are generous because workshop laptops are busy.
FAULT_REAL_LIMIT_S = 240.0
STATE_LIMIT_S = 60.0


@contextmanager
def evidence_on_failure(notebook: NotebookPage, folder: Path, context: dict[str, Any]) -> Iterator[None]:
    """Turn any failure inside into one that names the folder holding the page's evidence."""
    try:
        yield
    except Exception as exc:
        try:
            saved = (
                f"screenshot, console, notebook errors and dashboard numbers saved in "
                f"{notebook.save_evidence(folder, context)}"
            )
        except Exception as save_error:  # evidence is a courtesy: never hide the real failure behind it
            saved = f"(could not save the evidence to {folder}: {save_error!r})"
        pytest.fail(f"{type(exc).__name__}: {exc}\n\n{saved}")


class Steps:
    """When each step of a test began (real seconds): part of the evidence, and what to speed up."""

    def __init__(self, context: dict[str, Any]) -> None:
        self.began = time.monotonic()
        self.lines: list[str] = context.setdefault("steps", [])

    def __call__(self, what: str) -> None:
        self.lines.append(f"{time.monotonic() - self.began:6.1f} s  {what}")


@pytest.mark.parametrize("name", lesson_files())
def test_lesson_in_the_browser(name: str, request: pytest.FixtureRequest, evidence_dir: Path) -> None:
    lesson = LESSONS.get(name)
    assert lesson is not None, f"{name} has no entry in tests/browser/lessons_spec.py LESSONS: add one"
    require_browser()  # here, not in a fixture, so that under CI a missing Chromium is a FAILED test
    notebook: NotebookPage = request.getfixturevalue("notebook")
    context: dict[str, Any] = {"lesson": name}
    step = Steps(context)
    with evidence_on_failure(notebook, evidence_dir, context):
        step("open in a fresh workspace")
        notebook.open(name)
        step("run all")
        notebook.run_all(lesson.run_all_timeout_s)
        step("check what rendered")
        check_rendered(notebook, lesson)
        if lesson.demo is not None:
            step("widget demo")
            check_demo(notebook, lesson.demo)
        if lesson.fleet is not None:
            check_fleet(notebook, lesson.fleet, context, step)
            evidence_dir.mkdir(parents=True, exist_ok=True)  # the fleet as drawn at its end: evidence, pass or fail
            notebook.page.locator(".payflow-fleet").screenshot(path=str(evidence_dir / "fleet-after-the-run.png"))
        if lesson.live is not None:
            check_live(notebook, lesson.live, context, step)
            view = notebook.session(lesson.live.session)
            check_continuous(view.traces())
            evidence_dir.mkdir(parents=True, exist_ok=True)  # the run as drawn at its end: evidence, pass or fail
            view.root.screenshot(path=str(evidence_dir / "session-after-the-run.png"), timeout=15_000)
        errors = notebook.console_errors()
        assert not errors, "the browser console shows errors:\n" + "\n".join(map(str, errors))
        step("done")
    print("\n".join(step.lines))  # captured: `pytest -rP` shows where the time went


def check_rendered(notebook: NotebookPage, lesson: Lesson) -> None:
    panels, figures = notebook.count(".payflow-panel"), notebook.count(".js-plotly-plot")
    assert panels >= lesson.panels, f"{panels} control panels rendered, expected at least {lesson.panels}"
    assert figures >= lesson.figures, f"{figures} plotly figures rendered, expected at least {lesson.figures}"
    # plotly draws a moment after the output arrives, and on a busy machine that can be after Run All has ended.
    # Give the page up to 15 s to settle, then report what is left. (A dashboard whose story-time axis stayed
    # linear was a real fault, not slowness: see payflow_lab/lab/figure_widget.py.)
    deadline = time.monotonic() + 15
    problems = notebook.rendering_problems()
    while problems and time.monotonic() < deadline:
        notebook.page.wait_for_timeout(250)
        problems = notebook.rendering_problems()
    assert not problems, "some outputs did not render:\n" + "\n".join(problems)
    errors = notebook.console_errors()
    assert not errors, "the browser console shows errors after Run All:\n" + "\n".join(map(str, errors))


def check_demo(notebook: NotebookPage, demo: DemoCheck) -> None:
    """Move the demo slider; the figure must change and show a point at the slider's value."""
    slider = notebook.page.locator(f".{demo.slider}")
    assert slider.count() == 1, f"expected one .{demo.slider} on the page, found {slider.count()}"
    before = notebook.figure_data(f".{demo.figure}")
    assert before is not None, f"the .{demo.figure} figure has no data"
    notebook.set_slider(slider, demo.value)
    deadline = time.monotonic() + 10.0
    while (after := notebook.figure_data(f".{demo.figure}")) == before:
        assert time.monotonic() < deadline, f"moving .{demo.slider} to {demo.value:g} did not change the figure"
        time.sleep(0.1)
    xs = [x for trace in after for x in trace["x"]]
    assert any(isinstance(x, (int, float)) and abs(x - demo.value) < 1e-9 for x in xs), (
        f"the figure changed but shows no point at x = {demo.value:g}: {after}"
    )


def check_fleet(notebook: NotebookPage, fleet: FleetCheck, context: dict[str, Any], step: Steps) -> None:
    """Lesson 08: press Start, kill the busiest dispatcher from its button, and read the outcome off the page."""
    root = notebook.page.locator(".payflow-fleet")
    assert root.count() == 1, f"expected one .payflow-fleet view, found {root.count()}"
    root.scroll_into_view_if_needed()

    def metric(key: str) -> str:
        return root.locator(f'[data-metric="{key}"]').first.get_attribute("data-value") or ""

    def wait_for(what: str, condition: Any, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not condition():
            readout = {key: metric(key) for key in ("state", "delivered", "pending", "kills", "reclaimed", "lost")}
            context["fleet"] = readout
            assert time.monotonic() < deadline, f"waited {limit:g} s for {what}; the readout shows {readout}"
            assert not metric("state").startswith("failed"), f"the fleet view failed: {metric('state')}"
            time.sleep(POLL_S)

    assert metric("state") == "idle", f"after Run All the fleet view is {metric('state')!r}, not waiting for Start"
    step("fleet: start")
    root.locator(".payflow-fleet-start").click()
    wait_for("the dispatchers to deliver", lambda: int(metric("delivered") or 0) >= fleet.kill_after, fleet.within_s)
    step("fleet: kill one")
    root.locator(".payflow-fleet-kill").click()
    wait_for("the kill to show", lambda: metric("kills") == "1", 30)
    wait_for("the run to finish", lambda: metric("state") == "finished", fleet.within_s)
    step("fleet: finished")
    delivered, pending, lost = metric("delivered"), metric("pending"), metric("lost")
    assert pending == "0" and lost == "0", f"after the kill: pending {pending}, lost {lost}"
    assert metric("applied") == delivered, f"delivered {delivered} but the receivers applied {metric('applied')}"
    traces = notebook.figure_data(".payflow-fleet") or []
    drawn = [t for t in traces if len(t.get("x") or []) >= 3]
    assert len(drawn) >= 4, f"the fleet figure should draw each dispatcher's rate and claims, got {traces}"


def check_live(notebook: NotebookPage, live: LiveCheck, context: dict[str, Any], step: Steps) -> None:
    """Start the lesson's live session, see it move, switch the fault on, see its effect, stop it."""
    session = notebook.session(live.session)
    status = session.status()
    # Run All leaves the session waiting for Start (the lessons say so), as a learner finds it.
    assert status["state"] in ("idle", "stopped", "finished"), f"after Run All the session is {status}"
    pace = live.pace if live.pace is not None else TEST_PACE
    step(f"live: pace {pace:g}")
    notebook.set_slider(session.root.locator(".payflow-pace"), pace)
    step("live: start")
    session.press("start")
    session.wait_state(("running",), timeout_s=STATE_LIMIT_S)
    samples = [session.wait_clock(timeout_s=STATE_LIMIT_S)]
    _status, _sample, first = session.read()
    deadline = time.monotonic() + STATE_LIMIT_S
    while True:  # wait on story time, not on a real-time interval; the figure arrives after the readout
        status, sample, second = session.read()
        moved = second and all(
            x and (column not in first or not first[column][0] or x[-1] > first[column][0][-1])
            for column, (x, _y) in second.items()
        )
        if sample.clock >= samples[0].clock + GROWTH_STORY_S and moved:
            break
        assert status["state"] == "running", f"the run ended {GROWTH_STORY_S:g} story s after Start: {status}"
        if time.monotonic() > deadline:
            break  # check_growth below says what did not move
        time.sleep(POLL_S)
    samples.append(sample)
    check_growth(first, second, samples[0].clock, sample.clock)
    check_fault(session, live.fault, samples, context, step)
    step("live: stop")
    if session.status()["state"] in ("running", "paused"):  # a short run may have finished by itself
        session.press("stop")
    status = session.wait_state(("stopped", "finished"), timeout_s=STATE_LIMIT_S)
    assert status["error"] == "false", f"the session reports an error after Stop: {status['text']}"


def wait_for_clock_to_hold(session: SessionView) -> float:
    """After Pause: the story time the readout settles on (the rows before the halt arrive first)."""
    deadline = time.monotonic() + STATE_LIMIT_S
    last = session.readout().clock
    while True:
        time.sleep(0.5)
        now = session.readout().clock
        if now == last:
            return now
        assert time.monotonic() < deadline, f"the story clock did not stop within {STATE_LIMIT_S:g} s of Pause"
        last = now


def check_continuous(traces: dict[str, Trace]) -> None:
    """Latency is drawn as lines, not a cloud of dots: at most two unbroken stretches per percentile.

    A rolling percentile breaks only where a whole minute passed without a completed payment (the start of
    a run, or a pipeline frozen solid), never at every quiet second.
    """
    for column in ("p50_ms", "p99_ms"):
        _x, y = traces.get(column, ([], []))
        stretches = sum(1 for i, v in enumerate(y) if v is not None and (i == 0 or y[i - 1] is None))
        assert 1 <= stretches <= 2, f"{column} is drawn in {stretches} pieces: {y[:40]}..."


def check_growth(first: dict[str, Trace], second: dict[str, Trace], clock_1: float, clock_2: float) -> None:
    """Between two reads of a live dashboard, story time advanced and every trace moved right."""
    assert second, "the dashboard draws no traces while the run is live"
    missing = {"p50_ms", "p99_ms", "memory_bytes"} - set(second)
    assert not missing, f"latency and memory are not all drawn: missing {sorted(missing)} of {sorted(second)}"
    assert clock_2 > clock_1, f"the readout's story time did not advance ({clock_1:g} -> {clock_2:g})"
    for column, (x2, _y2) in second.items():
        x1 = first.get(column, ([], []))[0]
        assert x2, f"trace {column} is empty while the run is live"
        assert len(x2) >= len(x1), f"trace {column} shrank from {len(x1)} to {len(x2)} points"
        assert not x1 or x2[-1] > x1[-1], f"trace {column} did not move: last x {x1[-1]} -> {x2[-1]}"


def check_fault(
    session: SessionView, fault: FaultCheck, samples: list[Sample], context: dict[str, Any], step: Steps
) -> None:
    """Let the run build a baseline, switch the fault on with the widgets, and wait for its effect."""
    started = samples[0].clock
    deadline = time.monotonic() + FAULT_REAL_LIMIT_S
    while samples[-1].clock < started + fault.baseline_story_s:
        assert time.monotonic() < deadline, "the run did not get through its baseline in time"
        time.sleep(0.1)
        status, sample, _traces = session.read()
        assert status["state"] == "running", f"the run ended before the fault was switched on: {status}"
        samples.append(sample)
    step(f"live: baseline done at story time {samples[-1].clock:g}")
    if fault.pause:
        session.press("pause")
        session.wait_state(("paused",), timeout_s=STATE_LIMIT_S)
        held = wait_for_clock_to_hold(session)
        time.sleep(1.0)
        assert session.readout().clock == held, "the story clock moved again while paused"
    before = session.traces()
    for action in fault.actions:
        session.perform(action)
        step(f"live: {action.describe()}")
    samples.append(session.readout())
    if fault.pause:
        session.press("pause")  # the same button, labelled Resume while paused
        session.wait_state(("running",), timeout_s=STATE_LIMIT_S)
    seen = Observed(
        fault_at=samples[-1].clock,
        settle_s=fault.settle_s,
        samples=samples,
        traces=before,
        before=before,
        until=fault.met_by_seconds,
    )
    step(f"live: fault on at story time {seen.fault_at:g}")
    context["fault"] = {"what": fault.what, "fault_at": seen.fault_at, "actions": [a.describe() for a in fault.actions]}
    for expectation in fault.expect:
        problem = expectation.precondition(seen)
        assert problem is None, f"{expectation.describe()}: the check would prove nothing: {problem}"
    met: dict[int, str] = {}
    while True:
        time.sleep(POLL_S)
        status, sample, seen.traces = session.read()
        seen.samples.append(sample)
        assert status["error"] == "false", f"the session reports an error: {status['text']}"
        verdicts = [expectation.check(seen) for expectation in fault.expect]
        context["verdicts"] = [f"{e.describe()}: {v}: {why}" for e, (v, why) in zip(fault.expect, verdicts)]
        for index, (verdict, why) in enumerate(verdicts):
            assert verdict != "violated", f"{fault.what}\n  {fault.expect[index].describe()}: {why}"
            if verdict == "met" and index not in met:
                met[index] = why
                step(f"live: met: {why}")
        if len(met) == len(fault.expect):
            return
        watched = seen.now - seen.fault_at
        if (
            watched > fault.within_story_s
            or sample.clock > seen.until
            or status["state"] != "running"
            or time.monotonic() > deadline
        ):
            pending = "\n".join(
                f"  {fault.expect[i].describe()}: {why}" for i, (_verdict, why) in enumerate(verdicts) if i not in met
            )
            limit = f" (the lesson's limit: {fault.met_by})" if fault.met_by else ""
            raise AssertionError(
                f"{fault.what}\nnot seen on the dashboard {watched:g} story seconds after "
                f"{'; '.join(a.describe() for a in fault.actions)} at story time {seen.fault_at:g}{limit}, "
                f"run {status['state']}:\n{pending}"
            )
