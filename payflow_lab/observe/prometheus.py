"""Prometheus metrics of one run: a registry of its own, filled at scrape time from what the run already counts.

Nothing on the payment path increments a Prometheus counter. The recorder,
the hook bus, the breakers, buckets, retry policies and the dead-letter store
already count what they do; the collectors here are prometheus_client custom
collectors that read those counts whenever the registry is scraped (the
pattern of :class:`~payflow_lab.resilience.collector.ResilienceCollector`, which
is reused for the per-merchant parts). So an unscraped run pays nothing, and
every figure on ``/metrics`` is the same number the JSON summary reports.

Each run gets its own :class:`~prometheus_client.CollectorRegistry`
(:func:`registry_for`), never the global default one, so a notebook can rerun
a cell without "Duplicated timeseries" errors, and two runs never mix.

The metrics (names follow Prometheus conventions: ``payflow_`` namespace,
base units in names, ``_total`` counters, ``snake_case`` labels):

===============================================  =========  ====================================
metric                                           type       labels
===============================================  =========  ====================================
``payflow_payments_total``                       counter    ``outcome`` (authorized, failed, stuck)
``payflow_payments_in_flight``                   gauge
``payflow_payment_latency_seconds``              histogram
``payflow_side_effects_started_total``           counter    ``kind``
``payflow_side_effects_total``                   counter    ``kind``, ``outcome``
``payflow_tasks_in_flight``                      gauge
``payflow_db_pool_connections``                  gauge      ``state`` (in_use, idle)
``payflow_db_pool_waiting_requests``             gauge
``payflow_db_pool_checkout_timeouts_total``      counter
``payflow_heap_bytes``                           gauge      (the run's traced heap, last sample)
``payflow_story_time_seconds``                   gauge      (seconds since midnight, story clock)
``payflow_hook_queue_depth``                     gauge      ``hook``
``payflow_hook_queue_capacity``                  gauge      ``hook``
``payflow_hook_workers``                         gauge      ``hook``
``payflow_hook_handlers_running``                gauge      ``hook``
``payflow_hook_admitted_total``                  counter    ``hook``
``payflow_hook_deliveries_total``                counter    ``hook``, ``outcome``
``payflow_hook_rejected_total``                  counter    ``hook``
``payflow_hook_spilled_total``                   counter    ``hook``
``payflow_hook_duration_seconds``                histogram  ``hook``
``payflow_hook_retries_total``                   counter    ``hook`` (Phase 5: second tries after a timeout)
``payflow_webhooks_emitted_total``               counter    ``tier``
``payflow_webhooks_total``                       counter    ``tier``, ``outcome`` (delivered, dead_lettered)
``payflow_webhook_deferrals_total``              counter    ``tier``, ``cause``
``payflow_webhooks_deferred``                    gauge      ``tier`` (in the backlog now)
``payflow_webhook_retries_total``                counter    ``tier``
``payflow_webhook_delivery_seconds``             histogram  ``tier`` (payment to delivered)
``payflow_circuit_breakers``                     gauge      ``tier``, ``state`` (breakers in it)
``payflow_webhook_recoveries_total``             counter
``payflow_webhook_recovery_seconds``             gauge      (the slowest recovery so far)
===============================================  =========  ====================================

plus, for Phase 5, everything :class:`~payflow_lab.resilience.collector.ResilienceCollector`
exports (breaker states and transitions, rate-limited requests, retries and
give-ups, retry-budget refusals, dead letters by reason), added up by tier
unless :func:`registry_for` is asked for per-merchant series.

Scrapes arrive on the HTTP server's thread while the simulation runs in its
own: the collectors read counters and take C-level snapshots of containers
(``list(d.items())``), and never read the simulation's clock (which belongs
to the other thread's event loop).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from payflow_lab.core.domain import Tier
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.recorder import SIDE_EFFECT_OUTCOMES, Recorder
from payflow_lab.core.validation import flag
from payflow_lab.core.world import World
from payflow_lab.hooks import HookBus
from payflow_lab.hooks.latency import COARSE_BOUNDS, LatencyHistogram
from payflow_lab.phases.observation import Observable, Observation
from payflow_lab.resilience import BreakerState
from payflow_lab.resilience.collector import ResilienceCollector

__all__ = ["HookBusCollector", "RunCollector", "WebhookCollector", "registry_for"]

NS = "payflow"


def _buckets_from_sorted(values: list[float]) -> list[tuple[str, float]]:
    """Cumulative ``le`` buckets (the hook bus's coarse bounds) of an already sorted list."""
    buckets = [(floatToGoString(bound), float(bisect.bisect_right(values, bound))) for bound in COARSE_BOUNDS]
    buckets.append(("+Inf", float(len(values))))
    return buckets


def _buckets_from_cumulative(cumulative: Mapping[str, int]) -> list[tuple[str, float]]:
    """``{"le_0.005": n, ..., "le_+Inf": n}`` (as the hook bus keeps them) to exposition buckets."""
    out = []
    for key, count in cumulative.items():
        bound = key[3:]
        out.append(("+Inf" if bound == "+Inf" else floatToGoString(float(bound)), float(count)))
    return out


def _histogram_buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    return _buckets_from_cumulative(histogram.cumulative())


class RunCollector(Collector):
    """Payments, side effects, tasks, the DB pool and memory of one run, for any phase."""

    def __init__(self, world: World, recorder: Recorder | None = None) -> None:
        self.world = world
        self.recorder = recorder or world.recorder

    def collect(self) -> Iterator[Metric]:
        r, pool = self.recorder, self.world.pool
        payments = CounterMetricFamily(
            f"{NS}_payments",
            "Payments by how they ended: authorized (the customer "
            "was told paid), failed (no money moved), stuck (never resolved)",
            labels=["outcome"],
        )
        for outcome, value in (("authorized", r.authorized), ("failed", r.failed), ("stuck", r.stuck)):
            payments.add_metric([outcome], value)
        yield payments
        yield GaugeMetricFamily(
            f"{NS}_payments_in_flight", "Payments accepted and not yet resolved", value=r.in_flight_payments
        )
        latencies = sorted(r.latencies)
        yield HistogramMetricFamily(
            f"{NS}_payment_latency_seconds",
            "Payment latency as the customer saw it (completed payments)",
            buckets=_buckets_from_sorted(latencies),
            sum_value=sum(latencies),
        )
        started = CounterMetricFamily(f"{NS}_side_effects_started", "Side effects started, by kind", labels=["kind"])
        ended = CounterMetricFamily(
            f"{NS}_side_effects", "Side effects that ended, by kind and outcome", labels=["kind", "outcome"]
        )
        for kind, counts in sorted(list(r.side_effects.items())):
            started.add_metric([kind], counts["started"])
            for outcome in SIDE_EFFECT_OUTCOMES:
                ended.add_metric([kind, outcome], counts[outcome])
        yield started
        yield ended
        yield GaugeMetricFamily(
            f"{NS}_tasks_in_flight", "Tasks running on behalf of payments and side effects", value=r.tasks_in_flight
        )
        connections = GaugeMetricFamily(
            f"{NS}_db_pool_connections", "Database pool connections by state", labels=["state"]
        )
        in_use = pool.in_use
        connections.add_metric(["in_use"], in_use)
        connections.add_metric(["idle"], pool.size - in_use)
        yield connections
        yield GaugeMetricFamily(
            f"{NS}_db_pool_waiting_requests", "Requests waiting for a database connection", value=pool.waiting
        )
        yield CounterMetricFamily(
            f"{NS}_db_pool_checkout_timeouts", "Checkouts that gave up waiting for a connection", value=pool.timeouts
        )
        yield GaugeMetricFamily(
            f"{NS}_heap_bytes", f"Memory of the run at its last sample ({r.memory.how})", value=r.memory_end
        )
        clock = r.series["clock"]
        yield GaugeMetricFamily(
            f"{NS}_story_time_seconds",
            "Story time of the last sample, seconds since midnight of the simulated day",
            value=clock[-1] if len(clock) else 0.0,
        )


class HookBusCollector(Collector):
    """Every hook of a :class:`~payflow_lab.hooks.HookBus`: queues, workers, outcomes, latency."""

    def __init__(self, bus: HookBus, retries: Mapping[str, int] | None = None) -> None:
        self.bus = bus
        self.retries = retries

    def collect(self) -> Iterator[Metric]:
        stats = list(self.bus.stats().values())
        families: dict[str, Any] = {
            "depth": GaugeMetricFamily(
                f"{NS}_hook_queue_depth", "Deliveries waiting in the hook's queue", labels=["hook"]
            ),
            "capacity": GaugeMetricFamily(
                f"{NS}_hook_queue_capacity", "Size of the hook's bounded queue", labels=["hook"]
            ),
            "workers": GaugeMetricFamily(f"{NS}_hook_workers", "Workers serving the hook", labels=["hook"]),
            "running": GaugeMetricFamily(f"{NS}_hook_handlers_running", "Handler calls in progress", labels=["hook"]),
            "admitted": CounterMetricFamily(
                f"{NS}_hook_admitted", "Deliveries admitted to the hook's queue", labels=["hook"]
            ),
            "ended": CounterMetricFamily(
                f"{NS}_hook_deliveries", "Admitted deliveries that ended, by outcome", labels=["hook", "outcome"]
            ),
            "rejected": CounterMetricFamily(
                f"{NS}_hook_rejected",
                "Emissions the hook did not get (queue full, all-or-nothing admission)",
                labels=["hook"],
            ),
            "spilled": CounterMetricFamily(
                f"{NS}_hook_spilled", "Deliveries handed to the hook's spill store", labels=["hook"]
            ),
        }
        duration = HistogramMetricFamily(f"{NS}_hook_duration_seconds", "Handler running time", labels=["hook"])
        for s in stats:
            name = [s.name]
            families["depth"].add_metric(name, s.queued)
            families["capacity"].add_metric(name, s.queue_size)
            families["workers"].add_metric(name, s.workers)
            families["running"].add_metric(name, s.running)
            families["admitted"].add_metric(name, s.admitted)
            for outcome, value in (
                ("completed", s.completed),
                ("failed", s.failed),
                ("timed_out", s.timed_out),
                ("cancelled", s.cancelled - s.never_started),
                ("never_started", s.never_started),
            ):
                families["ended"].add_metric([s.name, outcome], value)
            families["rejected"].add_metric(name, s.rejected)
            families["spilled"].add_metric(name, s.spilled)
            count = s.latency.get("count", 0)
            total = (s.latency.get("mean_ms") or 0.0) * count / 1000.0
            duration.add_metric(name, _buckets_from_cumulative(s.latency_buckets), total)
        yield from families.values()
        yield duration
        if self.retries is not None:
            retried = CounterMetricFamily(
                f"{NS}_hook_retries", "Handler calls that timed out and were tried again", labels=["hook"]
            )
            for hook, count in sorted(self.retries.items()):
                retried.add_metric([hook], count)
            yield retried


class WebhookCollector(Collector):
    """Phase 5's webhook path, by merchant tier: outcomes, deferrals, backlog, retries, breakers, recovery."""

    def __init__(self, delivery: Any) -> None:
        self.delivery = delivery

    def collect(self) -> Iterator[Metric]:
        d = self.delivery
        emitted = CounterMetricFamily(f"{NS}_webhooks_emitted", "Merchant webhooks emitted", labels=["tier"])
        ended = CounterMetricFamily(
            f"{NS}_webhooks", "Merchant webhooks that ended: delivered or dead-lettered", labels=["tier", "outcome"]
        )
        deferrals = CounterMetricFamily(
            f"{NS}_webhook_deferrals", "Webhooks sent to the backlog, by cause", labels=["tier", "cause"]
        )
        deferred = GaugeMetricFamily(f"{NS}_webhooks_deferred", "Webhooks waiting in the backlog now", labels=["tier"])
        retries = CounterMetricFamily(f"{NS}_webhook_retries", "Webhook calls retried after a failure", labels=["tier"])
        latency = HistogramMetricFamily(
            f"{NS}_webhook_delivery_seconds", "Time from the payment to its webhook delivered", labels=["tier"]
        )
        breakers = GaugeMetricFamily(
            f"{NS}_circuit_breakers",
            "Merchant circuit breakers in each state (as of their last transition)",
            labels=["tier", "state"],
        )
        counts = {(tier, state): 0 for tier in Tier for state in BreakerState}
        merchants = d.world.merchants
        for merchant_id, breaker in list(d.breakers.items()):
            counts[(merchants[merchant_id].tier, breaker.recorded_state)] += 1
        for tier in Tier:
            stats = d.tiers[tier]
            label = tier.value
            emitted.add_metric([label], stats.emitted)
            ended.add_metric([label, "delivered"], stats.delivered)
            ended.add_metric([label, "dead_lettered"], stats.dead_lettered)
            for cause in ("breaker_open", "rate_limited", "lane_full"):
                deferrals.add_metric([label, cause], stats.deferrals[cause])
            deferred.add_metric([label], d.deferred_by_tier[tier])
            retries.add_metric([label], d.retries_by_tier[tier])
            latency.add_metric([label], _histogram_buckets(stats.histogram), stats.histogram.total)
            for state in BreakerState:
                breakers.add_metric([label, state.value], counts[(tier, state)])
        yield from (emitted, ended, deferrals, deferred, retries, latency, breakers)
        recoveries = list(d.recoveries)
        yield CounterMetricFamily(
            f"{NS}_webhook_recoveries",
            "Merchant endpoints that came back and had their backlog delivered",
            value=len(recoveries),
        )
        yield GaugeMetricFamily(
            f"{NS}_webhook_recovery_seconds",
            "Slowest recovery so far: endpoint back to breaker closed and backlog delivered",
            value=max((r["seconds"] for r in recoveries), default=0.0),
        )


def _collectors(seen: Observation, per_merchant: bool) -> Iterable[Collector]:
    yield RunCollector(seen.world, seen.recorder)
    if seen.bus is not None:
        yield HookBusCollector(seen.bus, seen.second_tries)
    webhooks = seen.webhooks
    if webhooks is not None:
        yield WebhookCollector(webhooks)
        merchants = seen.world.merchants
        yield ResilienceCollector(
            breakers=webhooks.breakers,
            limiters=webhooks.limits,
            retries=webhooks.retries,
            budgets=webhooks.budgets,
            dead_letters=webhooks.dead_letters,
            namespace=NS,
            group=None if per_merchant else (lambda merchant: merchants[merchant].tier.value),
        )


def registry_for(source: Observation | Observable, *, per_merchant: bool = False) -> CollectorRegistry:
    """A fresh registry with collectors for everything ``source`` has to show.

    ``source`` is a pipeline of any phase, a finished run's result, or their
    :class:`~payflow_lab.phases.Observation`: what it exposes is what gets a
    collector. Every phase gets the run's payments, side effects, tasks, pool
    and memory; a phase with a hook bus its hooks; Phase 5 its webhook path
    and resilience parts. The collectors read the live objects at scrape time,
    so one registry built when a run starts follows it to the end; each call
    builds a new one (a notebook can rerun a cell without "Duplicated
    timeseries").

    Phase 5's breakers, rate limits, retry policies and budgets are one per
    merchant. By default their metrics are added up by tier (the ``breaker``,
    ``key``, ``policy`` and ``budget`` labels say ``enterprise``, ``premium``
    or ``standard``), so the page stays a few kilobytes at any scale;
    ``per_merchant=True`` asks for one series per merchant instead (a page of
    more than half a megabyte at full scale, 5,000 merchants).
    """
    flag("per_merchant", per_merchant)
    if isinstance(source, Observation):
        seen = source
    elif callable(getattr(source, "observe", None)):
        seen = source.observe()
    else:
        raise ValidationError("source", f"must be a pipeline, a run result or an Observation, got {source!r}")
    registry = CollectorRegistry()
    for collector in _collectors(seen, per_merchant):
        registry.register(collector)
    return registry
