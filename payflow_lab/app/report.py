"""Terminal reports of a run, with rich: the numbers a person wants first, then the timeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from payflow_lab import summary as summary_types
from payflow_lab.core.units import format_bytes, format_ms
from payflow_lab.runner import RunResult

__all__ = ["CORE_KEYS", "format_bytes", "format_ms", "print_run", "timeline_table"]

#: Summary keys printed in their own sections (the ones every run has); anything else a phase adds is
#: listed under "phase".
CORE_KEYS = summary_types.CORE_KEYS


def timeline_table(events: Sequence[Mapping[str, Any]], title: str = "Timeline (story time)") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("at")
    table.add_column("")
    table.add_column("what happened")
    marks = {"scripted": "[cyan]script[/]", "observed": "[yellow]seen[/]", "control": "[magenta]you[/]"}
    for event in events:
        table.add_row(event["at"], marks.get(event.get("kind", ""), ""), event["what"])
    return table


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, rows)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        rows.append((prefix, f"{len(value)} entries"))
    else:
        rows.append((prefix, str(value)))


def print_run(result: RunResult, console: Console | None = None) -> None:
    """Print a run's summary as tables."""
    console = console or Console()
    s = result.summary
    pay = s["payments"]
    lat = s["latency_ms"]
    console.print(
        f"[bold]{s['scenario']}[/], phase {s['phase']} ({s['phase_name']}), seed {s['seed']}, "
        f"scale {s['scale']}: story time {s['story_window'][0]}-{s['story_window'][1]}, "
        f"{s['sim_seconds']:,.0f} simulated s in {s['wall_seconds']:.1f} real s"
    )
    # Two narrow tables rather than one wide one: at 80 columns (a pipe, a log file) rich would
    # shorten the numbers themselves to "13,2…".
    table = Table(title="Payments", show_header=True, header_style="bold")
    for column in ("attempted", "authorized", "failed", "stuck", "stuck $"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(
        f"{pay['attempted']:,}",
        f"{pay['authorized']:,}",
        f"{pay['failed']:,}",
        f"{pay['stuck']:,}",
        f"{pay['stuck_dollars']:,.0f}",
    )
    console.print(table)
    table = Table(title="Latency of completed payments (simulated)", show_header=True, header_style="bold")
    for column in ("mean", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(*(format_ms(lat[k]) for k in ("mean", "p50", "p95", "p99", "max")))
    console.print(table)
    fx = s["side_effects"]
    table = Table(title="Side effects", show_header=True, header_style="bold")
    for column in ("kind", "started", "delivered", "failed", "dropped", "dead-lettered", "pending"):
        table.add_column(column, justify="right", no_wrap=True)
    for kind, counts in fx.get("by_kind", {}).items():
        table.add_row(
            kind, *(f"{counts[k]:,}" for k in ("started", "delivered", "failed", "dropped", "dead_lettered", "pending"))
        )
    console.print(table)
    mem = s["memory"]
    if mem["how"].startswith("off"):
        console.print("memory: not measured (--memory off)")
    else:
        console.print(
            f"memory: start {format_bytes(mem['start_bytes'])}, peak {format_bytes(mem['peak_bytes'])}, "
            f"end {format_bytes(mem['end_bytes'])}  [dim]({mem['how']})[/]"
        )
    tasks = s["tasks"]
    console.print(
        f"tasks: peak {tasks['peak_in_flight']:,} in flight, {tasks['end_in_flight']:,} at the end; "
        f"DB pool of {s['db_pool_size']}"
    )
    ll = s["littles_law"]
    console.print(
        f"Little's law over the whole run ({ll['window_s']:,.0f} s): {ll['arrival_rate_per_s']:.2f} "
        f"payments/s x {ll['mean_time_in_system_s']:.2f} s in the system = {ll['predicted_in_flight']:.1f} "
        f"in flight predicted, {ll['measured_mean_in_flight']:.1f} measured"
    )
    extra: list[tuple[str, str]] = []
    for key, value in s.items():
        if key not in CORE_KEYS:
            _flatten(key, value, extra)
    if extra:
        table = Table(title=f"Phase {s['phase']} details", show_header=False)
        table.add_column("key", overflow="fold")
        table.add_column("value", overflow="fold")
        for key, value in extra:
            table.add_row(key, value)
        console.print(table)
    console.print(timeline_table(s["events"]))
