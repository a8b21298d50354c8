"""The live dashboard: a plotly ``FigureWidget`` and a readout that follow a run as it happens.

:meth:`Dashboard.update` is called about ten times a second with the live
run's series (a dict of growing lists, see :class:`payflow_lab.core.recorder.Recorder`)
and its completed latencies. It reads only the rows it has not seen yet and
appends them to a window of bounded length (the last ``window_minutes`` of
story time). Latency is drawn as rolling percentiles (p50 and p99 of the last
:data:`~payflow_lab.lab.plots.ROLLING_S` story seconds), so it is a continuous
line even in a quiet phase.

Sending is *coalesced*: the figure goes to the browser at most
:data:`MAX_UPDATES_PER_S` times a real second, and less often when sending is
slow (an update never takes more than about a fifth of the kernel's time, see
:data:`SEND_SHARE`). Every figure update is one message on the kernel's IOPub
channel with every point of the window; sent ten times a second on a busy
laptop they queued up in front of the learner's clicks, and Pause answered
after 15 s. The readout (a few numbers) follows at the same rhythm.

When the run ends, :meth:`Dashboard.finish` draws the *whole* run (thinned to
:data:`~payflow_lab.lab.plots.MAX_POINTS` rows), so the cascade that scrolled
out of the live window can be seen again, zoomed and hovered.

What travels to the browser is bounded by the window, not by the length of the
run: plotly.py's ``FigureWidget`` has no "extend traces" message (its
protocol restyles a property with a whole new array), so the dashboard keeps
each array short instead. An update with no new rows sends nothing at all.

Reading a live run's series from the notebook's thread is safe because the
recorder only ever appends, and appends the ``t`` column last: the length of
``t`` is the number of complete rows.
"""

from __future__ import annotations

import html
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from payflow_lab.core.recorder import hhmmss
from payflow_lab.core.validation import number
from payflow_lab.lab.figure_widget import FigureWidget
from payflow_lab.lab.plots import (
    BASE_PANELS,
    LABEL_GAP,
    MAX_POINTS,
    RollingPercentiles,
    display_value,
    event_legend,
    event_marks,
    expand_columns,
    make_layout,
    normalise_panels,
    note_memory_off,
    panel_axes,
    panel_legend,
    spaced,
    story_x,
    thin,
    trace_style,
)

__all__ = ["Dashboard", "MAX_UPDATES_PER_S", "READOUT_METRICS", "SEND_SHARE"]

#: Figure updates sent to the browser per real second, at most.
MAX_UPDATES_PER_S = 3.0
#: Share of real time the dashboard may spend building and sending updates; slower sends space out.
SEND_SHARE = 0.2

