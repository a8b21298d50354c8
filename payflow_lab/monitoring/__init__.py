"""Watching a run: its Prometheus metrics, a ``/metrics`` endpoint, and a live terminal dashboard.

=====================  ======================================================
module                 what it holds
=====================  ======================================================
:mod:`.prometheus`     the collectors and :func:`registry_for` (one registry per run)
:mod:`.server`         :class:`MetricsServer`: ``/metrics`` on 127.0.0.1 while a run lasts
:mod:`.dashboard`      :class:`DashboardFeed`, :class:`Snapshot` and :func:`render`: the rich dashboard
:mod:`.live`           :class:`Monitor` and :func:`watch`: a paced run with all of the above
=====================  ======================================================

In a notebook, after ``result = pf.run("recovery", phase=5)``::

    from prometheus_client import generate_latest
    print(generate_latest(result.registry).decode())
"""

from __future__ import annotations

from .dashboard import DashboardFeed, Snapshot, render, sparkline
from .live import DEFAULT_PACE, Monitor, watch
from .prometheus import HookBusCollector, RunCollector, WebhookCollector, registry_for
from .server import DEFAULT_PORT, MetricsServer

__all__ = [
    "DEFAULT_PACE",
    "DEFAULT_PORT",
    "DashboardFeed",
    "HookBusCollector",
    "MetricsServer",
    "Monitor",
    "RunCollector",
    "Snapshot",
    "WebhookCollector",
    "registry_for",
    "render",
    "sparkline",
    "watch",
]
