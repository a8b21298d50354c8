"""PayFlow's alert rules, and a way to replay them against a simulated afternoon.

Two forms of the same eight rules:

* :data:`RULES_YAML`, the rule file a Prometheus server would load (its
  ``groups:`` format), what an on-call team reviews and ships;
* :data:`RULES`, each rule's query written as a Python function over the
  scrapes a :class:`Scraper` kept of a run, so a lesson or a test can ask
  *when would this rule have fired on Black Friday?* in virtual time, and see
  that it stays quiet on a normal day.

The Python twins use three PromQL operations, each a small function of the
stored scrapes and the scrape ``i`` at which the rule is evaluated:
:func:`select` (``sum by (label) (metric{match})``), :func:`increase` and
:func:`ratio`. A result maps a label value (a tier, a hook; ``None`` when the
rule has no ``by``) to a number, like the instant vector PromQL returns.
:func:`evaluate` then does what Prometheus does with a rule: at every scrape,
each series whose condition holds becomes *pending*, and *fires* once it has
been pending for the rule's ``for:``.

Severity, by who must act: ``page`` (customers hurt now: wake someone),
``notify`` (a person should know today), ``ticket`` (office-hours work).
Lesson 06 explains each rule and replays them on Phases 1 and 5;
``tests/test_alerts.py`` checks that the YAML and the Python twins agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from payflow_lab.core.recorder import hhmmss
from payflow_lab.core.validation import number
from payflow_lab.observe.prometheus import HookBusCollector, RunCollector, WebhookCollector
from payflow_lab.phases.observation import Observable, Observation

__all__ = [
    "RULES",
    "RULES_YAML",
    "Rule",
    "Scraper",
    "aggregate_registry",
    "evaluate",
    "increase",
    "ratio",
    "select",
    "verdict",
]

#: An instant vector: label value (``None`` without ``by``) -> value.
Vector = dict[str | None, float]

RULES_YAML = """\
groups:
  - name: payments                     # customers feel these
    rules:
      - alert: PaymentLatencyBudgetBurn
        expr: |
          (1 - sum(rate(payflow_payment_latency_seconds_bucket{le="1.0"}[5m]))
                 / sum(rate(payflow_payment_latency_seconds_count[5m])))
            / (1 - 0.99) > 14.4
        for: 2m
        labels: {severity: page}
      - alert: PaymentsNotCompleting
        expr: |
          sum(increase(payflow_payments_total{outcome="authorized"}[2m])) == 0
            and sum(payflow_payments_in_flight) > 0
        for: 1m
        labels: {severity: page}

  - name: saturation                   # what fills up before customers feel it
    rules:
      - record: payflow:db_pool_utilisation
        expr: sum(payflow_db_pool_connections{state="in_use"}) / sum(payflow_db_pool_connections)
      - alert: DatabasePoolFull
        expr: payflow:db_pool_utilisation > 0.9
        for: 2m
        labels: {severity: page}
      - alert: DatabasePoolFilling
        expr: avg_over_time(payflow:db_pool_utilisation[2m]) > 0.75
        labels: {severity: page}
      - alert: HookQueueSaturated
        expr: max by (hook) (payflow_hook_queue_depth / payflow_hook_queue_capacity) > 0.8
        for: 2m
        labels: {severity: page}

  - name: webhooks                     # merchants feel these
    rules:
      - alert: WebhookSuccessRatioLow
        expr: |
          sum by (tier) (increase(payflow_webhooks_total{outcome="delivered"}[10m]))
            / sum by (tier) (increase(payflow_webhooks_emitted_total[10m])) < 0.9
        for: 5m
        labels: {severity: notify}
      - alert: CircuitBreakersOpen
        expr: |
          sum by (tier) (payflow_circuit_breakers{state!="closed"})
            / sum by (tier) (payflow_circuit_breakers) > 0.05
        for: 5m
        labels: {severity: notify}
      - alert: DeadLettersRising
        expr: |
          sum by (tier) (increase(payflow_webhooks_total{outcome="dead_lettered"}[10m]))
            / sum by (tier) (increase(payflow_webhooks_emitted_total[10m])) > 0.01
        labels: {severity: ticket}
