"""The notebook UI without a browser: panel bounds, the dashboard's window, the session's state machine.

Widgets work without a frontend (ipywidgets keeps their state in Python), so
everything a learner can do with a mouse is done here with ``.value = ...``
and ``button.click()``. Live runs use a high pace and short durations, and
every test ends with no simulation thread left alive.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import payflow_lab as pf
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.faults import LIMITS
from payflow_lab.lab import ControlPanel, Dashboard, LiveSession, close_all, live_threads, run_figure
from payflow_lab.lab.dashboard import MAX_UPDATES_PER_S, RECENT_ROWS
from payflow_lab.lab.env import Check, _package, check_environment, environment_html, environment_ok
from payflow_lab.lab.panel import BUTTON_STATES, PACE_LIMITS
from payflow_lab.lab.plots import (
    MAX_POINTS,
    PALETTE,
    RollingPercentiles,
    describe_figure,
    display_value,
    expand_columns,
    latency_figure,
    rolling_latency,
    story_x,
    thin,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = {"pace": 1000.0, "memory": "off"}


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    yield
    close_all(timeout=30)
    assert live_threads() == []


def wait_until(predicate, timeout: float = 20.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(step)


def poll_until_final(session: LiveSession, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while session.poll_once():
        if time.monotonic() > deadline:
            raise AssertionError(f"session still {session.state} after {timeout} s")
        time.sleep(0.01)


def fake_series(rows: int, start: float = 50_400.0, **extra: list[Any]) -> dict[str, list[Any]]:
    """A recorder-shaped series: one row per simulated second."""
    series: dict[str, list[Any]] = {
        "clock": [start + i for i in range(rows)],
        "arrivals": [2] * rows,
        "completed": [1] * rows,
        "failed": [i % 2 for i in range(rows)],
        "p50_ms": [None if i % 7 == 0 else 100.0 + i for i in range(rows)],
        "p99_ms": [None if i % 7 == 0 else 1000.0 + i for i in range(rows)],
        "in_flight_payments": [i % 5 for i in range(rows)],
        "in_flight_tasks": [i % 3 for i in range(rows)],
        "db_in_use": [i % 11 for i in range(rows)],
        "db_waiting": [0] * rows,
        "memory_bytes": [1024 * 1024 * (1 + i) for i in range(rows)],
    }
    series.update(extra)
    series["t"] = [float(i) for i in range(rows)]
    return series


def grow(series: dict[str, list[Any]], more: dict[str, list[Any]]) -> None:
    for name, values in more.items():
        series.setdefault(name, [None] * len(series["t"]))
        if name != "t":
            series[name].extend(values)
    series["t"].extend(more["t"])


# ============================================================== control panel
class TestControlPanel:
    def test_widget_bounds_are_the_fault_plan_limits(self):
        panel = ControlPanel()
        for key in ("traffic_multiplier", "webhook_error_rate", "webhook_hang_rate"):
            slider = panel.sliders[key]
            assert (slider.min, slider.max) == LIMITS[key]
        latency = panel.sliders["webhook_latency_multiplier"]
        low, high = LIMITS["webhook_latency_multiplier"]
        assert math.isclose(latency.base**latency.min, low) and math.isclose(latency.base**latency.max, high)
        assert math.isclose(10**panel.pace.min, PACE_LIMITS[0]) and math.isclose(10**panel.pace.max, PACE_LIMITS[1])

    def test_an_extreme_value_is_clamped_and_reported_as_the_clamped_value(self):
        panel = ControlPanel()
        heard: list[dict[str, Any]] = []
        panel.on_faults(heard.append)
        panel.sliders["traffic_multiplier"].value = 1e9
        panel.sliders["webhook_latency_multiplier"].value = 0.0
        assert panel.sliders["traffic_multiplier"].value == LIMITS["traffic_multiplier"][1]
        assert heard == [{"traffic_multiplier": 50.0}, {"webhook_latency_multiplier": 0.1}]

    @pytest.mark.parametrize("key", ["traffic_multiplier", "webhook_error_rate", "webhook_latency_multiplier"])
    def test_nan_is_refused_named_in_the_status_and_the_widget_keeps_its_value(self, key):
        panel = ControlPanel()
        heard: list[dict[str, Any]] = []
        panel.on_faults(heard.append)
        before = panel.sliders[key].value
        panel.sliders[key].value = float("nan")
        assert panel.sliders[key].value == before
        assert heard == []
        assert panel.status_error and key in panel.status_text

    def test_nan_pace_is_refused(self):
        panel = ControlPanel(pace=50)
        heard: list[float] = []
        panel.on_pace(heard.append)
        panel.pace.value = float("nan")
        assert panel.pace.value == 50 and heard == [] and "pace" in panel.status_text

    def test_apply_is_all_or_nothing(self):
        panel = ControlPanel()
        heard: list[dict[str, Any]] = []
        panel.on_faults(heard.append)
        assert not panel.apply(webhook_error_rate=0.5, traffic_multiplier=1e9)
        assert panel.sliders["webhook_error_rate"].value == 0.0  # the valid half was not applied either
        assert heard == [] and "traffic_multiplier" in panel.status_text
        assert not panel.apply(tier_modes={"standard": "sideways"})
        assert panel.tiers[pf.Tier.STANDARD].value == "up" and "tier_modes.standard" in panel.status_text
        assert not panel.apply(pace=0)
        assert not panel.apply(colour="red")
        assert panel.apply(webhook_error_rate=0.25, tier_modes={"premium": "hang"}, pace=100)
        assert panel.sliders["webhook_error_rate"].value == 0.25
        assert panel.tiers[pf.Tier.PREMIUM].value == "hang"
        assert panel.selected_pace == 100
        assert heard == [{"webhook_error_rate": 0.25, "tier_modes": {"premium": "hang"}}]

    def test_tier_toggle_reports_a_tier_mode_change(self):
        panel = ControlPanel()
        heard: list[dict[str, Any]] = []
        panel.on_faults(heard.append)
        panel.tiers[pf.Tier.STANDARD].value = "hang"
        assert heard == [{"tier_modes": {"standard": "hang"}}]
        assert panel.changed_faults() == {"tier_modes": {"standard": "hang"}}

    def test_changed_faults_leaves_defaults_to_the_scenario(self):
        panel = ControlPanel(faults={"webhook_error_rate": 0.3})
        assert panel.changed_faults() == {"webhook_error_rate": 0.3}
        panel.sliders["webhook_error_rate"].value = 0.0
        assert panel.changed_faults() == {}

    def test_bad_arguments_name_the_field(self):
        with pytest.raises(ValidationError) as info:
            ControlPanel(phase=9)
        assert info.value.field == "phase"
        with pytest.raises(ValidationError) as info:
            ControlPanel(phases=[])
        assert info.value.field == "phases"
        with pytest.raises(ValidationError) as info:
            ControlPanel(scenario="cyber monday")
        assert info.value.field == "scenario"
        with pytest.raises(ValidationError) as info:
            ControlPanel(pace=1e6)
        assert info.value.field == "pace"
        with pytest.raises(ValidationError) as info:
            ControlPanel(seed=-1)
        assert info.value.field == "seed"
        with pytest.raises(ValidationError) as info:
            ControlPanel(faults={"webhook_error_rate": 2})
        assert info.value.field == "webhook_error_rate"

    def test_only_existing_phases_are_offered_and_a_single_phase_is_locked(self):
        panel = ControlPanel()
        assert [value for _, value in panel.phase.options] == pf.available_phases()
        locked = ControlPanel(phases=[1])
        assert locked.phase.disabled
        locked.set_state("finished")
        assert locked.phase.disabled

    @pytest.mark.parametrize("state", list(BUTTON_STATES))
    def test_buttons_follow_the_state(self, state):
        panel = ControlPanel()
        panel.set_state(state)
        for name, enabled in BUTTON_STATES[state].items():
            if name != "setup":
                assert panel.buttons[name].disabled is not enabled
        assert panel.seed.disabled is not BUTTON_STATES[state]["setup"]
        assert panel.buttons["pause"].description == ("Resume" if state == "paused" else "Pause")

    def test_unknown_state_is_refused(self):
        with pytest.raises(ValueError, match="state"):
            ControlPanel().set_state("exploded")

    def test_reset_and_show_plan_move_widgets_without_telling_anyone(self):
        panel = ControlPanel(scenario="blackfriday", faults={"webhook_error_rate": 0.1}, seed=3)
        heard: list[Any] = []
        panel.on_faults(heard.append)
        panel.on_pace(heard.append)
        panel.show_plan({"traffic_multiplier": 10.0, "tier_modes": {"standard": "hang"}})
        assert panel.sliders["traffic_multiplier"].value == 10.0
        assert panel.tiers[pf.Tier.STANDARD].value == "hang"
        panel.seed.value = 99
        panel.scenario.value = "normal"
        panel.reset()
        assert panel.sliders["traffic_multiplier"].value == 1.0
        assert panel.sliders["webhook_error_rate"].value == 0.1
        assert panel.tiers[pf.Tier.STANDARD].value == "up"
        assert (panel.selected_seed, panel.selected_scenario) == (3, "blackfriday")
        assert heard == []

    def test_a_failing_listener_becomes_a_status_line_not_a_traceback(self):
        panel = ControlPanel()

        def broken(name: str) -> None:
            raise RuntimeError("listener exploded")

        panel.on_button(broken)
        panel.buttons["start"].click()  # must not raise
        assert panel.status_error and "listener exploded" in panel.status_text

    def test_css_classes_for_browser_tests(self):
        panel = ControlPanel()
        assert "payflow-panel" in panel.widget._dom_classes
        for name in ("start", "pause", "stop", "reset"):
            assert f"payflow-{name}" in panel.buttons[name]._dom_classes
        assert "payflow-tier-standard" in panel.tiers[pf.Tier.STANDARD]._dom_classes
        assert "payflow-webhook-error-rate" in panel.sliders["webhook_error_rate"]._dom_classes


# ================================================================== plots
class TestReadablePlots:
    def test_rolling_percentiles_are_exact_over_the_window(self):
        roll = RollingPercentiles(rows=3)
        assert roll.add([]) == (None, None)
        roll.add([0.1, 0.3])
        roll.add([0.2])
        p50, _ = roll.add([0.5, 0.4])
        assert p50 == 300.0  # the median of 0.1..0.5
        p50, p99 = roll.add([])  # the first second (0.1, 0.3) leaves the window
        assert p50 == pytest.approx(400.0) and p99 == pytest.approx(500.0, rel=0.02)
        with pytest.raises(ValidationError, match="rows"):
            RollingPercentiles(rows=0)

    def test_story_time_is_a_date_string_plotly_cannot_misread(self):
        assert story_x(14 * 3600 + 15 * 60) == "2026-11-27 14:15:00"
        assert story_x(86_400 + 30) == "2026-11-28 00:00:30"

    def test_colour_blind_palette_and_line_styles_tell_p50_from_p99(self):
        result = pf.run("normal", 1, duration=300, memory="off")
        fig = run_figure(result)
        traces = {t.meta: t for t in fig.data}
        assert traces["p50_ms"].line.dash == "solid" and traces["p99_ms"].line.dash == "dash"
        assert traces["p50_ms"].line.color in PALETTE and traces["p99_ms"].line.color in PALETTE
        assert traces["p50_ms"].line.color != traces["p99_ms"].line.color
        assert list(fig.layout.colorway) == list(PALETTE)
        assert fig.layout.xaxis.type == "date"
        assert [stop.value for stop in fig.layout.xaxis.tickformatstops] == ["%H:%M:%S", "%H:%M"]
        assert traces["p50_ms"].x[0].startswith("2026-11-27 ")

    def test_events_have_labels_and_a_line_style_per_kind(self):
        result = pf.run("blackfriday", 1, duration=1200, memory="off")
        fig = run_figure(result)
        events = result.summary["events"]
        labels = [a for a in fig.layout.annotations if a.hovertext]
        assert 1 <= len(labels) <= len(events) and all(a.text for a in labels)
        assert len(fig.layout.shapes) == len(events)  # every event has its line, labelled or not
        kinds = {e["kind"] for e in events}
        legend = {t.meta for t in fig.data if str(t.meta).startswith("event:")}
        assert legend == {f"event:{k}" for k in kinds}
        dashes = {s.line.dash for s in fig.layout.shapes}
        assert len(dashes) == len(kinds)

    def test_every_figure_says_what_it_shows_in_one_line(self):
        result = pf.run("blackfriday", 1, duration=1200, memory="off")
        text = describe_figure(result)
        assert text.count(".") >= 1 and "\n" not in text
        assert "p99 peaks at" in text and "memory not measured" in text and "rolling 60 s" in text
        assert run_figure(result).layout.title.subtitle.text == text
        assert latency_figure(result).layout.title.subtitle.text == text


# ================================================================== dashboard
class RecordingComm:
    """Stands in for the kernel's comm: keeps what the widget opened with and every message it sent after."""

    opened: list[RecordingComm] = []

    def __init__(self, **kwargs: Any) -> None:
        self.open_data = kwargs["data"]
        self.sent: list[dict[str, Any]] = []
        self.comm_id = f"recording-{uuid.uuid4().hex}"  # unique: ipywidgets keeps every widget by this id
        self.kernel = object()
        RecordingComm.opened.append(self)

    def send(self, data: dict[str, Any] | None = None, buffers: Any = None) -> None:
        self.sent.append(data or {})

    def on_msg(self, callback: Any) -> None:
        pass

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def recording_comms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingComm]]:
    import ipywidgets.widgets.widget as widget_module

    RecordingComm.opened = []
    monkeypatch.setattr(widget_module.comm, "create_comm", RecordingComm)
    yield RecordingComm.opened
    # Close what the test made, so no widget with a stand-in comm is left for interpreter shutdown to close.
    for widget in list(widget_module._instances.values()):
        if isinstance(widget.comm, RecordingComm):
            widget.close()


