"""The run's Prometheus metrics: one registry per run, conventional names, the same numbers as the summary."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from functools import cache

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import payflow_lab as pf
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.vtime import run_virtual
from payflow_lab.observe import MetricsServer, registry_for
from payflow_lab.runner import RunConfig, Simulation

NAME = re.compile(r"^payflow_[a-z][a-z0-9_]*$")


@cache
def recovery() -> pf.RunResult:
    return pf.run("recovery", phase=5, seed=7, scale=0.05, duration=1800, memory="off")


def families(registry: CollectorRegistry) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def value(fams: dict[str, object], family: str, sample: str, **labels: str) -> float:
    matches = [
        s.value
        for s in fams[family].samples  # type: ignore[attr-defined]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matches, (family, sample, labels)
    return sum(matches)


def test_every_run_gets_a_registry_of_its_own() -> None:
    first = recovery()
    second = pf.run("normal", phase=5, seed=7, scale=0.02, duration=60, memory="off")
    one, other = registry_for(first), registry_for(second)
    assert isinstance(one, CollectorRegistry) and isinstance(other, CollectorRegistry)
    assert one is not other and registry_for(first) is not one  # a new one each call: a cell can rerun
    a, b = families(one), families(other)  # no "Duplicated timeseries" anywhere
    assert value(a, "payflow_payments", "payflow_payments_total", outcome="authorized") != value(
        b, "payflow_payments", "payflow_payments_total", outcome="authorized"
    )
    # A phase without a webhook path has no webhook metrics: what the observation lacks gets no collector.
    phase4 = families(registry_for(pf.run("normal", phase=4, seed=7, scale=0.02, duration=60, memory="off")))
    assert "payflow_hook_deliveries" in phase4 or any(name.startswith("payflow_hook") for name in phase4)
    assert not any(name.startswith("payflow_webhook_") for name in phase4)
    assert any(name.startswith("payflow_webhook_") for name in a)


def test_registry_for_refuses_what_cannot_be_observed() -> None:
    with pytest.raises(pf.ValidationError, match="source"):
        registry_for(object())  # type: ignore[arg-type]


def test_names_types_and_units_follow_the_conventions() -> None:
    fams = families(registry_for(recovery()))
    assert len(fams) >= 30
    for name, family in fams.items():
        assert NAME.match(name), name
        kind = family.type  # type: ignore[attr-defined]
        samples = family.samples  # type: ignore[attr-defined]
        if kind == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in samples), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
            buckets = [s for s in samples if s.name.endswith("_bucket")]
            assert buckets and any(s.labels["le"] == "+Inf" for s in buckets), name
        if kind == "gauge":
            assert not name.endswith("_total"), name
        assert not re.search(r"_(ms|milliseconds|minutes|kb|mb)(_|$)", name), name  # base units only
    assert fams["payflow_heap_bytes"].type == "gauge"  # type: ignore[attr-defined]


def test_every_hook_and_every_resilience_part_is_there() -> None:
    fams = families(registry_for(recovery()))
    expected = {
        "payflow_hook_deliveries": "counter",
        "payflow_hook_duration_seconds": "histogram",
        "payflow_hook_queue_depth": "gauge",
        "payflow_hook_rejected": "counter",
        "payflow_hook_retries": "counter",
        "payflow_webhooks": "counter",
        "payflow_webhook_delivery_seconds": "histogram",
        "payflow_webhook_deferrals": "counter",
        "payflow_webhooks_deferred": "gauge",
        "payflow_circuit_breakers": "gauge",
        "payflow_circuit_breaker_state": "gauge",
        "payflow_circuit_breaker_transitions": "counter",
        "payflow_rate_limiter_requests": "counter",
        "payflow_retries": "counter",
        "payflow_retry_giveups": "counter",
        "payflow_retry_budget_refusals": "counter",
        "payflow_dead_letters": "gauge",
        "payflow_dead_letters_added": "counter",
        "payflow_payment_latency_seconds": "histogram",
        "payflow_db_pool_connections": "gauge",
    }
    for name, kind in expected.items():
        assert fams[name].type == kind, name  # type: ignore[attr-defined]
    hooks = {s.labels["hook"] for s in fams["payflow_hook_queue_depth"].samples}  # type: ignore[attr-defined]
    assert hooks == {"analytics", "audit", "risk", "fraud", "webhook_enterprise", "webhook_premium", "webhook_standard"}
    tiers = {s.labels["tier"] for s in fams["payflow_webhooks"].samples}  # type: ignore[attr-defined]
    assert tiers == {"enterprise", "premium", "standard"}


def test_the_metrics_say_what_the_summary_says() -> None:
    result = recovery()
    s, fams = result.summary, families(registry_for(result))
    assert (
        value(fams, "payflow_payments", "payflow_payments_total", outcome="authorized") == s["payments"]["authorized"]
    )
    assert (
        value(fams, "payflow_payment_latency_seconds", "payflow_payment_latency_seconds_count")
        == s["payments"]["authorized"]
    )
    webhook = s["side_effects"]["by_kind"]["webhook"]
    assert value(fams, "payflow_webhooks", "payflow_webhooks_total", outcome="delivered") == webhook["delivered"]
    assert (
        value(fams, "payflow_webhooks", "payflow_webhooks_total", outcome="dead_lettered")
        == webhook["dead_lettered"]
        == value(fams, "payflow_dead_letters_added", "payflow_dead_letters_added_total")
    )
    for reason, count in s["dead_letters"]["by_reason"].items():
        assert value(fams, "payflow_dead_letters", "payflow_dead_letters", reason=reason) == count
    failing = next(iter(s["breakers"]))
    tier = s["breakers"][failing]["tier"]  # per-merchant parts are added up by tier unless asked otherwise
    opened = value(
        fams,
        "payflow_circuit_breaker_transitions",
        "payflow_circuit_breaker_transitions_total",
        breaker=tier,
        to_state="open",
    )
    assert opened == sum(b["opened"] for b in s["breakers"].values() if b["tier"] == tier) > 0
    assert value(fams, "payflow_circuit_breakers", "payflow_circuit_breakers", state="open") == 0  # all closed again
    assert value(fams, "payflow_webhook_retries", "payflow_webhook_retries_total") == s["webhooks"]["retries"]
    assert (
        value(fams, "payflow_hook_retries", "payflow_hook_retries_total", hook="risk")
        == s["timeouts"]["second_tries"]["risk"]
    )
    delivered_hist = value(
        fams, "payflow_webhook_delivery_seconds", "payflow_webhook_delivery_seconds_count", tier="enterprise"
    )
    assert delivered_hist == s["webhook_latency_ms_by_tier"]["enterprise"]["delivered"]
    assert value(fams, "payflow_webhook_recovery_seconds", "payflow_webhook_recovery_seconds") == s["recovery_seconds"]


def test_registry_for_fits_any_phase() -> None:
    simulation = Simulation(RunConfig(scenario="normal", phase=4, seed=1, scale=0.02, duration=60, memory="off"))
    run_virtual(simulation.run)
    fams = families(registry_for(simulation.pipeline))
    assert "payflow_hook_queue_depth" in fams and "payflow_payments" in fams
    assert "payflow_webhooks" not in fams and "payflow_circuit_breaker_state" not in fams
    simulation = Simulation(RunConfig(scenario="normal", phase=1, seed=1, scale=0.02, duration=60, memory="off"))
    run_virtual(simulation.run)
    fams = families(registry_for(simulation.pipeline))
    assert "payflow_payments" in fams and "payflow_hook_queue_depth" not in fams


def test_the_server_serves_the_registry_and_leaves_nothing_behind() -> None:
    registry = registry_for(recovery())
    before = set(threading.enumerate())
    with MetricsServer(registry, 0) as server:
        port = server.port
        assert server.url == f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    parsed = {f.name for f in text_string_to_metric_families(text)}
    assert {"payflow_payments", "payflow_webhooks", "payflow_circuit_breaker_state"} <= parsed
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_bad_ports_are_refused_naming_the_port() -> None:
    registry = CollectorRegistry()
    for bad in (-1, 65_536, 1.5, "9464", True):
        with pytest.raises(ValidationError) as caught:
            MetricsServer(registry, bad)  # type: ignore[arg-type]
        assert caught.value.field == "port"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        before = set(threading.enumerate())
        with pytest.raises(ValidationError) as caught:
            MetricsServer(registry, taken.getsockname()[1]).start()
        assert caught.value.field == "port" and "in use" in str(caught.value)
        assert set(threading.enumerate()) - before == set()
    with pytest.raises(ValidationError):
        MetricsServer("not a registry", 0)  # type: ignore[arg-type]