"""


def aggregate_registry(source: Observation | Observable) -> CollectorRegistry:
    """A run's metrics without per-merchant series, for any phase: exactly what the alert rules read."""
    seen = source if isinstance(source, Observation) else source.observe()
    registry = CollectorRegistry()
    registry.register(RunCollector(seen.world))
    if seen.bus is not None:
        registry.register(HookBusCollector(seen.bus))
    if seen.webhooks is not None:
        registry.register(WebhookCollector(seen.webhooks))
    return registry


@dataclass
class Scraper:
    """What a Prometheus server keeps of a run: a scrape every ``every`` simulated seconds, each sample stored.

    Pass :meth:`scrape` as a run's ``on_tick`` (called once per simulated
    second); the first call builds the run's :func:`aggregate_registry`.
    """

    every: float = 15.0
    #: Story time of each scrape.
    times: list[float] = field(default_factory=list)
    #: (sample name, sorted labels) -> {scrape number: value}.
    series: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = field(default_factory=dict)
    registry: CollectorRegistry | None = None

    def __post_init__(self) -> None:
        self.every = number("every", self.every, minimum=1.0, maximum=3600.0, unit=" simulated seconds")

    def scrape(self, simulation: Any) -> None:
        """Scrape now if ``every`` seconds have passed since the last scrape."""
        now = simulation.world.clock()
        if self.times and now < self.times[-1] + self.every:
            return
        if self.registry is None:
            self.registry = aggregate_registry(simulation.pipeline)
        self.times.append(now)
        for family in self.registry.collect():
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.series.setdefault(key, {})[len(self.times) - 1] = sample.value


# ---------------------------------------------------------------- PromQL, in Python
def select(prom: Scraper, i: int, name: str, by: str | None = None, **match: str | tuple[str, ...]) -> Vector:
    """``sum by (by) (name{match})`` at scrape ``i``. A tuple in ``match`` means "any of" (``state!="closed"``)."""
    out: Vector = {}
    for (sample_name, label_items), values in prom.series.items():
        labels = dict(label_items)
        if sample_name != name or i not in values:
            continue
        if all(labels.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in match.items()):
            key = labels.get(by) if by is not None else None
            out[key] = out.get(key, 0.0) + values[i]
    return out


def increase(
    prom: Scraper, i: int, name: str, window: float, by: str | None = None, **match: str | tuple[str, ...]
) -> Vector:
    """``sum by (by) (increase(name{match}[window]))``: how much a counter grew over the window.

    Early in a run the window reaches back before the first scrape; like Prometheus, use what there is.
    """
    j = max(0, i - round(window / prom.every))
    if j == i:
        return {}
    now, then = select(prom, i, name, by, **match), select(prom, j, name, by, **match)
    return {key: now[key] - then[key] for key in now if key in then}


def ratio(numerator: Vector, denominator: Vector) -> Vector:
    """``a / b``, matched on labels; a zero denominator gives no data, as in PromQL (NaN never fires)."""
    return {key: value / denominator[key] for key, value in numerator.items() if denominator.get(key)}


# ---------------------------------------------------------------- the rules' queries
def latency_budget_burn(p: Scraper, i: int) -> Vector:
    good = ratio(
        increase(p, i, "payflow_payment_latency_seconds_bucket", 300, le="1.0"),
        increase(p, i, "payflow_payment_latency_seconds_count", 300),
    )
    return {key: (1 - share) / (1 - 0.99) for key, share in good.items()}


def payments_completed_while_waiting(p: Scraper, i: int) -> Vector:
    waiting = select(p, i, "payflow_payments_in_flight")
    completed = increase(p, i, "payflow_payments_total", 120, outcome="authorized")
    return {key: n for key, n in completed.items() if waiting.get(key, 0) > 0}  # the `and`