class TestFigureWidget:
    """The browser's first message about a figure must be the whole figure (a view drawn before any update)."""

    def test_the_dashboard_opens_with_its_layout_and_sends_nothing_before(self, recording_comms):
        dash = Dashboard(panels={"DB pool": ["db_in_use"]})
        [comm] = [c for c in recording_comms if "_widget_layout" in c.open_data["state"]]
        layout = comm.open_data["state"]["_widget_layout"]
        assert comm is dash.figure.comm
        assert layout.get("xaxis", {}).get("type") == "date", (
            "a view drawn from the first message types the axis itself"
        )
        assert {"xaxis2", "xaxis3", "annotations", "title"} <= set(layout), sorted(layout)
        late = [m for m in comm.sent if {"_widget_layout", "_widget_data"} & set(m.get("state", {}))]
        assert late == [], f"the figure itself came after the first message: {late}"

    def test_updates_still_reach_the_browser_after_it_opens(self, recording_comms):
        from payflow_lab.lab.figure_widget import FigureWidget

        figure = FigureWidget(layout={"xaxis": {"type": "date"}})
        assert figure.comm is not None and figure.comm.open_data["state"]["_widget_data"] == []
        figure.add_scatter(x=["2026-11-27 14:00:00"], y=[1.0])
        assert any("_py2js_addTraces" in message.get("state", {}) for message in figure.comm.sent)
        figure.layout.title.text = "after"
        assert any("_py2js_relayout" in message.get("state", {}) for message in figure.comm.sent)


