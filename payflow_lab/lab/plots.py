"""Figures of a run's per-second series, shared by the live dashboard and the static plots.

A run records one row per simulated second (see :class:`payflow_lab.core.recorder.Recorder`).
This module decides how those columns look on screen, once, so that a live
:class:`~payflow_lab.lab.Dashboard` and the static figure of a finished run
read the same way:

* the x axis is **story time**, ``14:15``: each point's x is a date-time
  string on the story's day (Black Friday, :data:`STORY_DAY`), which plotly
  reads as a date whatever else it is told, and the axis shows hours and
  minutes;
* the first panel is payment latency: p50 (solid) and p99 (dashed) of the
  payments completed in the last :data:`ROLLING_S` story seconds, as
  continuous lines (:class:`RollingPercentiles`), in seconds on a log axis
  (150 ms and 13.5 s on one screen). A quiet second with no completed payment
  does not break the line; a minute with none does;
* the second is the process's memory (MiB, from ``memory_bytes``);
* further panels show whatever columns a lesson names: ``db_in_use``,
  ``in_flight_tasks``, or patterns such as ``queue_*`` for the gauges a phase
  adds. A column that does not exist (yet) is simply not drawn.

For deterministic notebook cells, :func:`run_figure` draws a finished
:class:`~payflow_lab.RunResult` with the same panels, plus the run's events,
and :func:`describe_figure` says in one line what the figure shows.

Readable by everyone: the colours are the Okabe-Ito palette (distinguishable
with every common colour-vision deficiency), p50 and p99 differ by line style
as well as colour, and each kind of story event has its own line style, a
legend entry and a short label on the figure, not only a colour and a hover.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.recorder import hhmmss, percentile
from payflow_lab.core.validation import integer

__all__ = [
    "BASE_PANELS",
    "PALETTE",
    "ROLLING_S",
    "RollingPercentiles",
    "describe_figure",
    "display_value",
    "event_legend",
    "event_marks",
    "spaced",
    "expand_columns",
    "label",
    "latency_figure",
    "make_layout",
    "note_memory_off",
    "normalise_panels",
    "panel_axes",
    "panel_legend",
    "run_figure",
    "rolling_latency",
    "story_ms",
    "story_x",
    "thin",
    "trace_style",
]

#: Story seconds over which the latency lines take their percentiles.
ROLLING_S = 60
#: The two panels every dashboard shows, with the columns they draw.
BASE_PANELS: dict[str, tuple[str, ...]] = {
    f"payment latency (s): p50 and p99 of the last {ROLLING_S} s": ("p50_ms", "p99_ms"),
    "memory (MiB)": ("memory_bytes",),
}
#: The story's day: Black Friday. Story time is seconds since its midnight.
STORY_DAY = _dt.datetime(2026, 11, 27)

#: Story-time tick labels: hours and minutes, with seconds when ticks are less than a minute apart
#: (the first seconds of a live run, or a learner zoomed in).
STORY_TICKS: list[dict[str, Any]] = [
    {"dtickrange": [None, 60_000], "value": "%H:%M:%S"},
    {"dtickrange": [60_000, None], "value": "%H:%M"},
]

#: Okabe & Ito's colour-blind-safe palette (2008), most distinct first.
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: Fixed colour and dash of the columns every figure has, so p50/p99 read the same everywhere.
STYLES: dict[str, dict[str, str]] = {
    "p50_ms": {"color": "#0072B2", "dash": "solid"},
    "p99_ms": {"color": "#D55E00", "dash": "dash"},
    "memory_bytes": {"color": "#009E73", "dash": "solid"},
}
#: How each kind of story event is drawn: colour, dash, and its legend name.
EVENT_STYLES: dict[str, tuple[str, str, str]] = {
    "scripted": ("#555555", "dash", "story event"),
    "observed": ("#D55E00", "dot", "what the run observed"),
    "control": ("#CC79A7", "dashdot", "your change"),
}

#: Friendlier trace names for the recorder's own columns.
LABELS: dict[str, str] = {
    "p50_ms": "p50 (solid)",
    "p99_ms": "p99 (dashed)",
    "memory_bytes": "memory",
    "db_in_use": "DB connections in use",
    "db_waiting": "requests waiting for a connection",
    "in_flight_tasks": "tasks in flight",
    "in_flight_payments": "payments in flight",
    "arrivals": "arrivals per second",
    "completed": "completed per second",
    "failed": "failed per second",
    "webhook_queue": "webhooks queued",
    "webhook_oldest_queued_s": "oldest queued webhook (s)",
    "breakers_open": "circuit breakers open",
    "endpoints_hanging": "endpoints hanging",
    "abandoned_couriers": "abandoned couriers",
    "outbox_pending": "events pending in the outbox",
}


def label(column: str) -> str:
    """A column's name for a legend: ``queue_webhook`` reads "webhook queue", ``lane_premium`` "premium lane"."""
    if column in LABELS:
        return LABELS[column]
    for prefix, noun in (("queue_", "queue"), ("lane_", "lane")):
        if column.startswith(prefix):
            return f"{column[len(prefix) :].replace('_', ' ')} {noun}"
    return column.replace("_", " ")


