"""Watching a run: its Prometheus metrics, a ``/metrics`` endpoint, and a live terminal dashboard.

=====================  ======================================================
module                 what it holds
=====================  ======================================================
:mod:`.prometheus`     the collectors and :func:`registry_for` (one registry per run)
:mod:`.server`         :class:`MetricsServer`: ``/metrics`` on 127.0.0.1 while a run lasts
:mod:`.terminal`       :class:`DashboardFeed`, :class:`Snapshot` and :func:`render`: the rich dashboard
:mod:`.live`           :class:`Monitor` and :func:`watch`: a paced run with all of the above
:mod:`.alerts`         PayFlow's alert rules (a Prometheus rule file) and their replay in virtual time
=====================  ======================================================

In a notebook, after ``result = pf.run("recovery", phase=5)``::

    from prometheus_client import generate_latest
    from payflow_lab.observe import registry_for
    print(generate_latest(registry_for(result)).decode())
"""

from __future__ import annotations

from payflow_lab.observe import alerts
from payflow_lab.observe.alerts import (
    RULES,
    RULES_YAML,
    Rule,
    Scraper,
    aggregate_registry,
    evaluate,
    increase,
    ratio,
    select,
    verdict,
)
from payflow_lab.observe.live import DEFAULT_PACE, Monitor, watch
from payflow_lab.observe.prometheus import HookBusCollector, RunCollector, WebhookCollector, registry_for
from payflow_lab.observe.server import DEFAULT_PORT, MetricsServer
from payflow_lab.observe.terminal import DashboardFeed, Snapshot, render, sparkline

__all__ = [
    "increase",
    "ratio",
    "select",
    "RULES",
    "RULES_YAML",
    "Rule",
    "Scraper",
    "aggregate_registry",
    "alerts",
    "evaluate",
    "verdict",
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