class TestDashboard:
    def test_update_reads_only_new_rows_and_sends_nothing_without_them(self):
        dash = Dashboard()
        series = fake_series(30)
        assert dash.update(series) == 30
        sent = dash.updates_sent
        assert dash.update(series) == 0
        assert dash.updates_sent == sent
        grow(series, fake_series(5, start=50_430.0))
        assert dash.update(series, force=True) == 5
        assert dash.rows_seen == 35 and dash.updates_sent == sent + 1

    def test_updates_are_coalesced_to_a_few_per_real_second(self):
        now = [0.0]
        dash = Dashboard(clock=lambda: now[0])
        series = fake_series(0)
        for step in range(40):  # a poller at 20 Hz for two real seconds, one new row each time
            grow(series, fake_series(1, start=50_400.0 + step))
            dash.update(series)
            now[0] += 0.05
        assert dash.rows_seen == 40
        assert 2 <= dash.updates_sent <= 2 * MAX_UPDATES_PER_S + 1
        x, _ = dash.window("p50_ms")
        assert dash.figure.data[0].x[-1] != x[-1]  # the newest rows wait for the next update...
        now[0] += 1.0
        dash.update(series)  # ...which sends them without any new row
        assert dash.figure.data[0].x[-1] == x[-1]

    def test_a_slow_send_spaces_the_next_ones_out(self):
        now = [0.0]

        def clock() -> float:
            now[0] += 0.25  # every reading of the clock: a quarter of a second gone (a slow browser link)
            return now[0]

        dash = Dashboard(clock=clock)
        series = fake_series(1)
        dash.update(series)
        grow(series, fake_series(1, start=50_401.0))
        sent = dash.updates_sent
        dash.update(series)  # due only SEND_SHARE-inverse times the cost later: not yet
        assert dash.updates_sent == sent

    def test_latency_is_a_rolling_percentile_when_the_latencies_are_given(self):
        series = fake_series(200, completed=[3 if i % 4 else 0 for i in range(200)])
        latencies = [0.1 + 0.001 * k for k in range(sum(series["completed"]))]
        dash = Dashboard(window_minutes=4)
        dash.update(series, latencies, force=True)
        p50, p99 = rolling_latency(series["completed"], latencies)
        _, drawn = dash.window("p50_ms")
        assert drawn == [display_value("p50_ms", v) for v in p50]
        assert drawn[0] is None and None not in drawn[1:]  # quiet seconds (every fourth) do not break the line
        _, drawn99 = dash.window("p99_ms")
        assert drawn99 == [display_value("p99_ms", v) for v in p99]

    def test_finish_draws_the_whole_run_not_only_the_window(self):
        dash = Dashboard(window_minutes=1)
        series = fake_series(3000)
        dash.update(series)
        dash.finish(series)
        trace = dash.figure.data[0]
        assert dash.finished and len(trace.x) == MAX_POINTS + 1
        assert trace.x[0] == story_x(series["clock"][0]) and trace.x[-1] == story_x(series["clock"][-1])

    def test_events_are_marked_as_they_happen_and_only_within_the_window(self):
        dash = Dashboard(window_minutes=1)
        series = fake_series(30)
        events = [
            (50_405.0, 1, "scripted", "traffic x10: the sale starts"),
            (50_420.0, 2, "observed", "the pool is exhausted"),
        ]
        dash.update(series, events=events, force=True)
        assert [s.line.dash for s in dash.figure.layout.shapes] == ["dash", "dot"]
        labels = [a.text for a in dash.figure.layout.annotations if a.hovertext]
        assert labels == ["traffic x10", "the pool is exhausted"]
        assert {t.meta for t in dash.figure.data if str(t.meta).startswith("event:")} == {
            "event:scripted",
            "event:observed",
        }
        grow(series, fake_series(40, start=50_430.0))  # the first event scrolls out of the one-minute window
        dash.update(series, events=events, force=True)
        assert len(dash.figure.layout.shapes) == 1
        dash.finish(series, events=events)  # the whole run: every event again
        assert len(dash.figure.layout.shapes) == 2

    def test_memory_off_says_so_instead_of_a_flat_zero(self):
        dash = Dashboard(memory=False)
        dash.update(fake_series(10, memory_bytes=[0] * 10), force=True)
        assert "memory_bytes" not in dash.columns
        assert any("memory not measured" in a.text for a in dash.figure.layout.annotations)
        assert "not measured" in dash.readout.value

    def test_pace_readout_appears_only_when_measured_and_says_when_behind(self):
        dash = Dashboard()
        dash.update(fake_series(5), force=True)
        assert 'data-metric="pace_ratio"' not in dash.readout.value
        dash.set_pace_ratio(0.42)
        dash.update(fake_series(6), force=True)
        assert "0.4x of the pace asked" in dash.readout.value

    def test_window_is_bounded_whatever_the_length_of_the_run(self):
        dash = Dashboard(window_minutes=1)
        series = fake_series(3000)
        dash.update(series)
        for trace in dash.figure.data:
            assert len(trace.x) == len(trace.y) == dash.window_rows == 61
        x, y = dash.window("p50_ms")
        assert x[-1] == story_x(series["clock"][-1]) and x[0] == story_x(series["clock"][-61])
        assert y[-1] == display_value("p50_ms", series["p50_ms"][-1])

    def test_chunked_updates_draw_the_same_window_as_one_update(self):
        whole = fake_series(400)
        one = Dashboard(window_minutes=2, panels={"DB": ["db_in_use"]})
        one.update(whole)
        chunked = Dashboard(window_minutes=2, panels={"DB": ["db_in_use"]})
        series = fake_series(0)
        for start in range(0, 400, 37):
            stop = min(400, start + 37)
            grow(series, {k: v[start:stop] for k, v in whole.items()})
            chunked.update(series, force=True)
        for a, b in zip(one.figure.data, chunked.figure.data):
            assert a.meta == b.meta and a.x == b.x and a.y == b.y

    def test_units_latency_in_seconds_memory_in_mib_gaps_kept(self):
        dash = Dashboard()
        dash.update(fake_series(10))
        _, p50 = dash.window("p50_ms")
        _, memory = dash.window("memory_bytes")
        assert p50[0] is None and p50[1] == pytest.approx(0.101)
        assert memory[:3] == [1.0, 2.0, 3.0]

    def test_extra_panels_show_existing_columns_and_patterns_as_they_appear(self):
        dash = Dashboard(
            panels={"DB pool": ["db_in_use", "db_waiting"], "queues": ["queue_*"], "breaker": ["breaker_state"]}
        )
        series = fake_series(20)
        dash.update(series)
        assert dash.columns == ["p50_ms", "p99_ms", "memory_bytes", "db_in_use", "db_waiting"]
        # a phase adds its gauges once it has started: back-filled with None, then sampled
        more = fake_series(5, start=50_420.0, queue_webhook=[3] * 5, queue_analytics=[1] * 5)
        grow(series, more)
        dash.update(series, force=True)
        assert dash.columns[-2:] == ["queue_analytics", "queue_webhook"]
        x, y = dash.window("queue_webhook")
        assert len(x) == len(y) == 25 and y[:20] == [None] * 20 and y[20:] == [3.0] * 5
        axes = {trace.meta: (trace.xaxis, trace.yaxis) for trace in dash.figure.data}
        assert axes["p50_ms"] == ("x", "y") and axes["memory_bytes"] == ("x2", "y2")
        assert axes["db_in_use"] == ("x3", "y3") and axes["queue_webhook"] == ("x4", "y4")
        assert "breaker_state" not in axes

    def test_readout_carries_running_totals_for_people_and_browsers(self):
        dash = Dashboard()
        series = fake_series(100)
        dash.update(series)
        values = dict(re.findall(r'data-metric="(\w+)" data-value="([^"]*)"', dash.readout.value))
        assert int(values["completed"]) == sum(series["completed"])
        assert int(values["failed"]) == sum(series["failed"])
        assert float(values["clock"]) == series["clock"][-1]
        assert float(values["p99_s"]) == pytest.approx(series["p99_ms"][-1] / 1000)
        assert "payflow-readout" in dash.readout._dom_classes
        assert "payflow-dashboard" in dash.figure._dom_classes

    def test_readout_shows_no_latency_when_nothing_completed_for_a_minute(self):
        dash = Dashboard()
        series = fake_series(10)
        grow(series, fake_series(RECENT_ROWS, start=50_410.0, p50_ms=[None] * RECENT_ROWS, p99_ms=[None] * RECENT_ROWS))
        dash.update(series)
        assert dash.totals["p50_s"] is None and 'data-metric="p50_s" data-value=""' in dash.readout.value

    def test_a_shorter_series_starts_over(self):
        dash = Dashboard()
        dash.update(fake_series(50))
        dash.update(fake_series(10), force=True)
        assert dash.rows_seen == 10 and len(dash.figure.data[0].x) == 10

    def test_reset_forgets_everything(self):
        dash = Dashboard(panels={"DB": ["db_in_use"]})
        dash.update(fake_series(50))
        dash.reset(title="next run")
        assert dash.rows_seen == 0 and dash.figure.data == () and dash.figure.layout.title.text == "next run"
        assert dash.totals["completed"] is None

    @pytest.mark.parametrize(
        "kwargs, field",
        [
            ({"window_minutes": 0}, "window_minutes"),
            ({"window_minutes": float("inf")}, "window_minutes"),
            ({"panels": {"DB": "db_in_use"}}, "panels.DB"),
            ({"panels": {"DB": []}}, "panels.DB"),
            ({"panels": ["db_in_use"]}, "panels"),
            ({"panels": {"memory (MiB)": ["db_in_use"]}}, "panels"),
        ],
    )
    def test_bad_arguments_name_the_field(self, kwargs, field):
        with pytest.raises(ValidationError) as info:
            Dashboard(**kwargs)
        assert info.value.field == field