_MIB = 1024 * 1024
#: Rows a static figure keeps at most (see :func:`thin`).
MAX_POINTS = 1000


def story_ms(clock_seconds: float) -> float:
    """Story time (seconds since midnight) in milliseconds, rounded: how the figures' data is compared."""
    return round(clock_seconds * 1000.0, 3)


def story_x(clock_seconds: float) -> str:
    """Story time as the x value of a figure: ``"2026-11-27 14:15:00"`` (a date plotly cannot misread).

    Whole seconds, since the series has one row per simulated second; a run
    past midnight moves to the next day.
    """
    moment = STORY_DAY + _dt.timedelta(seconds=round(clock_seconds))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class RollingPercentiles:
    """p50 and p99 of the latencies of the last ``rows`` rows, one row (simulated second) at a time.

    Feed it each second's completed latencies with :meth:`add`; it keeps them
    sorted (``bisect``), so a row costs O(window) memory moves, not a sort.
    Exact, not estimated: the percentiles are those of :func:`payflow_lab.core.recorder.percentile`
    over every payment completed in the window. ``None`` when the window has none.
    """

    def __init__(self, rows: int = ROLLING_S) -> None:
        self.rows = integer("rows", rows, minimum=1)
        self._sorted: list[float] = []
        self._recent: list[Sequence[float]] = []

    def add(self, latencies: Sequence[float]) -> tuple[float | None, float | None]:
        """Add one second's latencies (seconds); return (p50, p99) in milliseconds over the window."""
        window = self._sorted
        for value in latencies:
            bisect.insort(window, value)
        self._recent.append(latencies)
        if len(self._recent) > self.rows:
            for value in self._recent.pop(0):
                del window[bisect.bisect_left(window, value)]
        if not window:
            return None, None
        return round(percentile(window, 50) * 1000, 3), round(percentile(window, 99) * 1000, 3)


def rolling_latency(
    completed: Sequence[int], latencies: Sequence[float], rows: int = ROLLING_S
) -> tuple[list[float | None], list[float | None]]:
    """The rolling p50 and p99 (ms) of every row, from each row's ``completed`` count and the run's latencies.

    ``latencies`` are the completed payments' latencies in seconds, in the
    order they completed (:attr:`RunResult.latencies`); row ``i`` completed
    ``completed[i]`` of them.
    """
    roll = RollingPercentiles(rows)
    p50: list[float | None] = []
    p99: list[float | None] = []
    start = 0
    for count in completed:
        low, high = roll.add(latencies[start : start + count])
        start += count
        p50.append(low)
        p99.append(high)
    return p50, p99


def display_value(column: str, value: Any) -> float | None:
    """A series value in the unit its panel shows: ``*_ms`` as seconds, ``*_bytes`` as MiB.

    ``None`` (no payment completed in that second) stays ``None``, which
    plotly draws as a gap rather than a misleading zero.
    """
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    if column.endswith("_ms"):
        return round(number / 1000.0, 6)
    if column.endswith("_bytes"):
        return round(number / _MIB, 3)
    return number


