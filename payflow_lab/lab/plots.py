"""Figures of a run's per-second series, shared by the live dashboard and the static plots.

A run records one row per simulated second (see :class:`payflow_lab.metrics.Recorder`).
This module decides how those columns look on screen, once, so that a live
:class:`~payflow_lab.lab.Dashboard` and the static figure of a finished run
read the same way:

* the x axis is **story time**. Plotly date axes accept milliseconds since the
  epoch, so story seconds since midnight times 1000 land on 1 January 1970 at
  the right hour, and the axis shows ``14:15`` without sending date strings;
* the first panel is payment latency (p50 and p99 of the payments completed in
  each second, in seconds, on a log axis: 150 ms and 13.5 s on one screen);
* the second is the process's memory (MiB, from ``memory_bytes``);
* further panels show whatever columns a lesson names: ``db_in_use``,
  ``in_flight_tasks``, or patterns such as ``queue_*`` for the gauges a phase
  adds. A column that does not exist (yet) is simply not drawn.

For deterministic notebook cells, :func:`run_figure` draws a finished
:class:`~payflow_lab.RunResult` with the same panels, plus the run's events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..domain import ValidationError

__all__ = [
    "BASE_PANELS",
    "display_value",
    "expand_columns",
    "latency_figure",
    "make_layout",
    "normalise_panels",
    "panel_axes",
    "panel_legend",
    "run_figure",
    "story_ms",
    "thin",
    "trace_style",
]

#: The two panels every dashboard shows, with the columns they draw.
BASE_PANELS: dict[str, tuple[str, ...]] = {
    "payment latency (s)": ("p50_ms", "p99_ms"),
    "memory (MiB)": ("memory_bytes",),
}

#: Friendlier trace names for the recorder's own columns.
LABELS: dict[str, str] = {
    "p50_ms": "p50",
    "p99_ms": "p99",
    "memory_bytes": "memory",
    "db_in_use": "DB connections in use",
    "db_waiting": "requests waiting for a connection",
    "in_flight_tasks": "tasks in flight",
    "in_flight_payments": "payments in flight",
    "arrivals": "arrivals per second",
    "completed": "completed per second",
    "failed": "failed per second",
}

_MIB = 1024 * 1024
#: Rows a static figure keeps at most (see :func:`thin`).
MAX_POINTS = 1000


def story_ms(clock_seconds: float) -> float:
    """Story time (seconds since midnight) as a plotly date-axis value (ms since the epoch)."""
    return round(clock_seconds * 1000.0, 3)


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
    (0.01, "10 ms"), (0.02, "20 ms"), (0.05, "50 ms"), (0.1, "100 ms"), (0.2, "200 ms"), (0.5, "500 ms"),
    (1, "1 s"), (2, "2 s"), (5, "5 s"), (10, "10 s"), (20, "20 s"), (50, "50 s"), (100, "100 s"),
    (200, "200 s"), (500, "500 s"),
)


def _latency_axis() -> dict[str, Any]:
    return {"type": "log", "tickvals": [v for v, _ in LATENCY_TICKS], "ticktext": [t for _, t in LATENCY_TICKS]}


def make_layout(panels: Mapping[str, Sequence[str]], *, title: str = "", height: int | None = None) -> go.Figure:
    """An empty figure with the base panels and ``panels`` stacked on one shared story-time axis.

    Each panel has its title at its top left and its own legend at its top
    right, so a trace is named next to where it is drawn.
    """
    titles = [*BASE_PANELS, *panels]
    rows = len(titles)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.3 / rows,
                        subplot_titles=titles)
    fig.update_layout(
        template="plotly_white",
        height=height or 150 + 200 * rows,
        margin={"l": 70, "r": 20, "t": 70, "b": 40},
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        hovermode="x unified",
        uirevision="payflow",  # keep the learner's zoom across updates
    )
    for annotation in fig.layout.annotations:
        annotation.update(x=0, xanchor="left", font={"size": 13})
    for row in range(1, rows + 1):
        yaxis = fig.layout["yaxis" if row == 1 else f"yaxis{row}"]
        fig.update_layout({panel_legend(row): {
            "orientation": "h", "x": 1, "xanchor": "right", "y": yaxis.domain[1], "yanchor": "bottom",
            "bgcolor": "rgba(255,255,255,0)", "font": {"size": 11}}})
    fig.update_xaxes(type="date", tickformat="%H:%M", hoverformat="%H:%M:%S")
    fig.update_yaxes(row=1, col=1, **_latency_axis())
    for row in range(2, rows + 1):
        fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return fig


def trace_style(column: str) -> dict[str, Any]:
    """How ``column`` is drawn. Latencies get markers as well as lines.

    A latency point is the p50 or p99 of the payments completed in one
    simulated second, and at one tenth of PayFlow a quiet second often has
    none: the line breaks there (a gap, never an invented value), so an
    isolated second would be invisible without its marker.
    """
    style: dict[str, Any] = {"name": LABELS.get(column, column), "meta": column, "connectgaps": False,
                             "mode": "lines"}
    if column.endswith("_ms"):
        style.update(mode="lines+markers", marker={"size": 4}, line={"width": 1.5})
    return style


def _trace(column: str, row: int, x: list[float], y: list[float | None]) -> go.Scatter:
    xaxis, yaxis = panel_axes(row)
    return go.Scatter(x=x, y=y, xaxis=xaxis, yaxis=yaxis, legend=panel_legend(row), **trace_style(column))


def thin(series: Mapping[str, list[Any]], max_points: int = MAX_POINTS) -> dict[str, list[Any]]:
    """Every k-th row of ``series`` (and always the last), so that at most ``max_points`` rows remain.

    A static figure is an overview, and a notebook stores every point of it:
    70 simulated minutes are 4,200 rows per trace. Keeping every k-th row
    (rather than averaging) keeps each point a real measurement.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValidationError("max_points", f"must be an integer of at least 2, got {max_points!r}")
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


