"""Issue 18, points 7 and 9: servers that a stranger cannot steer and a slow client cannot hold open."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.vtime import run_virtual
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.receiver import Receiver, serve_in_thread
from payflow_lab.observe import registry_for
from payflow_lab.observe.server import MetricsServer
from payflow_lab.runner import RunConfig, Simulation


# ------------------------------------------------------------------ point 9: control needs a token
def test_the_control_endpoint_refuses_a_request_without_the_receivers_token() -> None:
    shop = Receiver("shop", ledger=ReceiverLedger())
    other = Receiver("other", ledger=ReceiverLedger())
    assert shop.control_token != other.control_token  # one per receiver, made fresh
    with serve_in_thread([shop]), httpx.Client(trust_env=False) as client:
        for headers in ({}, {"x-payflow-control": "guess"}, {"x-payflow-control": other.control_token}):
            refused = client.post(f"{shop.url}_control", json={"mode": "fail"}, headers=headers)
            assert refused.status_code == 403 and "control token" in refused.json()["error"]
        assert shop.mode == "up"  # nothing changed
        allowed = client.post(
            f"{shop.url}_control", json={"mode": "fail"}, headers={"x-payflow-control": shop.control_token}
        )
        assert allowed.status_code == 200 and shop.mode == "fail"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_a_metrics_server_refuses_a_reachable_host_unless_told(host: str) -> None:
    with pytest.raises(ValidationError, match="allow_remote=True") as caught:
        MetricsServer(CollectorRegistry(), 0, host=host)
    assert caught.value.field == "host"
    MetricsServer(CollectorRegistry(), 0, host=host, allow_remote=True)  # an explicit opt-in (not started)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_opt_in(host: str) -> None:
    MetricsServer(CollectorRegistry(), 0, host=host)


# ------------------------------------------------------------------ point 7: a shutdown deadline
def test_a_slow_client_cannot_keep_the_metrics_server_alive() -> None:
    registry = CollectorRegistry()
    counter = Counter("big", "a large page", ["n"], registry=registry)
    for n in range(150_000):  # a page (~6 MB) far larger than the socket buffers: the server blocks writing it
        counter.labels(str(n)).inc()
    server = MetricsServer(registry, 0, shutdown_deadline=1.0).start()
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, so the window stays small
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    slow.recv(100)  # the response has started; the client now reads nothing more
    try:
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    finally:
        slow.close()
    assert server.cut_off == 1  # the slow request was cut off at the deadline, not waited for
    assert took < 30  # a loose net: without the deadline this never returns while the client stays
    assert not any(t.name.startswith("payflow-metrics") for t in threading.enumerate())


# ------------------------------------------------------------------ point 1: a deadline for request bodies
def half_requests(url: str, count: int) -> list[socket.socket]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 100)  # a tenth of it
        socks.append(sock)
    return socks


def test_half_a_body_is_answered_408_after_the_read_deadline_and_never_applied() -> None:
    from payflow_lab.durable.receiver import ReceiverServer

    shop = Receiver("shop", ledger=ReceiverLedger())
    server = ReceiverServer([shop], read_timeout=0.5)
    import anyio.from_thread

    with anyio.from_thread.start_blocking_portal() as portal:
        future, _ = portal.start_task(server.serve)
        socks = half_requests(shop.url, 20)
        try:
            for sock in socks:
                sock.settimeout(60)  # a safety net: the server answers after its 0.5 s read deadline
                assert sock.recv(12) == b"HTTP/1.1 408"
        finally:
            for sock in socks:
                sock.close()
            portal.call(server.stop)
            future.result(timeout=60)
    assert shop.counters["truncated"] == 20 and shop.counters["applied"] == 0
    assert shop.counters["bad_signature"] == 0  # not even looked at


def test_stopping_with_half_bodies_open_is_quiet_and_prompt(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    shop = Receiver("shop", ledger=ReceiverLedger())
    with caplog.at_level("DEBUG"), serve_in_thread([shop]):
        socks = half_requests(shop.url, 20)
        time.sleep(0.3)  # the connections are open and waiting for the rest of their bodies
        started = time.monotonic()
    took = time.monotonic() - started
    for sock in socks:
        sock.close()
    err = capfd.readouterr().err + "\n".join(  # asyncio reports through logging, which pytest captures
        f"{r.getMessage()} {r.exc_info[0].__name__ if r.exc_info else ''}" for r in caplog.records
    )
    assert "CancelledError" not in err and "Traceback" not in err, err[-2000:]
    assert took < 30  # graceful timeout (1 s) plus a loose net; it used to wait on the clients
    assert shop.counters["applied"] == 0


def test_a_read_timeout_must_be_sensible() -> None:
    from payflow_lab.durable.receiver import ReceiverServer

    for bad in (0, -1, float("nan"), True, 1000):
        with pytest.raises(ValidationError) as caught:
            ReceiverServer([Receiver("shop", ledger=ReceiverLedger())], read_timeout=bad)
        assert caught.value.field == "read_timeout"


# ------------------------------------------------------------- point 7b: /metrics stays small at any scale
def _phase5(scale: float, duration: float) -> Simulation:
    simulation = Simulation(
        RunConfig(scenario="blackfriday", phase=5, seed=3, scale=scale, duration=duration, memory="off")
    )
    run_virtual(simulation.run)
    return simulation


def test_the_metrics_page_adds_merchants_up_by_tier_unless_asked_for_each() -> None:
    pipeline = _phase5(0.1, 2_400).pipeline
    default = generate_latest(registry_for(pipeline)).decode()
    each = generate_latest(registry_for(pipeline, per_merchant=True)).decode()
    assert "mch_" not in default and "mch_" in each
    assert len(default) * 5 < len(each)

    def totals(text: str) -> dict[tuple[str, ...], float]:
        """Every sample added up over its per-merchant label: what a dashboard's sum() shows."""
        sums: dict[tuple[str, ...], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(
                    sorted((k, v) for k, v in sample.labels.items() if k not in ("breaker", "key", "policy", "budget"))
                )
                sums[(sample.name, *labels)] = sums.get((sample.name, *labels), 0.0) + sample.value
        return sums

    assert totals(default) == totals(each)  # grouping loses detail, never a count
    breakers = [line for line in default.splitlines() if line.startswith("payflow_circuit_breaker_state{")]
    assert {re.search(r'breaker="([^"]+)"', line).group(1) for line in breakers} <= {  # type: ignore[union-attr]
        "enterprise",
        "premium",
        "standard",
    }


def test_per_merchant_must_be_a_yes_or_no() -> None:
    pipeline = _phase5(0.02, 60).pipeline
    with pytest.raises(ValidationError, match="per_merchant"):
        registry_for(pipeline, per_merchant="yes")  # type: ignore[arg-type]