def normalise_panels(panels: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """Check a lesson's extra panels: ``{"title": ["column", "pattern_*", ...]}``.

    Raises :class:`~payflow_lab.ValidationError` naming ``panels`` if the
    mapping is malformed, so that a typo fails before any widget is drawn.
    """
    if panels is None:
        return {}
    if not isinstance(panels, Mapping):
        raise ValidationError("panels", f"must map panel titles to column names, got {type(panels).__name__}")
    clean: dict[str, tuple[str, ...]] = {}
    for title, columns in panels.items():
        if not isinstance(title, str) or not title.strip():
            raise ValidationError("panels", f"panel titles must be non-empty strings, got {title!r}")
        if title in BASE_PANELS:
            raise ValidationError("panels", f"{title!r} is always shown; pick another title")
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise ValidationError(f"panels.{title}", "must be a non-empty list of column names or patterns")
        for column in columns:
            if not isinstance(column, str) or not column:
                raise ValidationError(f"panels.{title}", f"column names must be non-empty strings, got {column!r}")
        clean[title] = tuple(columns)
    if len(clean) > 6:
        raise ValidationError("panels", f"at most 6 extra panels fit on one dashboard, got {len(clean)}")
    return clean


def expand_columns(patterns: Iterable[str], available: Iterable[str]) -> list[str]:
    """The columns of ``available`` that ``patterns`` name, in pattern order, each once.

    A plain name matches itself; ``queue_*`` matches every queue gauge, sorted
    by name so that the order does not depend on when a phase added them.
    """
    names = list(available)
    found: list[str] = []
    for pattern in patterns:
        matches = [pattern] if pattern in names else sorted(n for n in names if fnmatchcase(n, pattern))
        for name in matches:
            if name not in found:
                found.append(name)
    return found


def panel_axes(row: int) -> tuple[str, str]:
    """The trace axis names (``"x3"``, ``"y3"``) of panel ``row`` (1-based) in :func:`make_layout`."""
    suffix = "" if row == 1 else str(row)
    return f"x{suffix}", f"y{suffix}"


def panel_legend(row: int) -> str:
    """The legend of panel ``row`` (each panel has its own, at its top right)."""
    return "legend" if row == 1 else f"legend{row}"


#: Tick marks of the latency axis (seconds), labelled as people say them: 150 ms and 13 s on one axis.
LATENCY_TICKS: tuple[tuple[float, str], ...] = (
    (0.01, "10 ms"),
    (0.02, "20 ms"),
    (0.05, "50 ms"),
    (0.1, "100 ms"),
    (0.2, "200 ms"),
    (0.5, "500 ms"),
    (1, "1 s"),
    (2, "2 s"),
    (5, "5 s"),
    (10, "10 s"),
    (20, "20 s"),
    (50, "50 s"),
    (100, "100 s"),
    (200, "200 s"),
    (500, "500 s"),
)


def _latency_axis() -> dict[str, Any]:
    return {"type": "log", "tickvals": [v for v, _ in LATENCY_TICKS], "ticktext": [t for _, t in LATENCY_TICKS]}


def make_layout(panels: Mapping[str, Sequence[str]], *, title: str = "", height: int | None = None) -> go.Figure:
    """An empty figure with the base panels and ``panels`` stacked on one shared story-time axis.

    Each panel has its title at its top left and its own legend to its right,
    beside the lines it names (never over the title or the lines).
    """
    titles = [*BASE_PANELS, *panels]
    rows = len(titles)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.3 / rows, subplot_titles=titles)
    fig.update_layout(
        template="plotly_white",
        colorway=list(PALETTE),
        height=height or 150 + 200 * rows,
        margin={"l": 70, "r": 200, "t": 105, "b": 40},
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        hovermode="x unified",
        uirevision="payflow",  # keep the learner's zoom across updates
    )
    for annotation in fig.layout.annotations:
        annotation.update(x=0, xanchor="left", font={"size": 13})
    for row in range(1, rows + 1):
        yaxis = fig.layout["yaxis" if row == 1 else f"yaxis{row}"]
        fig.update_layout(
            {
                panel_legend(row): {
                    "orientation": "v",
                    "x": 1.01,
                    "xanchor": "left",
                    "y": yaxis.domain[1],
                    "yanchor": "top",
                    "bgcolor": "rgba(255,255,255,0)",
                    "font": {"size": 11},
                }
            }
        )
    fig.update_xaxes(type="date", tickformatstops=STORY_TICKS, hoverformat="%H:%M:%S", showticklabels=True)
    fig.update_xaxes(title_text="story time (Black Friday)", row=rows, col=1)
    fig.update_yaxes(row=1, col=1, **_latency_axis())
    for row in range(2, rows + 1):
        fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return fig


