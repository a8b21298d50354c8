"""The live terminal dashboard: throughput, latency, webhooks, breakers, queues and memory, with rich.

Two halves, so each is simple and the screen never reads a half-updated run:

:class:`DashboardFeed`
    called by the simulation once per simulated second (``on_tick``, on the
    simulation's own thread) and turns the run's state into a frozen
    :class:`Snapshot`: plain numbers and tuples, nothing that moves afterwards.
:func:`render`
    a pure function from a snapshot to a rich renderable. The terminal thread
    renders the latest snapshot a few times a second (``rich.live.Live``);
    a test renders one into ``Console(record=True)`` and reads the text.

It works for every phase: what a phase does not have (breakers, lanes, hook
queues) is simply not shown.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from payflow_lab.core.recorder import hhmmss
from payflow_lab.core.units import format_bytes, format_ms
from payflow_lab.phases.observation import Observation

__all__ = ["DashboardFeed", "Snapshot", "render", "sparkline"]

#: Simulated seconds the dashboard's windows look back (throughput sparkline, webhook success, failures).
WINDOW_S = 60
#: Breakers listed by name (the longest open first); the rest are counted.
BREAKERS_LISTED = 6
EVENTS_LISTED = 6
_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = WINDOW_S) -> str:
    """A one-line chart of the last ``width`` values (``None`` as a gap), scaled to their maximum."""
    tail = list(values)[-width:]
    top = max((v for v in tail if v is not None), default=0.0)
    if top <= 0:
        return "".join(" " if v is None else _BLOCKS[0] for v in tail)
    return "".join(
        " " if v is None else _BLOCKS[min(len(_BLOCKS) - 1, int(v / top * (len(_BLOCKS) - 1) + 0.5))] for v in tail
    )


@dataclass(frozen=True)
class Snapshot:
    """One simulated second of a run, as the dashboard shows it. Frozen: safe to hand to another thread."""

    title: str
    story_time: str
    elapsed_s: float
    duration_s: float
    state: str = "running"
    pace: float | None = None
    metrics_url: str | None = None
    throughput: tuple[float, ...] = ()
    arrivals_per_s: float = 0.0
    completed_per_s: float = 0.0
    failed_last_window: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    in_flight: int = 0
    tasks: int = 0
    db_in_use: int = 0
    db_size: int = 0
    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    memory_how: str = ""
    webhooks: dict[str, Any] | None = None
    breakers: dict[str, Any] | None = None
    queues: tuple[tuple[str, int, int], ...] = ()
    events: tuple[tuple[str, str, str], ...] = field(default=())


def _tail(column: Any, n: int) -> list[Any]:
    length = len(column)
    return list(column[max(0, length - n) : length])


class DashboardFeed:
    """Builds a :class:`Snapshot` of a :class:`~payflow_lab.runner.Simulation` at each simulated second.

    Pass :meth:`update` as the simulation's ``on_tick``; read :attr:`latest`
    from any thread. ``pace`` and ``metrics_url`` are only shown.
    """

    def __init__(self, *, pace: float | None = None, metrics_url: str | None = None) -> None:
        self.pace = pace
        self.metrics_url = metrics_url
        self.latest: Snapshot | None = None
        self._webhook_window: deque[tuple[float, int, int]] = deque()

    def update(self, simulation: Any, state: str = "running") -> Snapshot:
        """Take a snapshot now (call it on the simulation's thread)."""
        snapshot = self._snapshot(simulation, state)
        self.latest = snapshot
        return snapshot

    def _snapshot(self, simulation: Any, state: str) -> Snapshot:
        config, recorder = simulation.config, simulation.recorder
        world, pipeline = simulation.world, simulation.pipeline
        seen = pipeline.observe()
        series = recorder.series
        completed = _tail(series["completed"], WINDOW_S)
        p50s = [v for v in _tail(series["p50_ms"], WINDOW_S) if v is not None]
        p99s = [v for v in _tail(series["p99_ms"], WINDOW_S) if v is not None]
        clock = _tail(series["clock"], 1)  # the sample just taken (and readable after the run, unlike the clock)
        now = clock[-1] if clock else simulation.scenario.start
        memory = _tail(series["memory_bytes"], 1)
        return Snapshot(
            title=f"{config.scenario_name}, phase {config.phase} ({pipeline.name})",
            story_time=hhmmss(now),
            elapsed_s=now - simulation.scenario.start,
            duration_s=config.sim_duration,
            state=state,
            pace=self.pace,
            metrics_url=self.metrics_url,
            throughput=tuple(float(v) for v in completed),
            arrivals_per_s=_mean(_tail(series["arrivals"], 10)),
            completed_per_s=_mean(completed[-10:]),
            failed_last_window=int(sum(_tail(series["failed"], WINDOW_S))),
            p50_ms=p50s[-1] if p50s else None,
            p99_ms=p99s[-1] if p99s else None,
            in_flight=recorder.in_flight_payments,
            tasks=recorder.tasks_in_flight,
            db_in_use=world.pool.in_use,
            db_size=world.pool.size,
            memory_bytes=int(memory[-1]) if memory else 0,
            memory_peak_bytes=recorder.memory_peak,
            memory_how=recorder.memory.how,
            webhooks=self._webhooks(recorder, seen, now),
            breakers=_breakers(seen),
            queues=_queues(seen),
            events=tuple((hhmmss(at), kind, what) for at, _, kind, what in recorder.events[-EVENTS_LISTED:]),
        )

    def _webhooks(self, recorder: Any, seen: Observation, now: float) -> dict[str, Any] | None:
        counts = recorder.side_effects.get("webhook")
        if counts is None:
            return None
        delivered = counts["delivered"]
        failed = counts["failed"] + counts["dropped"] + counts["dead_lettered"]
        window = self._webhook_window
        window.append((now, delivered, failed))
        while window and window[0][0] < now - WINDOW_S:
            window.popleft()
        _, delivered0, failed0 = window[0]
        recent_ok, recent_bad = delivered - delivered0, failed - failed0
        ended = recent_ok + recent_bad
        view: dict[str, Any] = {
            "delivered": delivered,
            "failed": failed,
            "delivered_last_window": recent_ok,
            "failed_last_window": recent_bad,
            "success_pct": round(100.0 * recent_ok / ended, 1) if ended else None,
            "pending": counts["started"] - delivered - failed,
        }
        webhooks = seen.webhooks
        if webhooks is not None:
            view.update(
                deferred=webhooks.deferred,
                retries=webhooks.retries_made,
                dead_letters=webhooks.dead_letters.added,
                recoveries=len(webhooks.recoveries),
            )
        return view


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def _breakers(seen: Observation) -> dict[str, Any] | None:
    webhooks, world = seen.webhooks, seen.world
    if webhooks is None:
        return None
    listed = []
    for merchant_id, state in webhooks.not_closed.items():
        breaker = webhooks.breakers[merchant_id]
        since = breaker.transitions[-1].at if breaker.transitions else 0.0
        listed.append((since, merchant_id, world.merchants[merchant_id].tier.value, state.value))
    listed.sort()
    open_count = sum(1 for *_, state in listed if state == "open")
    return {
        "open": open_count,
        "half_open": len(listed) - open_count,
        "total": len(webhooks.breakers),
        "opened_ever": len(webhooks.opened),
        "listed": tuple((m, tier, state, hhmmss(since)) for since, m, tier, state in listed[:BREAKERS_LISTED]),
    }


def _queues(seen: Observation) -> tuple[tuple[str, int, int], ...]:
    handles: list[tuple[str, Any]] = list(seen.handles.items())
    webhooks = seen.webhooks
    if webhooks is not None:
        handles += [(f"webhook lane: {tier.value}", h) for tier, h in webhooks.lanes.items()]
    return tuple((name, int(h.queued), int(h.queue_size)) for name, h in handles)


# ---------------------------------------------------------------------------- rendering
def _grid() -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    return table


def _payments(s: Snapshot) -> Panel:
    t = _grid()
    t.add_row("throughput", f"{s.completed_per_s:,.1f} paid/s  (arriving {s.arrivals_per_s:,.1f}/s)")
    t.add_row("", Text(sparkline(s.throughput), style="green"))
    t.add_row("latency", f"p50 {format_ms(s.p50_ms)}   p99 {format_ms(s.p99_ms)}")
    failed = Text(f"{s.failed_last_window:,} in the last {WINDOW_S} s", style="red" if s.failed_last_window else "")
    t.add_row("failed", failed)
    t.add_row("in flight", f"{s.in_flight:,} payments, {s.tasks:,} tasks")
    t.add_row("DB pool", f"{s.db_in_use:,} of {s.db_size:,} connections in use")
    return Panel(t, title="Payments", border_style="cyan")


def _webhooks(s: Snapshot) -> Panel:
    t = _grid()
    w = s.webhooks
    if w is None:
        t.add_row("", "no webhooks yet")
    else:
        pct = w["success_pct"]
        style = "green" if pct is None or pct >= 95 else "yellow" if pct >= 70 else "red"
        t.add_row("success", Text("-" if pct is None else f"{pct:.1f}% of the last {WINDOW_S} s", style=style))
        t.add_row("delivered", f"{w['delivered']:,}  (+{w['delivered_last_window']:,})")
        t.add_row("not delivered", f"{w['failed']:,}  (+{w['failed_last_window']:,})")
        if "deferred" in w:
            t.add_row("deferred now", f"{w['deferred']:,}  (held for their merchant, not dropped)")
            t.add_row("retries", f"{w['retries']:,}")
            t.add_row("dead letters", f"{w['dead_letters']:,}")
            t.add_row("recoveries", f"{w['recoveries']:,} merchants recovered automatically")
        else:
            t.add_row("pending", f"{w['pending']:,}")
    return Panel(t, title="Webhooks", border_style="cyan")


def _breaker_panel(s: Snapshot) -> Panel:
    b = s.breakers
    if b is None:
        return Panel(Text("this phase has no circuit breakers", style="dim"), title="Circuit breakers")
    t = Table.grid(padding=(0, 1))
    style = "red" if b["open"] else "green"
    t.add_row(
        Text(f"{b['open']} open, {b['half_open']} half-open", style=style),
        Text(f"of {b['total']:,} merchants with traffic", style="dim"),
    )
    for merchant_id, tier, state, since in b["listed"]:
        t.add_row(
            Text(f"{merchant_id} ({tier})"),
            Text(f"{state} since {since}", style="red" if state == "open" else "yellow"),
        )
    hidden = b["open"] + b["half_open"] - len(b["listed"])
    if hidden > 0:
        t.add_row(Text(f"... and {hidden} more", style="dim"), "")
    return Panel(t, title="Circuit breakers", border_style="red" if b["open"] else "cyan")


def _queue_panel(s: Snapshot) -> Panel:
    if not s.queues:
        return Panel(Text("this phase has no bounded queues", style="dim"), title="Queues")
    t = Table.grid(padding=(0, 1))
    t.add_column(no_wrap=True)
    t.add_column(width=20)
    t.add_column(justify="right", no_wrap=True)
    for name, depth, capacity in s.queues:
        t.add_row(name, ProgressBar(total=max(1, capacity), completed=depth, width=20), f"{depth:,}/{capacity:,}")
    return Panel(t, title="Queues", border_style="cyan")


def _memory(s: Snapshot) -> Panel:
    t = _grid()
    if s.memory_how == "off":
        t.add_row("heap", "not measured (--memory off)")
    else:
        t.add_row("heap now", format_bytes(s.memory_bytes))
        t.add_row("peak", format_bytes(s.memory_peak_bytes))
        t.add_row("how", s.memory_how)
    return Panel(t, title="Memory", border_style="cyan")


def _events(s: Snapshot) -> Panel:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="dim", no_wrap=True)
    t.add_column()
    marks = {"scripted": "cyan", "observed": "yellow", "control": "magenta"}
    for at, kind, what in s.events:
        t.add_row(at, Text(what, style=marks.get(kind, "")))
    return Panel(t, title="Latest events (story time)", border_style="cyan")


def render(snapshot: Snapshot) -> RenderableType:
    """The whole dashboard for one snapshot (a pure function: same snapshot, same picture)."""
    s = snapshot
    done = min(1.0, s.elapsed_s / s.duration_s) if s.duration_s > 0 else 1.0
    header = Text.assemble(
        ("PayFlow live", "bold"),
        f"  {s.title}  ",
        ("story time ", "dim"),
        (s.story_time, "bold"),
        f"  {done * 100:,.0f}% of {s.duration_s / 60:,.0f} min",
        ("" if s.pace is None else f"  pace {s.pace:g}x"),
        f"  [{s.state}]",
    )
    lines: list[RenderableType] = [header]
    if s.metrics_url:
        lines.append(Text(f"Prometheus metrics: {s.metrics_url}", style="dim"))
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(_payments(s), _webhooks(s))
    grid.add_row(_breaker_panel(s), _queue_panel(s))
    grid.add_row(_memory(s), _events(s))
    lines.append(grid)
    return Group(*lines)