# ====================================================================== plots
class TestPlots:
    def test_expand_columns_keeps_pattern_order_and_sorts_matches(self):
        names = ["queue_b", "db_in_use", "queue_a", "t"]
        assert expand_columns(["db_in_use", "queue_*", "missing"], names) == ["db_in_use", "queue_a", "queue_b"]

    def test_run_figure_draws_the_run_with_its_events(self):
        result = pf.run("blackfriday", phase=1, seed=3, scale=0.02, duration=900, memory="off")
        fig = run_figure(result, panels={"DB pool": ["db_in_use", "db_waiting"]})
        by_meta = {trace.meta: trace for trace in fig.data}
        kinds = sorted({e["kind"] for e in result.summary["events"]})
        drawn = [m for m in by_meta if not m.startswith("event:")]
        assert drawn == ["p50_ms", "p99_ms", "db_in_use", "db_waiting"]  # memory off: no flat zero line
        assert sorted(m[len("event:") :] for m in by_meta if m.startswith("event:")) == kinds
        assert len(by_meta["db_in_use"].y) == len(result.series["t"])
        assert by_meta["db_in_use"].yaxis == "y3"
        assert len(fig.layout.shapes) == len(result.summary["events"])
        assert "phase 1" in fig.layout.title.text
        assert len(latency_figure(result).data) == 2 + len(kinds)

    def test_thin_keeps_at_most_max_points_real_rows_and_the_last_one(self):
        series = fake_series(4230)
        thinned = thin(series, 1000)
        assert len(thinned["clock"]) <= 1001 and len(thinned["p50_ms"]) == len(thinned["clock"])
        assert thinned["clock"][0] == series["clock"][0] and thinned["clock"][-1] == series["clock"][-1]
        assert set(thinned["memory_bytes"]) <= set(series["memory_bytes"])
        assert thin(series, 5000) == series
        with pytest.raises(ValidationError) as info:
            thin(series, 1)
        assert info.value.field == "max_points"

    def test_run_figure_refuses_what_is_not_a_run(self):
        with pytest.raises(ValidationError) as info:
            run_figure({"x": [1]})
        assert info.value.field == "result"