def trace_style(column: str, *, rolling: bool = True) -> dict[str, Any]:
    """How ``column`` is drawn: its legend name, colour and line style.

    Latencies are continuous lines when they are rolling percentiles (see
    :class:`RollingPercentiles`). A per-second latency (``rolling=False``,
    when only the series is at hand) is the p50 or p99 of one simulated
    second, and a quiet second has none: the line breaks there (a gap, never
    an invented value), so those points also get a marker.
    """
    style: dict[str, Any] = {
        "name": label(column),
        "meta": column,
        "connectgaps": False,
        "mode": "lines",
        "line": {"width": 1.5, **STYLES.get(column, {})},
    }
    if column.endswith("_ms") and not rolling:
        style.update(mode="lines+markers", marker={"size": 4})
    return style


def _trace(column: str, row: int, x: list[str], y: list[float | None], *, rolling: bool = True) -> go.Scatter:
    xaxis, yaxis = panel_axes(row)
    return go.Scatter(
        x=x, y=y, xaxis=xaxis, yaxis=yaxis, legend=panel_legend(row), **trace_style(column, rolling=rolling)
    )


def thin(series: Mapping[str, list[Any]], max_points: int = MAX_POINTS) -> dict[str, list[Any]]:
    """Every k-th row of ``series`` (and always the last), so that at most ``max_points`` rows remain.

    A static figure is an overview, and a notebook stores every point of it:
    70 simulated minutes are 4,200 rows per trace. Keeping every k-th row
    (rather than averaging) keeps each point a real measurement.
    """
    integer("max_points", max_points, minimum=2)
    rows = len(series.get("clock", ()))
    if rows <= max_points:
        return dict(series)
    step = math.ceil(rows / max_points)
    keep = list(range(0, rows, step))
    if keep[-1] != rows - 1:
        keep.append(rows - 1)
    return {name: [values[i] for i in keep] for name, values in series.items()}


def _series_of(result: Any) -> dict[str, list[Any]]:
    series = getattr(result, "series", result)
    if not isinstance(series, Mapping) or "clock" not in series:
        raise ValidationError("result", "must be a RunResult or a series mapping with a 'clock' column")
    return dict(series)


def _with_rolling_latency(result: Any, series: dict[str, list[Any]]) -> bool:
    """Replace the per-second p50/p99 of ``series`` by rolling ones when ``result`` has its latencies."""
    latencies = getattr(result, "latencies", None)
    if latencies is None or "completed" not in series:
        return False
    series["p50_ms"], series["p99_ms"] = rolling_latency(series["completed"], latencies)
    return True


def _memory_measured(series: Mapping[str, Sequence[Any]]) -> bool:
    return any(series.get("memory_bytes", ()))