#: What the readout shows, in order: key, label.
READOUT_METRICS: tuple[tuple[str, str], ...] = (
    ("clock", "story time"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("p50_s", "p50"),
    ("p99_s", "p99"),
    ("in_flight", "in flight"),
    ("db_in_use", "DB in use"),
    ("memory_mib", "memory"),
    ("pace_ratio", "pace"),
)

#: How far back (simulated seconds) the readout looks for the latest latency: quiet seconds have none,
#: but a pipeline where nothing has completed for a minute shows "–", not a stale figure.
RECENT_ROWS = 60
#: Bounds of the dashboard's story-time window, in minutes.
WINDOW_LIMITS = (1.0, 240.0)


def _format(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "clock":
        return hhmmss(value)
    if key in ("p50_s", "p99_s"):
        return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.1f} s"
    if key == "memory_mib":
        return f"{value:,.1f} MiB"
    if key == "pace_ratio":
        return "as asked" if value >= 0.9 else f"{value:.1f}x of the pace asked"
    return f"{value:,.0f}"


class Dashboard:
    """Latency and memory over story time, plus the panels a lesson asks for, updated incrementally.

    ``panels`` maps a panel title to the series columns it shows, by name or
    pattern (``{"DB pool": ["db_in_use", "db_waiting"], "queues": ["queue_*"]}``).
    Columns appear as soon as the run has them (phases add theirs when they
    start). ``window_minutes`` bounds how much story time the figure keeps.

    ``widget`` is what to display: the readout above the figure. Both carry
    stable CSS classes (``payflow-readout``, ``payflow-dashboard``) and the
    readout's numbers carry ``data-metric``/``data-value`` attributes, so a
    browser test can read what a learner sees.
    """

    def __init__(
        self,
        panels: Mapping[str, Sequence[str]] | None = None,
        *,
        window_minutes: float = 10.0,
        title: str = "",
        height: int | None = None,
        memory: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.panels = normalise_panels(panels)
        self.window_minutes = number(
            "window_minutes", window_minutes, minimum=WINDOW_LIMITS[0], maximum=WINDOW_LIMITS[1]
        )
        #: Rows kept: one per simulated second, plus one for the final sample a run takes as it ends.
        self.window_rows = int(self.window_minutes * 60) + 1
        self._layout = {**BASE_PANELS, **self.panels}
        self._clock = clock  # real time, for spacing the updates sent (a test passes its own)
        #: Whether the run measures memory; if not, the memory panel says so instead of drawing zeros.
        self.memory = bool(memory)
        layout = make_layout(self.panels, title=title, height=height)
        if not self.memory:
            note_memory_off(layout)
        self.figure = FigureWidget(layout)
        self._base_annotations = tuple(self.figure.layout.annotations)  # panel titles, the memory note
        self.figure.add_class("payflow-dashboard")
        self.readout = widgets.HTML()
        self.readout.add_class("payflow-readout")
        self.widget = widgets.VBox([self.readout, self.figure])
        self.widget.add_class("payflow-dashboard-box")
        self.updates_sent = 0
        self._reset_state()
        self._render_readout()

    # ---------------------------------------------------------------- state
    def _reset_state(self) -> None:
        self.rows_seen = 0
        self._x: deque[str] = deque(maxlen=self.window_rows)
        self._rolling = RollingPercentiles()
        self._latencies_seen = 0
        self._rolling_values: dict[str, deque[float | None]] = {}
        self._dirty = False
        self._next_send = 0.0
        self.send_seconds = 0.0
        self._events: list[tuple[float, str, str]] = []  # (story seconds, kind, what)
        self._event_kinds: list[str] = []
        self._columns: dict[str, deque[float | None]] = {}
        self._trace_of: dict[str, int] = {}
        self.totals: dict[str, Any] = {key: None for key, _ in READOUT_METRICS}
        self.finished = False

    def reset(self, title: str | None = None) -> None:
        """Forget everything drawn so far (a new run is about to start)."""
        self._reset_state()
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.layout.shapes = ()
            self.figure.layout.annotations = self._base_annotations
            if title is not None:
                self.figure.layout.title.text = title
            self.figure.layout.xaxis.autorange = True
        self._render_readout()

    @property
    def columns(self) -> list[str]:
        """The series columns currently drawn, in trace order."""
        return list(self._trace_of)

    def window(self, column: str) -> tuple[list[str], list[float | None]]:
        """The (x, y) points of ``column`` currently in the window, as drawn (display units)."""
        return list(self._x), list(self._columns[column])

    # --------------------------------------------------------------- update
    def update(
        self,
        series: Mapping[str, Sequence[Any]],
        latencies: Sequence[float] | None = None,
        *,
        events: Sequence[tuple[float, int, str, str]] | None = None,
        force: bool = False,
    ) -> int:
        """Take in the rows of ``series`` not seen yet; send them if an update is due. Return how many.

        ``series`` is a live run's ``series`` (or a finished run's) and
        ``latencies`` its completed latencies (``LiveRun.latencies``); without
        them latency is drawn per second. ``events`` is the run's growing
        event log (``Recorder.events``): each new one is marked on the figure. The figure is sent at most
        :data:`MAX_UPDATES_PER_S` times a second (``force``: now, if anything
        changed). Calling it again without new rows costs nothing and sends
        nothing.
        """
        if "t" not in series:
            return 0
        total = len(series["t"])  # complete rows: "t" is appended last
        if total < self.rows_seen:  # a different, shorter series: start over
            self.reset()
        new = range(self.rows_seen, total)
        names = list(series)  # one atomic copy of the keys; a phase may add a gauge meanwhile
        added = self._add_columns(names, series, total)
        if new:
            clock = series["clock"]
            for i in new:
                self._x.append(story_x(clock[i]))
            rolled = self._roll(series, latencies, new) if latencies is not None else {}
            for column, values in self._columns.items():
                if column in rolled:
                    values.extend(display_value(column, v) for v in rolled[column])
                    continue
                source = series[column]
                for i in new:
                    values.append(display_value(column, source[i]))
            self._update_totals(series, new)
            self.rows_seen = total
        if events is not None and len(events) > len(self._events):
            for at, _serial, kind, what in list(events[len(self._events) :]):
                self._events.append((at, kind, what))
            self._dirty = True
        if new or added:
            self._dirty = True
        if self._dirty and (force or self._clock() >= self._next_send):
            self._push()
        return len(new)

    def _roll(
        self, series: Mapping[str, Sequence[Any]], latencies: Sequence[float], new: range
    ) -> dict[str, list[float | None]]:
        """Rolling p50/p99 (ms) of each new row, from the latencies its ``completed`` count covers."""
        completed = series["completed"]
        p50: list[float | None] = []
        p99: list[float | None] = []
        start = self._latencies_seen
        for i in new:
            count = completed[i]
            low, high = self._rolling.add(latencies[start : start + count])
            start += count
            p50.append(low)
            p99.append(high)
        self._latencies_seen = start
        return {"p50_ms": p50, "p99_ms": p99}

    def finish(
        self,
        series: Mapping[str, Sequence[Any]],
        latencies: Sequence[float] | None = None,
        events: Sequence[tuple[float, int, str, str]] | None = None,
    ) -> None:
        """The run has ended: draw all of it, from its first second to its last, and send it now."""
        self.update(series, latencies, events=events, force=True)
        full = {name: list(values) for name, values in series.items() if name in self._trace_of or name == "clock"}
        if latencies is not None and "completed" in series:
            from payflow_lab.lab.plots import rolling_latency

            full["p50_ms"], full["p99_ms"] = rolling_latency(series["completed"], latencies)
        full = thin(full, MAX_POINTS)
        x = [story_x(c) for c in full["clock"]]
        self.finished = True
        with self.figure.batch_update():
            for column, index in self._trace_of.items():
                trace = self.figure.data[index]
                trace.x = x
                trace.y = [display_value(column, v) for v in full[column]]
            self._draw_events(x[0] if x else None)
            self.figure.layout.xaxis.autorange = True
        self.updates_sent += 1
        self._dirty = False
        self._render_readout()

    def _add_columns(self, names: list[str], series: Mapping[str, Sequence[Any]], total: int) -> bool:
        """Start drawing columns that appeared since the last update, back-filled over the window."""
        added = False
        first = self.rows_seen - len(self._x)  # index of the oldest row in the window
        for row, patterns in enumerate(self._layout.values(), start=1):
            for column in expand_columns(patterns, names):
                if column in self._columns or (column == "memory_bytes" and not self.memory):
                    continue
                source = series[column]
                values: deque[float | None] = deque(maxlen=self.window_rows)
                values.extend(display_value(column, source[i]) for i in range(first, self.rows_seen))
                self._columns[column] = values
                xaxis, yaxis = panel_axes(row)
                self.figure.add_trace(
                    go.Scatter(x=[], y=[], xaxis=xaxis, yaxis=yaxis, legend=panel_legend(row), **trace_style(column))
                )
                self._trace_of[column] = len(self.figure.data) - 1
                added = True
        return added

    def _push(self) -> None:
        started = self._clock()
        x = list(self._x)
        with self.figure.batch_update():
            for column, index in self._trace_of.items():
                trace = self.figure.data[index]
                trace.x = x
                trace.y = list(self._columns[column])
            self._draw_events(x[0] if x else None)
        self.updates_sent += 1
        self._dirty = False
        self._render_readout()
        spent = self._clock() - started
        self.send_seconds += spent
        self._next_send = started + max(1.0 / MAX_UPDATES_PER_S, spent / SEND_SHARE)

    def _draw_events(self, since: str | None) -> None:
        """Mark the events from ``since`` (the window's first x) on: older ones would stretch the axis."""
        shapes, labels = [], []
        shown = [(at, kind, what) for at, kind, what in self._events if since is not None and story_x(at) >= since]
        span = (
            self.window_minutes * 60 if not self.finished else max((shown[-1][0] - shown[0][0]) if shown else 1.0, 1.0)
        )
        times = [at for at, _kind, _what in shown]
        for (at, kind, what), labelled in zip(shown, spaced(times, LABEL_GAP * span)):
            shape, label = event_marks(story_x(at), what, kind, labelled=labelled, when=story_x(at)[11:])
            shapes.append(shape)
            if label is not None:
                labels.append(label)
            if kind not in self._event_kinds:
                self._event_kinds.append(kind)
                self.figure.add_trace(event_legend(kind))
        self.figure.layout.shapes = shapes
        self.figure.layout.annotations = (*self._base_annotations, *labels)

    def set_pace_ratio(self, ratio: float | None) -> None:
        """Show how much of the pace asked the machine keeps (the readout says so when it is behind)."""
        if ratio != self.totals["pace_ratio"]:
            self.totals["pace_ratio"] = None if ratio is None else round(ratio, 2)

    def _update_totals(self, series: Mapping[str, Sequence[Any]], new: range) -> None:
        if not new:
            return
        totals = self.totals
        last = new[-1]
        totals["clock"] = series["clock"][last]
        totals["completed"] = (totals["completed"] or 0) + sum(series["completed"][i] for i in new)
        totals["failed"] = (totals["failed"] or 0) + sum(series["failed"][i] for i in new)
        for key, column in (("p50_s", "p50_ms"), ("p99_s", "p99_ms")):
            totals[key] = self._recent(column)
        totals["in_flight"] = series["in_flight_payments"][last]
        totals["db_in_use"] = series["db_in_use"][last]
        totals["memory_mib"] = display_value("memory_bytes", series["memory_bytes"][last]) if self.memory else None

    def _recent(self, column: str) -> float | None:
        """The latest value of ``column`` in the last :data:`RECENT_ROWS` rows (None if nothing completed)."""
        values = self._columns.get(column, ())
        for offset, value in enumerate(reversed(values)):
            if offset >= RECENT_ROWS:
                break
            if value is not None:
                return value
        return None

    def _render_readout(self) -> None:
        cells = []
        for key, label in READOUT_METRICS:
            value = self.totals[key]
            if key == "pace_ratio" and value is None:
                continue  # shown only while a paced run is measured
            raw = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
            shown = "not measured" if key == "memory_mib" and not self.memory else _format(key, value)
            cells.append(
                f'<span class="payflow-metric" data-metric="{key}" data-value="{html.escape(raw)}" '
                f'style="margin-right:1.2em"><span style="color:#666">{label}</span> '
                f"<b>{html.escape(shown)}</b></span>"
            )
        self.readout.value = f'<div style="font-family:monospace;font-size:13px">{"".join(cells)}</div>'