def run_figure(result: Any, *, panels: Mapping[str, Sequence[str]] | None = None, title: str | None = None,
               events: bool = True, height: int | None = None, max_points: int = MAX_POINTS) -> go.Figure:
    """A static figure of a finished run: latency, memory and the ``panels`` asked for.

    ``result`` is a :class:`~payflow_lab.RunResult` (or its ``series``).
    With ``events``, the run's timeline is drawn as vertical lines (grey:
    scripted inputs; red: what the run observed; purple: widget changes),
    each explained on hover. Long runs are thinned to at most ``max_points``
    rows (see :func:`thin`).
    """
    series = thin(_series_of(result), max_points)
    extra = normalise_panels(panels)
    summary = getattr(result, "summary", None)
    if title is None and isinstance(summary, Mapping):
        title = f"{summary.get('scenario')}, phase {summary.get('phase')}, seed {summary.get('seed')}"
    fig = make_layout(extra, title=title or "", height=height)
    x = [story_ms(c) for c in series["clock"]]
    layout = {**BASE_PANELS, **extra}
    for row, columns in enumerate(layout.values(), start=1):
        for column in expand_columns(columns, series):
            fig.add_trace(_trace(column, row, x, [display_value(column, v) for v in series[column]]))
    if events and isinstance(summary, Mapping):
        _add_events(fig, summary.get("events", []), series)
    return fig


def _add_events(fig: go.Figure, events: Sequence[Mapping[str, str]], series: Mapping[str, list[Any]]) -> None:
    colours = {"scripted": "#888888", "observed": "#d62728", "control": "#9467bd"}
    day = _day_offset(series)
    hover_x, hover_text, hover_colour = [], [], []
    for event in events:
        hh, mm, ss = (int(part) for part in event["at"].split(":"))
        at = story_ms(day + hh * 3600 + mm * 60 + ss)
        colour = colours.get(event.get("kind", ""), "#888888")
        fig.add_vline(x=at, line_width=1, line_dash="dot", line_color=colour, opacity=0.6)
        hover_x.append(at)
        hover_text.append(f"{event['at']} {event['what']}")
        hover_colour.append(colour)
    if hover_x:
        latencies = [v for c in ("p50_ms", "p99_ms") for v in series.get(c, []) if v]
        top = display_value("p99_ms", max(latencies)) if latencies else 1.0
        fig.add_trace(go.Scatter(x=hover_x, y=[top] * len(hover_x), mode="markers", name="events",
                                 marker={"symbol": "triangle-down", "size": 9, "color": hover_colour},
                                 hovertext=hover_text, hoverinfo="text", xaxis="x", yaxis="y", meta="events"))


def _day_offset(series: Mapping[str, list[Any]]) -> float:
    """Whole days to add to an ``HH:MM:SS`` event so it lands on the series' story day (runs past midnight)."""
    clock = series.get("clock") or [0.0]
    return math.floor(clock[0] / 86_400) * 86_400.0


def latency_figure(result: Any, *, title: str | None = None, max_points: int = MAX_POINTS) -> go.Figure:
    """Only the latency panel of a finished run, with its events: the quickest picture of what happened."""
    series = thin(_series_of(result), max_points)
    summary = getattr(result, "summary", None)
    fig = go.Figure()
    fig.update_layout(template="plotly_white", height=320, margin={"l": 60, "r": 20, "t": 50, "b": 40},
                      title={"text": title or "payment latency (s)", "x": 0.01, "font": {"size": 15}},
                      hovermode="x unified", legend={"orientation": "h", "y": -0.15})
    fig.update_xaxes(type="date", tickformat="%H:%M", hoverformat="%H:%M:%S")
    fig.update_yaxes(**_latency_axis())
    x = [story_ms(c) for c in series["clock"]]
    for column in ("p50_ms", "p99_ms"):
        fig.add_trace(_trace(column, 1, x, [display_value(column, v) for v in series[column]]))
    if isinstance(summary, Mapping):
        _add_events(fig, summary.get("events", []), series)
    return fig