def run_figure(
    result: Any,
    *,
    panels: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
    events: bool = True,
    height: int | None = None,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """A static figure of a finished run: latency, memory and the ``panels`` asked for.

    ``result`` is a :class:`~payflow_lab.RunResult` (or its ``series``; then
    latency is drawn per second, since the rolling window needs the run's
    latencies). With ``events``, the run's timeline is drawn as labelled
    vertical lines, one line style per kind (story events, what the run
    observed, your changes), each explained on hover. Long runs are thinned to
    at most ``max_points`` rows (see :func:`thin`). The one-line description
    of :func:`describe_figure` is the figure's subtitle.
    """
    full = _series_of(result)
    rolling = _with_rolling_latency(result, full)
    series = thin(full, max_points)
    extra = normalise_panels(panels)
    summary = getattr(result, "summary", None)
    if title is None and isinstance(summary, Mapping):
        title = f"{summary.get('scenario')}, phase {summary.get('phase')}, seed {summary.get('seed')}"
    fig = make_layout(extra, title=title or "", height=height)
    x = [story_x(c) for c in series["clock"]]
    layout = {**BASE_PANELS, **extra}
    for row, columns in enumerate(layout.values(), start=1):
        for column in expand_columns(columns, series):
            if column == "memory_bytes" and not _memory_measured(series):
                continue
            fig.add_trace(_trace(column, row, x, [display_value(column, v) for v in series[column]], rolling=rolling))
    if not _memory_measured(series):
        note_memory_off(fig)
    if events and isinstance(summary, Mapping):
        _add_events(fig, summary.get("events", []), series)
    fig.layout.title.subtitle = {"text": describe_figure(result, rolling=rolling), "font": {"size": 12}}
    return fig


def note_memory_off(fig: go.Figure) -> None:
    """Say "memory not measured" in the memory panel instead of drawing a flat line at zero."""
    yaxis = fig.layout.yaxis2
    fig.add_annotation(
        text='memory not measured (memory="off")',
        xref="x2 domain",
        yref="y2 domain",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 13, "color": "#555555"},
        name="memory-off",
    )
    yaxis.update(showticklabels=False)


def _short(what: str, limit: int = 28) -> str:
    """An event's label on the figure: its first clause, cut to ``limit`` characters."""
    if what.startswith("control: "):  # a widget change: what changed is the label
        text = what[len("control: ") :].replace("'", "").strip()
    else:
        text = what.split(":")[0].split(";")[0].strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def event_marks(
    at: str, what: str, kind: str, *, labelled: bool = True, when: str = ""
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The vertical line of one story event at ``at`` (a :func:`story_x` value), and its label.

    Each kind has its own colour *and* line style (:data:`EVENT_STYLES`). The
    label is short and upright along the line, at the top of the latency
    panel, so that events a minute apart stay legible; the whole sentence is
    its hover text. ``labelled=False`` (an event too close to the previous
    label, see :func:`spaced`) draws the line alone.
    """
    colour, dash, _name = EVENT_STYLES.get(kind, EVENT_STYLES["scripted"])
    shape = {
        "type": "line",
        "x0": at,
        "x1": at,
        "xref": "x",
        "y0": 0,
        "y1": 1,
        "yref": "paper",
        "line": {"color": colour, "dash": dash, "width": 1},
        "opacity": 0.7,
    }
    if not labelled:
        return shape, None
    label = {
        "x": at,
        "xref": "x",
        "y": 0.98,
        "yref": "y domain",
        "yanchor": "top",
        "xanchor": "left",
        "textangle": -90,
        "text": _short(what),
        "showarrow": False,
        "xshift": 1,
        "font": {"size": 9, "color": colour},
        "bgcolor": "rgba(255,255,255,0.7)",
        "hovertext": f"{when} {what}".strip(),
    }
    return shape, label


def spaced(times: Sequence[float], min_gap: float) -> list[bool]:
    """Which of ``times`` (sorted or not) get a label: each at least ``min_gap`` after the last labelled one."""
    out: list[bool] = []
    last = -math.inf
    for at in times:
        keep = at - last >= min_gap
        out.append(keep)
        if keep:
            last = at
    return out


def event_legend(kind: str) -> go.Scatter:
    """A legend entry saying what one kind of event line means (an empty trace: it draws nothing)."""
    colour, dash, name = EVENT_STYLES.get(kind, EVENT_STYLES["scripted"])
    return go.Scatter(
        x=[None],
        y=[None],
        mode="lines",
        name=name,
        meta=f"event:{kind}",
        line={"color": colour, "dash": dash, "width": 1},
        hoverinfo="skip",
        xaxis="x",
        yaxis="y",
        legend="legend",
    )


#: The least gap between two event labels, as a share of the figure's time span (upright 9-pt labels).
LABEL_GAP = 0.015


def _add_events(fig: go.Figure, events: Sequence[Mapping[str, str]], series: Mapping[str, list[Any]]) -> None:
    day = _day_offset(series)
    seen_kinds: list[str] = []
    clock = series.get("clock") or [0.0]
    times = []
    for event in events:
        hh, mm, ss = (int(part) for part in event["at"].split(":"))
        times.append(day + hh * 3600 + mm * 60 + ss)
    span = max(clock[-1] - clock[0], 1.0)
    for event, at, labelled in zip(events, times, spaced(times, LABEL_GAP * span)):
        kind = event.get("kind", "scripted")
        shape, label = event_marks(story_x(at), event["what"], kind, labelled=labelled, when=event["at"])
        fig.add_shape(**shape)
        if label is not None:
            fig.add_annotation(**label)
        if kind not in seen_kinds:  # one legend entry per kind: the line style's meaning, in words
            seen_kinds.append(kind)
            fig.add_trace(event_legend(kind))


def _day_offset(series: Mapping[str, list[Any]]) -> float:
    """Whole days to add to an ``HH:MM:SS`` event so it lands on the series' story day (runs past midnight)."""
    clock = series.get("clock") or [0.0]
    return math.floor(clock[0] / 86_400) * 86_400.0


def describe_figure(result: Any, *, rolling: bool | None = None) -> str:
    """One sentence saying what a run's figure shows: span, the worst p99 and when, the events.

    It is the figure's subtitle (and what a screen reader or a text-only
    diff gets): the picture in words.
    """
    series = _series_of(result)
    if rolling is None:
        rolling = _with_rolling_latency(result, series)
    elif rolling:
        _with_rolling_latency(result, series)
    clock = series["clock"]
    if not clock:
        return "An empty run: nothing to draw."
    span = f"{hhmmss(clock[0])[:5]} to {hhmmss(clock[-1])[:5]}"
    p99 = [(v, c) for v, c in zip(series.get("p99_ms", ()), clock) if v is not None]
    how = f"rolling {ROLLING_S} s" if rolling else "per second"
    parts = [f"Payment latency (p50 solid, p99 dashed, {how}) from {span}"]
    if p99:
        worst, when = max(p99)
        parts.append(f"p99 peaks at {_duration(worst / 1000)} at {hhmmss(when)[:5]}")
    else:
        parts.append("no payment completed")
    if not _memory_measured(series):
        parts.append("memory not measured")
    summary = getattr(result, "summary", None)
    events = summary.get("events", []) if isinstance(summary, Mapping) else []
    if events:
        parts.append(f"{len(events)} events marked")
    return "; ".join(parts) + "."


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:,.1f} s"


