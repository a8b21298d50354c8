"""Lesson 08's live view: webhooks through several dispatcher processes, one of them killed with a button.

:class:`FleetView` drives a :class:`~payflow_lab.durable.fleet.Fleet` on a
PostgreSQL outbox and draws, twice a real second, what the database says:

* deliveries per second of each dispatcher process (from its status line);
* the claims each one holds *in the database* (:meth:`.Outbox.claims`): a
  killed process's claims stay there, flat, until their leases lapse, and
  then another process takes the events over;
* a readout of the totals the lesson is about: pending, delivered, events
  claimed more than once, what the receivers applied and the repeats they
  absorbed, and ``lost`` (events neither delivered, pending nor dead: it
  must stay 0).

This is real time, not virtual time: real processes, real HTTP, real
PostgreSQL. The view polls from the kernel's event loop (as
:class:`~payflow_lab.lab.session.LiveSession` does), so the notebook stays
responsive, and :meth:`close` stops every process it started.
"""

from __future__ import annotations

import asyncio
import html
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import integer, number
from payflow_lab.durable.fleet import Fleet, ReceiverProcess, load_payments
from payflow_lab.durable.outbox import Outbox
from payflow_lab.durable.pgcluster import TemporaryPostgres
from payflow_lab.durable.stores import open_outbox
from payflow_lab.lab.figure_widget import FigureWidget

__all__ = ["FleetView"]

#: The readout's numbers, in order: (key, label).
READOUT = (
    ("state", "state"),
    ("elapsed_s", "seconds"),
    ("alive", "dispatchers alive"),
    ("kills", "killed"),
    ("pending", "pending"),
    ("delivered", "delivered"),
    ("reclaimed", "claimed more than once"),
    ("applied", "applied by receivers"),
    ("duplicates", "repeats absorbed"),
    ("lost", "lost"),
)
#: Seconds of history the plot keeps.
WINDOW_S = 120.0
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


