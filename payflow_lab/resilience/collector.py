"""Prometheus metrics for the resilience parts, read from the parts themselves at scrape time.

The breakers, buckets, retry policies, budgets and dead-letter stores already
count what they do; :class:`ResilienceCollector` is a prometheus_client
custom collector that turns those counts into metrics whenever the registry
is scraped, so no code on the delivery path has to remember to increment a
second counter. Register it on a registry of the run's own
(:func:`resilience_registry`), so a notebook can rerun a cell without
"Duplicated timeseries" errors.

The metrics (``payflow_`` is the default namespace), following Prometheus
conventions (``_total`` counters, units in names, ``snake_case`` labels):

==============================================  =======  =======================================
metric                                          type     labels
==============================================  =======  =======================================
``payflow_circuit_breaker_state``               gauge    ``breaker``, ``state`` (1 for the current one)
``payflow_circuit_breaker_transitions_total``   counter  ``breaker``, ``from_state``, ``to_state``
``payflow_circuit_breaker_calls_total``         counter  ``breaker``, ``decision`` (admitted, rejected)
``payflow_rate_limiter_requests_total``         counter  ``key``, ``result`` (immediate, delayed, rejected)
``payflow_rate_limiter_wait_seconds_total``     counter  ``key``
``payflow_retry_attempts_total``                counter  ``policy``
``payflow_retries_total``                       counter  ``policy``
``payflow_retry_giveups_total``                 counter  ``policy``, ``reason``
``payflow_retry_budget_withdrawals_total``      counter  ``budget``
``payflow_retry_budget_refusals_total``         counter  ``budget``
``payflow_dead_letters``                        gauge    ``reason`` (letters held now)
``payflow_dead_letters_added_total``            counter  (none)
``payflow_dead_letters_removed_total``          counter  (none)
==============================================  =======  =======================================

A scrape arrives on the HTTP server's thread, where the simulation's
(virtual) clock cannot be read, so the collector never reads a clock: breaker
state is :attr:`~payflow_lab.resilience.breaker.CircuitBreaker.recorded_state`
(the state of the last transition, consistent with the transitions counter),
and token balances are not exported. Per-key labels (merchant ids) grow with
the merchants that have traffic: at full scale, 5,000 merchants make a page
of more than half a megabyte. Pass ``group`` to fold keys into a few groups
(Phase 5's registry folds merchants into their tier unless asked for
per-merchant series, :func:`payflow_lab.observe.registry_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from payflow_lab.core.errors import ValidationError
from payflow_lab.resilience.breaker import BreakerState, CircuitBreaker, KeyedCircuitBreaker
from payflow_lab.resilience.budget import RetryBudget
from payflow_lab.resilience.dead_letters import DeadLetterStore
from payflow_lab.resilience.ratelimit import KeyedRateLimiter, TokenBucket
from payflow_lab.resilience.retry import RetryPolicy

__all__ = ["ResilienceCollector", "resilience_registry"]


def _pairs(parts: Any, field: str) -> list[tuple[str, Any]]:
    if parts is None:
        return []
    if isinstance(parts, (KeyedCircuitBreaker, KeyedRateLimiter)):
        return [(str(k), v) for k, v in parts.items()]
    if isinstance(parts, Mapping):
        return [(str(k), v) for k, v in list(parts.items())]
    raise ValidationError(field, f"must be a mapping of name to part (or a keyed container), got {parts!r}")


class _Sums:
    """Values for one metric family, added up by label values (so that keys folded into a group add up)."""

    def __init__(self, family: Any) -> None:  # a *MetricFamily: each has add_metric, which Metric lacks
        self._family = family
        self._values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + value

    def family(self) -> Metric:
        for labels, value in self._values.items():
            self._family.add_metric(list(labels), value)
        return self._family


class ResilienceCollector(Collector):
    """Exports the counts of the given parts. Each argument is optional.

    ``breakers``: a :class:`KeyedCircuitBreaker` or a mapping name -> :class:`CircuitBreaker`;
    ``limiters``: a :class:`KeyedRateLimiter` or a mapping key -> :class:`TokenBucket`;
    ``retries``: mapping name -> :class:`RetryPolicy`; ``budgets``: mapping name -> :class:`RetryBudget`;
    ``dead_letters``: a :class:`DeadLetterStore`.

    ``group`` folds keys into groups: ``group(key)`` is the label value each
    key's counts are added to (Phase 5 passes a merchant id's tier), so the
    page grows with the groups, not with the keys, and sums over the label
    are the same either way. Grouped, ``circuit_breaker_state`` counts the
    breakers in each state instead of being 0 or 1. ``None`` (the default)
    keeps one series per key.
    """

    def __init__(
        self,
        *,
        breakers: KeyedCircuitBreaker[Any] | Mapping[str, CircuitBreaker] | None = None,
        limiters: KeyedRateLimiter[Any] | Mapping[str, TokenBucket] | None = None,
        retries: Mapping[str, RetryPolicy] | None = None,
        budgets: Mapping[str, RetryBudget] | None = None,
        dead_letters: DeadLetterStore | None = None,
        namespace: str = "payflow",
        group: Callable[[str], str] | None = None,
    ) -> None:
        for field, parts in (
            ("breakers", breakers),
            ("limiters", limiters),
            ("retries", retries),
            ("budgets", budgets),
        ):
            _pairs(parts, field)  # validate now, not at the first scrape
        if dead_letters is not None and not isinstance(dead_letters, DeadLetterStore):
            raise ValidationError("dead_letters", f"must implement DeadLetterStore, got {dead_letters!r}")
        if not isinstance(namespace, str) or not namespace.isidentifier():
            raise ValidationError("namespace", f"must be a metric-name prefix like 'payflow', got {namespace!r}")
        self.breakers, self.limiters, self.retries = breakers, limiters, retries
        self.budgets, self.dead_letters = budgets, dead_letters
        if group is not None and not callable(group):
            raise ValidationError("group", f"must be a function from a key to its group's name, got {group!r}")
        self.ns = namespace
        self.group = group

    def collect(self) -> Iterator[Metric]:
        yield from self._breakers()
        yield from self._limiters()
        yield from self._retries()
        yield from self._dead_letters()

    def _label(self, name: str) -> str:
        return name if self.group is None else str(self.group(name))

    def _breakers(self) -> Iterable[Metric]:
        ns = self.ns
        grouped = self.group is not None
        state = _Sums(
            GaugeMetricFamily(
                f"{ns}_circuit_breaker_state",
                "Circuit breakers in each state (as of their last transition), by group"
                if grouped
                else "1 for the state each circuit breaker is in (as of its last transition), else 0",
                labels=["breaker", "state"],
            )
        )
        moves = _Sums(
            CounterMetricFamily(
                f"{ns}_circuit_breaker_transitions",
                "Circuit breaker state transitions",
                labels=["breaker", "from_state", "to_state"],
            )
        )
        calls = _Sums(
            CounterMetricFamily(
                f"{ns}_circuit_breaker_calls",
                "Calls offered to a circuit breaker, by its decision",
                labels=["breaker", "decision"],
            )
        )
        for name, breaker in _pairs(self.breakers, "breakers"):
            label = self._label(name)
            current = breaker.recorded_state
            for s in BreakerState:
                state.add((label, s.value), 1.0 if s is current else 0.0)
            counts = sorted(((a.value, b.value), n) for (a, b), n in list(breaker.transition_counts.items()))
            for (source, target), n in counts:
                moves.add((label, source, target), n)
            calls.add((label, "admitted"), breaker.admitted)
            calls.add((label, "rejected"), breaker.rejected)
        return state.family(), moves.family(), calls.family()

    def _limiters(self) -> Iterable[Metric]:
        ns = self.ns
        requests = _Sums(
            CounterMetricFamily(
                f"{ns}_rate_limiter_requests",
                "Token requests by result: granted at once, granted after a wait, rejected",
                labels=["key", "result"],
            )
        )
        waited = _Sums(
            CounterMetricFamily(f"{ns}_rate_limiter_wait_seconds", "Seconds spent waiting for tokens", labels=["key"])
        )
        for key, bucket in _pairs(self.limiters, "limiters"):
            label = self._label(key)
            requests.add((label, "immediate"), bucket.granted - bucket.delayed)
            requests.add((label, "delayed"), bucket.delayed)
            requests.add((label, "rejected"), bucket.rejected)
            waited.add((label,), bucket.waited_seconds)
        return requests.family(), waited.family()

    def _retries(self) -> Iterable[Metric]:
        ns = self.ns
        attempts = _Sums(
            CounterMetricFamily(f"{ns}_retry_attempts", "Attempts made, first attempts included", labels=["policy"])
        )
        retries = _Sums(
            CounterMetricFamily(f"{ns}_retries", "Retries made (attempts after the first)", labels=["policy"])
        )
        giveups = _Sums(
            CounterMetricFamily(f"{ns}_retry_giveups", "Calls given up, by reason", labels=["policy", "reason"])
        )
        for name, policy in _pairs(self.retries, "retries"):
            label = self._label(name)
            attempts.add((label,), policy.attempts)
            retries.add((label,), policy.retries)
            for reason, n in sorted(policy.exhausted.items()):
                giveups.add((label, reason), n)
        withdrawals = _Sums(
            CounterMetricFamily(
                f"{ns}_retry_budget_withdrawals", "Retries paid for by a retry budget", labels=["budget"]
            )
        )
        refusals = _Sums(
            CounterMetricFamily(
                f"{ns}_retry_budget_refusals", "Retries refused by an empty retry budget", labels=["budget"]
            )
        )
        for name, budget in _pairs(self.budgets, "budgets"):
            label = self._label(name)
            withdrawals.add((label,), budget.withdrawals)
            refusals.add((label,), budget.refusals)
        return (attempts.family(), retries.family(), giveups.family(), withdrawals.family(), refusals.family())

    def _dead_letters(self) -> Iterable[Metric]:
        store = self.dead_letters
        if store is None:
            return ()
        ns = self.ns
        held = GaugeMetricFamily(f"{ns}_dead_letters", "Dead letters held now, by reason", labels=["reason"])
        for reason, n in store.count_by_reason().items():
            held.add_metric([reason], n)
        metrics: list[Metric] = [held]
        if hasattr(store, "added") and hasattr(store, "removed"):
            metrics.append(
                CounterMetricFamily(f"{ns}_dead_letters_added", "Deliveries dead-lettered", value=store.added)
            )
            metrics.append(
                CounterMetricFamily(
                    f"{ns}_dead_letters_removed",
                    "Dead letters removed from the store (delivered by a replay)",
                    value=store.removed,
                )
            )
        return metrics


def resilience_registry(**parts: Any) -> tuple[CollectorRegistry, ResilienceCollector]:
    """A fresh registry with a :class:`ResilienceCollector` for ``parts`` registered on it."""
    registry = CollectorRegistry()
    collector = ResilienceCollector(**parts)
    registry.register(collector)
    return registry, collector