# ============================================================== live session
class TestLiveSession:
    def test_start_pause_resume_stop_reset(self):
        session = LiveSession(scenario="normal", duration=1800, autopoll=False, pace=200, memory="off")
        assert session.state == "idle" and session.panel.buttons["start"].disabled is False
        session.panel.buttons["start"].click()
        assert session.state == "running" and session.live is not None and session.live.running
        assert session.panel.buttons["start"].disabled and session.panel.seed.disabled
        wait_until(lambda: len(session.live.series["t"]) > 3)
        session.panel.buttons["pause"].click()
        assert session.state == "paused" and session.live.state == "paused"
        assert session.panel.buttons["pause"].description == "Resume"
        assert not session.reset() and session.panel.status_error  # refused while live
        time.sleep(0.1)  # let the run reach its next tick, where it holds
        rows = len(session.live.series["t"])
        time.sleep(0.3)
        assert len(session.live.series["t"]) == rows  # nothing moves while paused
        session.panel.buttons["pause"].click()
        assert session.state == "running"
        wait_until(lambda: len(session.live.series["t"]) > rows)
        session.panel.buttons["stop"].click()
        assert session.state == "stopping"
        poll_until_final(session)
        assert session.state == "stopped" and not session.live.running
        assert session.result is not None and session.result.summary["sim_seconds"] < 1800
        assert session.dashboard.rows_seen == len(session.result.series["t"])
        assert "ended at" in session.panel.status_text
        assert session.reset() and session.state == "idle" and session.dashboard.rows_seen == 0

    def test_stop_while_paused_ends_the_run(self):
        session = LiveSession(scenario="blackfriday", autopoll=False, pace=50, memory="off")
        session.start()
        wait_until(lambda: len(session.live.series["t"]) > 2)
        session.pause()
        session.stop()
        assert session.state == "stopping"
        poll_until_final(session)
        assert session.state == "stopped" and live_threads() == []

    def test_a_run_that_ends_by_itself_finishes_and_can_be_started_again(self):
        session = LiveSession(scenario="normal", duration=120, autopoll=False, **FAST)
        assert session.start()
        poll_until_final(session)
        assert session.state == "finished" and session.result is not None
        first = session.result.summary
        assert session.start()  # a fresh run, same settings: same story
        poll_until_final(session)
        assert pf.strip_nondeterministic(session.result.summary) == pf.strip_nondeterministic(first)

    def test_a_slider_moved_mid_run_reaches_the_run_at_the_next_tick(self):
        session = LiveSession(scenario="normal", duration=600, autopoll=False, pace=100, memory="off")
        session.start()
        wait_until(lambda: len(session.live.series["t"]) > 2)
        session.panel.sliders["webhook_error_rate"].value = 0.5
        session.panel.tiers[pf.Tier.ENTERPRISE].value = "down"
        assert "next simulated second" in session.panel.status_text
        faults = session.live.simulation.world.faults
        wait_until(lambda: faults.webhook_error_rate == 0.5)
        assert faults.tier_modes[pf.Tier.ENTERPRISE] is pf.EndpointMode.DOWN
        session.close()
        events = [e["what"] for e in session.result.summary["events"] if e["kind"] == "control"]
        assert "control: webhook_error_rate=0.5" in events
        assert "control: tier_modes={'enterprise': 'down'}" in events

    def test_settings_made_before_start_are_the_runs_opening_faults(self):
        session = LiveSession(scenario="normal", duration=30, autopoll=False, **FAST)
        session.panel.sliders["webhook_latency_multiplier"].value = 10**0.5
        assert "when the next run starts" in session.panel.status_text
        session.start()
        assert session.live.config.faults == {"webhook_latency_multiplier": pytest.approx(10**0.5)}
        session.close()

    def test_the_scenario_script_moves_the_sliders(self):
        session = LiveSession(scenario="blackfriday", duration=660, autopoll=False, **FAST)
        session.start()
        poll_until_final(session)
        assert session.panel.sliders["traffic_multiplier"].value == 3.0  # the sale began at 14:00

    def test_start_again_replays_the_script_not_as_faults_of_your_own(self):
        session = LiveSession(scenario="blackfriday", duration=660, autopoll=False, **FAST)
        session.panel.tiers[pf.Tier.STANDARD].value = "down"  # the learner's own fault
        session.start()
        poll_until_final(session)
        first = session.result.summary
        assert session.panel.sliders["traffic_multiplier"].value == 3.0  # the script moved it
        assert session.start()
        assert session.live.config.faults == {"tier_modes": {"standard": "down"}}
        assert session.panel.sliders["traffic_multiplier"].value == 1.0  # shows what the run starts with
        poll_until_final(session)
        assert pf.strip_nondeterministic(session.result.summary) == pf.strip_nondeterministic(first)
        session.reset()
        assert session.panel.changed_faults() == {}

    def test_poller_runs_on_the_event_loop_and_ends_with_the_run(self):
        async def main() -> LiveSession:
            session = LiveSession(scenario="normal", duration=300, interval=0.02, **FAST)
            assert session.start() and session.polling
            await session.wait(timeout=30)
            await asyncio.sleep(0.1)
            assert session.state == "finished" and not session.polling
            assert session.dashboard.rows_seen == len(session.result.series["t"])
            assert session.dashboard.updates_sent >= 2
            return session

        session = asyncio.run(main())
        assert session._task.done() and live_threads() == []

    def test_stop_then_aclose_leaves_nothing_behind(self):
        async def main() -> None:
            session = LiveSession(scenario="blackfriday", pace=20, memory="off")
            session.start()
            await asyncio.sleep(0.3)
            session.panel.buttons["stop"].click()
            assert session.state == "stopping"
            await session.aclose()
            assert session.state == "stopped" and session._task.done()

        asyncio.run(main())
        assert live_threads() == []

    def test_without_an_event_loop_autopoll_refuses_to_start(self):
        session = LiveSession(duration=60)
        assert not session.start()
        assert session.state == "idle" and session.live is None and "event loop" in session.panel.status_text
        assert live_threads() == []

    def test_close_all_stops_every_session(self):
        sessions = [LiveSession(scenario="blackfriday", autopoll=False, pace=5, memory="off") for _ in range(2)]
        for session in sessions:
            session.start()
        assert len(live_threads()) == 2
        assert close_all() == 2
        assert live_threads() == [] and all(s.state == "stopped" for s in sessions)
        assert close_all() == 0

    def test_a_run_that_cannot_start_is_a_failed_state_not_a_traceback(self, monkeypatch):
        async def broken(self):
            raise RuntimeError("the engine is broken")

        monkeypatch.setattr(pf.Simulation, "run", broken)
        session = LiveSession(duration=60, autopoll=False, **FAST)
        session.panel.buttons["start"].click()
        assert session.state == "failed" and "the engine is broken" in session.panel.status_text
        assert session.panel.status_error and not session.panel.buttons["start"].disabled

    def test_a_broken_dashboard_stops_the_run(self, monkeypatch):
        async def main() -> LiveSession:
            session = LiveSession(scenario="blackfriday", pace=20, memory="off")

            def broken(series, latencies=None, **_):
                raise RuntimeError("plot exploded")

            monkeypatch.setattr(session.dashboard, "update", broken)
            session.start()
            for _ in range(200):
                if session.state == "failed":
                    break
                await asyncio.sleep(0.02)
            return session

        session = asyncio.run(main())
        assert session.state == "failed" and "plot exploded" in session.panel.status_text
        assert live_threads() == []

    @pytest.mark.parametrize(
        "kwargs, field",
        [
            ({"scale": 0}, "scale"),
            ({"duration": -1}, "duration"),
            ({"pace": 0}, "pace"),
            ({"interval": float("nan")}, "interval"),
            ({"faults": {"traffic_multiplier": 1e9}}, "traffic_multiplier"),
            ({"panels": {"x": "db_in_use"}}, "panels.x"),
        ],
    )
    def test_bad_arguments_name_the_field(self, kwargs, field):
        with pytest.raises(ValidationError) as info:
            LiveSession(**kwargs)
        assert info.value.field == field


# ================================================================ environment
def test_environment_checks_pass_here_and_fail_for_what_is_missing():
    checks = check_environment()
    assert environment_ok(checks), [c for c in checks if not c.ok]
    assert {"anywidget importable", "plotly FigureWidget", "virtual time"} <= {c.name for c in checks}
    missing = _package("no-such-package-payflow", "1.0")
    assert not missing.ok and missing.found == "not installed"
    assert not _package("anyio", "999").ok
    assert "✘" in environment_html([Check("x", "y", "z", False)])


# ========================================================== committed lessons
def _builder():
    spec = importlib.util.spec_from_file_location("build_lessons", ROOT / "tools" / "build_lessons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["00_start_here.ipynb", "01_synchronous.ipynb"])
def test_committed_lessons_are_clean(name):
    path = ROOT / "lessons" / name
    problems = _builder().problems(json.loads(path.read_text(encoding="utf-8")))
    assert problems == []
