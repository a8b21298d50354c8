"""The notebook side of payflow-lab: a control panel, a live dashboard, and static figures.

Needs the ``lab`` extra (``ipywidgets``, ``plotly``, ``anywidget``)::

    from payflow_lab.lab import LiveSession
    session = LiveSession(scenario="blackfriday", phase=1,
                          panels={"DB in use": ["db_in_use"], "waiting": ["db_waiting"]})
    session          # shows the panel and the dashboard; press Start

=========================  ====================================================
:class:`LiveSession`       panel + dashboard + a paced run in a worker thread
:class:`ControlPanel`      the widgets: scenario, phase, faults, pace, buttons
:class:`Dashboard`         plotly ``FigureWidget`` and readout, updated live
:func:`run_figure`         the same panels for a finished run (static figure)
:func:`latency_figure`     only latency, with the run's events
:func:`close_all`          stop every live session (a lesson's last cell)
:func:`live_threads`       simulation threads still alive (should be none)
:func:`check_environment`  Lesson 00's checks
:class:`FleetView`         lesson 08: dispatcher processes on PostgreSQL, live
=========================  ====================================================

:class:`FleetView` is imported on first use: it brings durable delivery
(httpx, psycopg), which the other lessons do not need.
"""

from __future__ import annotations

from payflow_lab.lab import traps
from payflow_lab.lab.dashboard import Dashboard
from payflow_lab.lab.env import check_environment, environment_html, environment_ok
from payflow_lab.lab.panel import ControlPanel
from payflow_lab.lab.plots import display_value, latency_figure, run_figure, story_ms, thin
from payflow_lab.lab.session import LiveSession, close_all, live_threads

__all__ = [
    "FleetView",
    "display_value",
    "story_ms",
    "thin",
    "traps",
    "ControlPanel",
    "Dashboard",
    "LiveSession",
    "check_environment",
    "close_all",
    "environment_html",
    "environment_ok",
    "latency_figure",
    "live_threads",
    "run_figure",
]


def __getattr__(name: str) -> object:
    if name == "FleetView":
        from payflow_lab.lab.fleet_view import FleetView

        return FleetView
    raise AttributeError(f"module 'payflow_lab.lab' has no attribute {name!r}")
