"""Issue 18, points 7 and 9: servers that a stranger cannot steer and a slow client cannot hold open."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from payflow_lab.domain import ValidationError
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.receiver import Receiver, serve_in_thread
from payflow_lab.monitoring.server import MetricsServer


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
        allowed = client.post(f"{shop.url}_control", json={"mode": "fail"},
                              headers={"x-payflow-control": shop.control_token})
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