def db_pool_utilisation(p: Scraper, i: int) -> Vector:
    return ratio(
        select(p, i, "payflow_db_pool_connections", state="in_use"), select(p, i, "payflow_db_pool_connections")
    )


def db_pool_utilisation_2m(p: Scraper, i: int) -> Vector:
    """``avg_over_time(...[2m])``: the last eight scrapes."""
    window = [db_pool_utilisation(p, j).get(None) for j in range(max(0, i - 7), i + 1)]
    known = [u for u in window if u is not None]
    return {None: sum(known) / len(known)} if known else {}


def hook_queue_fill(p: Scraper, i: int) -> Vector:
    return ratio(
        select(p, i, "payflow_hook_queue_depth", by="hook"), select(p, i, "payflow_hook_queue_capacity", by="hook")
    )


def webhook_success(p: Scraper, i: int) -> Vector:
    return ratio(
        increase(p, i, "payflow_webhooks_total", 600, by="tier", outcome="delivered"),
        increase(p, i, "payflow_webhooks_emitted_total", 600, by="tier"),
    )


def breakers_not_closed(p: Scraper, i: int) -> Vector:
    return ratio(
        select(p, i, "payflow_circuit_breakers", by="tier", state=("open", "half_open")),
        select(p, i, "payflow_circuit_breakers", by="tier"),
    )


def dead_letter_share(p: Scraper, i: int) -> Vector:
    return ratio(
        increase(p, i, "payflow_webhooks_total", 600, by="tier", outcome="dead_lettered"),
        increase(p, i, "payflow_webhooks_emitted_total", 600, by="tier"),
    )


@dataclass(frozen=True)
class Rule:
    """One alert: its name and severity, its query, the condition on each value, ``for:`` and the ``by`` label."""

    name: str
    severity: str
    expr: Callable[[Scraper, int], Vector]
    fires: Callable[[float], bool]
    for_s: float
    by: str | None


RULES: list[Rule] = [
    Rule("PaymentLatencyBudgetBurn", "page", latency_budget_burn, lambda v: v > 14.4, 120, None),
    Rule("PaymentsNotCompleting", "page", payments_completed_while_waiting, lambda v: v == 0, 60, None),
    Rule("DatabasePoolFull", "page", db_pool_utilisation, lambda v: v > 0.9, 120, None),
    Rule("DatabasePoolFilling", "page", db_pool_utilisation_2m, lambda v: v > 0.75, 0, None),
    Rule("HookQueueSaturated", "page", hook_queue_fill, lambda v: v > 0.8, 120, "hook"),
    Rule("WebhookSuccessRatioLow", "notify", webhook_success, lambda v: v < 0.9, 300, "tier"),
    Rule("CircuitBreakersOpen", "notify", breakers_not_closed, lambda v: v > 0.05, 300, "tier"),
    Rule("DeadLettersRising", "ticket", dead_letter_share, lambda v: v > 0.01, 0, "tier"),
]


def evaluate(prom: Scraper, rule: Rule) -> dict[str | None, float] | None:
    """{label value: story time it first fired} over a run's scrapes; ``None`` if the rule never had data."""
    pending: dict[str | None, float] = {}
    fired: dict[str | None, float] = {}
    had_data = False
    for i, now in enumerate(prom.times):
        values = rule.expr(prom, i)
        had_data = had_data or bool(values)
        for key in list(pending):
            if key not in values or not rule.fires(values[key]):
                del pending[key]
        for key, value in values.items():
            if rule.fires(value):
                since = pending.setdefault(key, now)
                if now - since >= rule.for_s and key not in fired:
                    fired[key] = now
    return fired if had_data else None


def verdict(fired: Mapping[str | None, float] | None, by: str | None = None) -> str:
    """How a table cell says it: no data, quiet, or when it first fired (and for how many tiers or hooks)."""
    if fired is None:
        return "no data"
    if not fired:
        return "quiet"
    first = hhmmss(min(fired.values()))
    return first if by is None else f"{first} ({len(fired)} {by}{'s' if len(fired) > 1 else ''})"