def latency_figure(result: Any, *, title: str | None = None, max_points: int = MAX_POINTS) -> go.Figure:
    """Only the latency panel of a finished run, with its events: the quickest picture of what happened."""
    full = _series_of(result)
    rolling = _with_rolling_latency(result, full)
    series = thin(full, max_points)
    summary = getattr(result, "summary", None)
    fig = go.Figure()
    default_title = (
        f"payment latency (s): p50 and p99 of the last {ROLLING_S} s" if rolling else "payment latency (s) per second"
    )
    fig.update_layout(
        template="plotly_white",
        colorway=list(PALETTE),
        height=340,
        margin={"l": 60, "r": 20, "t": 70, "b": 40},
        title={"text": title or default_title, "x": 0.01, "font": {"size": 15}},
        hovermode="x unified",
        legend={"orientation": "h", "y": -0.2},
    )
    fig.update_xaxes(type="date", tickformatstops=STORY_TICKS, hoverformat="%H:%M:%S")
    fig.update_yaxes(**_latency_axis())
    x = [story_x(c) for c in series["clock"]]
    for column in ("p50_ms", "p99_ms"):
        fig.add_trace(_trace(column, 1, x, [display_value(column, v) for v in series[column]], rolling=rolling))
    if isinstance(summary, Mapping):
        _add_events(fig, summary.get("events", []), series)
    fig.layout.title.subtitle = {"text": describe_figure(result, rolling=rolling), "font": {"size": 12}}
    return fig
