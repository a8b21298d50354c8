"""A run you can watch: paced, with ``/metrics`` served while it lasts and the dashboard on a terminal.

:class:`Monitor` puts the pieces together for any scenario and phase (the
``monitoring`` scenario is the one written for it)::

    monitor = Monitor(RunConfig(scenario="monitoring", phase=5), pace=30, port=0).start()
    monitor.url                      # http://127.0.0.1:<port>/metrics, live
    monitor.snapshot                 # the dashboard's latest Snapshot
    result = monitor.join()          # or monitor.stop() to end it early

The run is a :class:`~payflow_lab.runner.LiveRun`: virtual time, slowed to
``pace`` simulated seconds per real second in its own thread. The metrics
server starts as soon as the run's pipeline exists and stops (its threads
joined, its port closed) when the run ends, however it ends.

:func:`watch` is what ``payflow-lab run --scenario monitoring`` calls: the same,
with the dashboard drawn by ``rich.live.Live`` until the run is over.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.live import Live

from payflow_lab.observe.prometheus import registry_for
from payflow_lab.observe.server import DEFAULT_PORT, MetricsServer, check_port
from payflow_lab.observe.terminal import DashboardFeed, Snapshot, render
from payflow_lab.runner import LiveRun, RunConfig, RunResult

__all__ = ["DEFAULT_PACE", "Monitor", "watch"]

#: Simulated seconds per real second by default: the 40-minute monitoring scenario in about 80 s.
DEFAULT_PACE = 30.0
#: How often the terminal redraws (per real second).
REFRESH_PER_S = 4


class Monitor:
    """A paced run of ``config`` with its Prometheus registry served on 127.0.0.1 and a dashboard feed.

    ``port=None`` serves nothing; ``port=0`` picks a free port (read :attr:`port`).
    Arguments are validated before anything starts.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        pace: float | None = DEFAULT_PACE,
        port: int | None = DEFAULT_PORT,
        host: str = "127.0.0.1",
    ) -> None:
        self.port_requested = None if port is None else check_port(port)
        self.host = host
        self.live = LiveRun(config, pace=pace)  # validates the pace
        self.feed = DashboardFeed(pace=pace)
        self.live.simulation.on_tick = self.feed.update
        self.server: MetricsServer | None = None
        self.registry: CollectorRegistry | None = None

    def start(self) -> Monitor:
        """Start the run, then the server on the run's registry. A port in use stops the run and raises."""
        self.live.start()
        pipeline = self.live.simulation.pipeline
        assert pipeline is not None  # the run has started
        self.registry = registry_for(pipeline)
        if self.port_requested is not None:
            try:
                self.server = MetricsServer(self.registry, self.port_requested, host=self.host).start()
            except BaseException:
                self.live.stop()
                raise
            self.feed.metrics_url = self.server.url
        return self

    @property
    def url(self) -> str | None:
        return None if self.server is None else self.server.url

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.port

    @property
    def running(self) -> bool:
        return self.live.running

    @property
    def snapshot(self) -> Snapshot | None:
        """The dashboard's latest snapshot (``None`` before the first simulated second)."""
        return self.feed.latest

    def final_snapshot(self) -> Snapshot | None:
        """A last snapshot once the run is over (the dashboard's closing frame)."""
        simulation = self.live.simulation
        if simulation.recorder is None or self.running:
            return self.feed.latest
        return self.feed.update(simulation, state=self.live.state)

    def join(self, timeout: float | None = None) -> RunResult | None:
        """Wait for the run to finish, stop the server, return the result."""
        try:
            return self.live.join(timeout)
        finally:
            if not self.running:
                self._stop_server()

    def stop(self, timeout: float = 30.0) -> RunResult | None:
        """End the run now (traffic stops, the pipeline shuts down), stop the server, return the result."""
        try:
            return self.live.stop(timeout)
        finally:
            self._stop_server()

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def watch(
    config: RunConfig,
    *,
    pace: float | None = DEFAULT_PACE,
    port: int | None = DEFAULT_PORT,
    console: Console | None = None,
    announce: Console | None = None,
) -> RunResult:
    """Run ``config`` paced, serving ``/metrics``, drawing the dashboard on ``console`` (``None``: no dashboard).

    The metrics address is printed on ``announce`` (stderr by default), so
    ``--port 0`` users learn the port. Returns the run's result; Ctrl-C stops
    the run cleanly (server and threads included) and is re-raised.
    """
    monitor = Monitor(config, pace=pace, port=port)
    announce = announce if announce is not None else Console(stderr=True)
    monitor.start()
    result: Any = None
    try:
        if monitor.url is not None:
            announce.print(f"payflow-lab: serving Prometheus metrics at {monitor.url}", highlight=False, soft_wrap=True)
        if console is None:
            result = monitor.join()
        else:
            with Live(
                console=console,
                refresh_per_second=REFRESH_PER_S,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live:
                while monitor.running:
                    snapshot = monitor.snapshot
                    if snapshot is not None:
                        live.update(render(snapshot))
                    time.sleep(1.0 / REFRESH_PER_S)
                result = monitor.join()
                final = monitor.final_snapshot()
                if final is not None:
                    live.update(render(final))
    finally:
        if result is None:
            monitor.stop()
    return result