class FleetView:
    """Start ``dispatchers`` processes on the outbox at ``url``, record ``events`` webhooks, watch, kill one.

    Without ``url`` and ``receivers`` the view starts its own throw-away
    PostgreSQL (:class:`~payflow_lab.durable.pgcluster.TemporaryPostgres`)
    and receivers (taking ``delay`` seconds per request) at the first Start,
    and stops them in :meth:`close`; a Start after :meth:`close` starts them
    again, so the view works whatever the notebook's other cells did.
    ``receivers`` is a running :class:`~payflow_lab.durable.fleet.ReceiverProcess`.
    ``workers``, ``lease`` and ``timeout`` are each
    dispatcher's (see ``payflow-lab dispatch``). Each Start records new
    payments, numbered on from ``first_payment``, so the receivers' ledgers
    never mistake them for an earlier run's. Display :attr:`widget`.
    """

    def __init__(
        self,
        url: str | None = None,
        receivers: ReceiverProcess | None = None,
        *,
        delay: float = 0.05,
        events: int = 3000,
        dispatchers: int = 2,
        workers: int = 4,
        lease: float = 3.0,
        timeout: float = 1.0,
        interval: float = 0.5,
        first_payment: int = 1,
    ) -> None:
        if receivers is not None and not isinstance(receivers, ReceiverProcess):
            raise ValidationError("receivers", f"must be a ReceiverProcess, got {type(receivers).__name__}")
        if (url is None) != (receivers is None):
            raise ValidationError("url", "give both url and receivers, or neither (the view then starts its own)")
        self.url = url
        self.receivers = receivers
        self.delay = number("delay", delay if receivers is None else receivers.delay, minimum=0, maximum=10)
        self._own: list[Any] = []  # what the view started itself (PostgreSQL, the receivers): stopped by close()
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self.outbox: Outbox | None = None
        self.events = integer("events", events, minimum=1, maximum=200_000)
        self.workers = integer("workers", workers, minimum=1, maximum=64)
        self.lease = number("lease", lease, above=0, maximum=3600, unit=" seconds")
        self.timeout = number("timeout", timeout, above=0, maximum=60, unit=" seconds")
        self.interval = number("interval", interval, minimum=0.1, maximum=10, unit=" seconds")
        self._next_payment = integer("first_payment", first_payment, minimum=1)
        self._baseline = {"applied": 0, "duplicates": 0}
        self.fleet: Fleet | None = None
        self.state = "idle"
        self.error: str | None = None
        self.totals: dict[str, Any] = {key: None for key, _ in READOUT}
        self._started = 0.0
        self._loaded = threading.Event()
        self._last: dict[str, tuple[float, int]] = {}
        self._x: deque[float] = deque()
        self._rate: dict[str, deque[float | None]] = {}
        self._held: dict[str, deque[int]] = {}
        self._task: Any = None
        self._generation = 0

        if dispatchers not in (1, 2, 4) or isinstance(dispatchers, bool):
            raise ValidationError("dispatchers", f"must be 1, 2 or 4, got {dispatchers!r}")
        self.count = widgets.ToggleButtons(
            options=[("1", 1), ("2", 2), ("4", 4)],
            value=dispatchers,
            description="dispatchers",
            style={"button_width": "3em"},
        )
        self.start_button = widgets.Button(description="Start", button_style="success", icon="play")
        self.kill_button = widgets.Button(description="Kill one (SIGKILL)", button_style="danger", disabled=True)
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        for button, css in (
            (self.start_button, "payflow-fleet-start"),
            (self.kill_button, "payflow-fleet-kill"),
            (self.stop_button, "payflow-fleet-stop"),
        ):
            button.add_class(css)
        self.start_button.on_click(lambda _b: self._guard(self.start))
        self.kill_button.on_click(lambda _b: self._guard(self.kill_one))
        self.stop_button.on_click(lambda _b: self._guard(self.stop))
        self.readout = widgets.HTML()
        self.figure = FigureWidget(
            layout=go.Layout(
                height=460,
                margin={"l": 60, "r": 20, "t": 40, "b": 40},
                title={"text": f"{self.events:,} webhooks, receivers taking {self.delay * 1000:g} ms"},
                xaxis={"domain": [0, 1], "anchor": "y", "title": {"text": "real seconds since Start"}},
                yaxis={"domain": [0.55, 1], "title": {"text": "deliveries / s"}, "rangemode": "tozero"},
                xaxis2={"domain": [0, 1], "anchor": "y2", "matches": "x", "showticklabels": False},
                yaxis2={"domain": [0, 0.42], "title": {"text": "claims held (database)"}, "rangemode": "tozero"},
                legend={"orientation": "h", "y": -0.12},
            )
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.count, self.start_button, self.kill_button, self.stop_button]),
                self.readout,
                self.figure,
            ]
        )
        self.widget.add_class("payflow-fleet")
        self._render()

    # ------------------------------------------------------------------ controls
    def _guard(self, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # a button must never leave a traceback in the log and a half-started fleet
            self._guard_failed(exc)

    def _guard_failed(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        if self.fleet is not None:
            self.fleet.stop()
        self._set_state("failed")
        if self._own:
            self._stop_own()

    def _services(self) -> tuple[str, ReceiverProcess, Outbox]:
        """The database, the receivers and an open outbox, started (or opened again) if need be."""
        if self.url is None or self.receivers is None:
            self.totals["state"] = "starting PostgreSQL and the receivers"
            self._render(keep_state=True)
            cluster = TemporaryPostgres(name="fleet").start()
            self._own.append(cluster)
            self._folder = tempfile.TemporaryDirectory(prefix="payflow-fleet-")
            receivers = ReceiverProcess(Path(self._folder.name), merchants=3, delay=self.delay).start()
            self._own.append(receivers)
            self.url, self.receivers = cluster.url, receivers
        if self.outbox is None:
            self.outbox = open_outbox(self.url, pool_size=2)
        return self.url, self.receivers, self.outbox

    def start(self, dispatchers: int | None = None) -> None:
        """Empty the outbox, start the dispatchers, then record the webhooks (in a thread) and start watching."""
        if self.state == "running":
            raise ValidationError("start", "the fleet is already running: press Stop first")
        n = self.count.value if dispatchers is None else dispatchers
        integer("dispatchers", n, minimum=1, maximum=8)
        url, receivers, outbox = self._services()
        self.error = None
        outbox.truncate()
        self.fleet = Fleet(url, receivers.routes, workers=self.workers, lease=self.lease, timeout=self.timeout)
        self.fleet.start(n)
        self._reset()
        ledgers = receivers.ledgers()
        self._baseline = {key: sum(ledger[key] for ledger in ledgers.values()) for key in ("applied", "duplicates")}
        self._started = time.monotonic()
        self._loaded.clear()
        first, self._next_payment = self._next_payment, self._next_payment + self.events
        threading.Thread(target=self._load, args=(first,), name="payflow-fleet-load", daemon=True).start()
        self._set_state("running")
        self._schedule()

    def _load(self, first: int) -> None:
        try:
            assert self.outbox is not None
            load_payments(self.outbox, self.events, kinds=("webhook",), first=first)
        except Exception as exc:  # the poller reports it and stops the fleet
            self.error = f"recording the webhooks failed: {type(exc).__name__}: {exc}"
            return
        self._loaded.set()

    def kill_one(self) -> str | None:
        """SIGKILL the live dispatcher holding the most claims; return its name (None if none is alive)."""
        if self.fleet is None:
            return None
        status = self.fleet.status()
        alive = [name for name, s in status.items() if s["alive"]]
        if not alive:
            return None
        victim = max(alive, key=lambda name: (status[name].get("in_flight", 0), name))
        self.fleet.kill(victim)
        self._render()
        return victim

    def stop(self) -> None:
        """Stop every dispatcher (SIGTERM: they give their claims back) and stop watching."""
        self._generation += 1
        if self.fleet is not None:
            self.fleet.stop()
        if self.state == "running":
            self._set_state("stopped")
            if self._own:
                self._stop_own()

    def close(self) -> None:
        """Stop the dispatchers, close the outbox, and stop what the view started itself (a later Start restarts it)."""
        self.stop()
        self._stop_own()

    def _stop_own(self) -> None:
        """Close the outbox and stop the PostgreSQL and receivers the view started (not those it was given).

        Done as soon as a run ends, not only in :meth:`close`: a kernel that is
        killed (a restart, a closed browser tab in a test) runs no clean-up, and
        a server it started would outlive it. The next Start starts them again.
        """
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self._own:
            for service in reversed(self._own):
                service.stop()
            self._own.clear()
            self.url = self.receivers = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def wait(self, timeout: float = 300.0) -> dict[str, Any]:
        """Block until the run finished (for scripts and tests; a notebook watches instead); return the totals."""
        deadline = time.monotonic() + timeout
        while self.state == "running":
            if self._task is None:  # no kernel loop is polling: poll here
                self.poll_once()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fleet did not finish within {timeout:g} s: {self.totals}")
            time.sleep(self.interval)
        return dict(self.totals)

    # ------------------------------------------------------------------ polling
    def _schedule(self) -> None:
        self._generation += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._task = None  # not in a kernel: wait() polls
            return
        self._task = loop.create_task(self._poll(self._generation), name="payflow-fleet-poller")

    async def _poll(self, generation: int) -> None:
        # On the kernel's loop, like the live sessions' poller: a poll is a few short queries, and widgets are
        # updated from the thread that owns them.
        while generation == self._generation and self.state == "running":
            try:
                self.poll_once()
            except Exception as exc:  # a failed poll must not leave processes running unwatched
                self._guard_failed(exc)
                return
            await asyncio.sleep(self.interval)

    def poll_once(self) -> None:
        """Read the fleet's status lines and the database once; update the figure and the readout."""
        fleet = self.fleet
        if fleet is None or self.state != "running":
            return
        if self.error is not None:
            raise RuntimeError(self.error)
        now = time.monotonic() - self._started
        outbox, receivers = self.outbox, self.receivers
        assert outbox is not None and receivers is not None
        status = fleet.status()
        held = outbox.claims()
        counts = outbox.counts()
        x = round(now, 2)
        self._x.append(x)
        for name, s in status.items():
            owner = f"{name}#{s['generation']}"
            delivered = int(s.get("delivered", 0))
            before = self._last.get(owner)
            self._last[owner] = (now, delivered)
            rate = None if before is None or now <= before[0] else (delivered - before[1]) / (now - before[0])
            key = owner if s["generation"] > 1 else name
            self._rate.setdefault(key, deque([None] * (len(self._x) - 1))).append(
                round(rate, 1) if rate is not None and s["alive"] else None
            )
            self._held.setdefault(key, deque([0] * (len(self._x) - 1))).append(held.get(owner, 0))
        while self._x and self._x[0] < now - WINDOW_S:
            self._x.popleft()
            for rates in self._rate.values():
                if rates:
                    rates.popleft()
            for held_counts in self._held.values():
                if held_counts:
                    held_counts.popleft()
        ledgers = receivers.ledgers()
        applied = sum(ledger["applied"] for ledger in ledgers.values()) - self._baseline["applied"]
        loaded = self._loaded.is_set()
        self.totals.update(
            elapsed_s=round(now, 1),
            alive=len(fleet.alive()),
            kills=fleet.kills,
            pending=counts["pending"],
            delivered=counts["delivered"],
            reclaimed=outbox.reclaimed(),
            applied=applied,
            duplicates=sum(ledger["duplicates"] for ledger in ledgers.values()) - self._baseline["duplicates"],
            lost=(self.events - counts["delivered"] - counts["pending"] - counts["dead"]) if loaded else 0,
        )
        self._draw()
        if loaded and counts["pending"] == 0:
            fleet.stop()
            self._generation += 1
            self._set_state("finished")
            if self._own:
                self._stop_own()
        elif not fleet.alive():
            self.totals["state"] = "running, no dispatcher alive: nothing moves until one starts (Stop, then Start)"
            self._render(keep_state=True)

    # ------------------------------------------------------------------ drawing
    def _reset(self) -> None:
        self._last.clear()
        self._x.clear()
        self._rate.clear()
        self._held.clear()
        self.totals = {key: None for key, _ in READOUT}
        with self.figure.batch_update():
            self.figure.data = ()

    def _draw(self) -> None:
        x = list(self._x)
        with self.figure.batch_update():
            existing = {trace.meta: trace for trace in self.figure.data}
            for index, name in enumerate(self._rate):
                color = COLORS[index % len(COLORS)]
                for meta, ys, axes in (
                    (f"rate:{name}", self._rate[name], ("x", "y")),
                    (f"held:{name}", self._held[name], ("x2", "y2")),
                ):
                    trace = existing.get(meta)
                    if trace is None:
                        self.figure.add_scatter(
                            x=x,
                            y=list(ys),
                            name=name,
                            meta=meta,
                            xaxis=axes[0],
                            yaxis=axes[1],
                            mode="lines",
                            line={"color": color, "dash": "solid" if meta.startswith("rate") else "dot"},
                            legendgroup=name,
                            showlegend=meta.startswith("rate"),
                        )
                    else:
                        trace.x, trace.y = x, list(ys)
        self._render()

    def _set_state(self, state: str) -> None:
        self.state = state
        running = state == "running"
        self.start_button.disabled = running
        self.count.disabled = running
        self.kill_button.disabled = not running
        self.stop_button.disabled = not running
        self._render()

    def _render(self, *, keep_state: bool = False) -> None:
        if not keep_state:
            self.totals["state"] = self.state if self.error is None else f"{self.state}: {self.error}"
        cells = []
        for key, label in READOUT:
            value = self.totals.get(key)
            raw = "" if value is None else str(value)
            shown = "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
            cells.append(
                f'<span class="payflow-metric" data-metric="{key}" data-value="{html.escape(raw)}" '
                f'style="margin-right:1.2em"><span style="color:#666">{label}</span> <b>{html.escape(shown)}</b></span>'
            )
        self.readout.value = f'<div style="font-family:monospace;font-size:13px">{"".join(cells)}</div>'

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
