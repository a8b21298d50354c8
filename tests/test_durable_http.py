"""Over real HTTP on 127.0.0.1: the receiver (verify, deduplicate, apply once) and the httpx transport."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import DeliveryFailed, DeliveryRejected, ValidationError
from payflow_lab.durable import (
    Endpoint,
    HttpLimits,
    HttpTransport,
    OutboxEvent,
    ReceiverLedger,
    Routes,
    encode_body,
    event_id,
    signed_headers,
)
from payflow_lab.durable.receiver import Receiver, ReceiverServer, serve_in_thread


def payment(n: int, merchant: str = "mch_00001", cents: int = 1000) -> Payment:
    return Payment(id=f"pay_{n:012x}", merchant_id=merchant, amount_cents=cents, currency="USD", created_at=float(n))


def event(n: int, kind: str = "webhook", merchant: str = "mch_00001") -> OutboxEvent:
    p = payment(n, merchant)
    return OutboxEvent(n, event_id(p.id, kind), kind, p.id, p.merchant_id, encode_body(p, kind), float(n))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Receiver]]:
    folder = tmp_path_factory.mktemp("receivers")
    receivers = [Receiver(name, ledger=ReceiverLedger(folder / f"{name}.sqlite")) for name in ("shop", "books")]
    with serve_in_thread(receivers):
        yield {r.name: r for r in receivers}


@pytest.fixture
def shop(served: dict[str, Receiver]) -> Iterator[Receiver]:
    receiver = served["shop"]
    receiver.set_mode("up", delay=0, ack_delay=0)
    yield receiver
    receiver.set_mode("up", delay=0, ack_delay=0)


def post(
    receiver: Receiver, evt: OutboxEvent, *, secret: str | None = None, body: str | None = None, timeout: float = 5.0
) -> httpx.Response:
    content = evt.body if body is None else body
    headers = signed_headers(secret or receiver.secret, evt.event_id, time.time(), content)
    with httpx.Client(trust_env=False, timeout=timeout) as client:
        return client.post(str(receiver.url), content=content, headers=headers)


# ------------------------------------------------------------------ the receiver
def test_the_receiver_applies_an_event_once_however_often_it_is_delivered(shop: Receiver) -> None:
    before = shop.ledger.stats()
    first = post(shop, event(1, merchant="mch_00007"))
    assert first.status_code == 200 and first.json() == {"id": "evt_000000000001_webhook", "duplicate": False}
    for _ in range(3):
        again = post(shop, event(1, merchant="mch_00007"))
        assert again.status_code == 200 and again.json()["duplicate"] is True
    after = shop.ledger.stats()
    assert after["applied"] - before["applied"] == 1
    assert after["duplicates"] - before["duplicates"] == 3
    assert shop.ledger.totals()[("mch_00007", "webhook")] == (1, 1000)


def test_the_receiver_refuses_bad_signatures_and_malformed_bodies_without_applying(shop: Receiver) -> None:
    before = shop.ledger.stats()["applied"]
    assert post(shop, event(2), secret=Receiver("x").secret).status_code == 401
    with httpx.Client(trust_env=False) as client:
        unsigned = client.post(str(shop.url), content=event(2).body)
    assert unsigned.status_code == 401 and "missing header" in unsigned.json()["error"]
    assert post(shop, event(2), body='{"type": "payment.authorized"}').status_code == 400
    mismatched = event(3).body.replace('"id":"evt_000000000003_webhook"', '"id":"evt_000000000004_webhook"')
    assert post(shop, event(3), body=mismatched).status_code == 400
    assert shop.ledger.stats()["applied"] == before
    assert shop.counters["bad_signature"] >= 2 and shop.counters["malformed"] >= 2


def test_the_receiver_can_be_told_to_fail_and_to_hang_and_to_recover(shop: Receiver) -> None:
    with httpx.Client(trust_env=False) as client:
        token = {"x-payflow-control": shop.control_token}
        control = client.post(f"{shop.url}_control", json={"mode": "fail"}, headers=token)
        assert control.status_code == 200 and control.json()["mode"] == "fail"
        assert client.post(f"{shop.url}_control", json={"mode": "sideways"}, headers=token).status_code == 400
        assert client.post(f"{shop.url}_control", json={"delay": -1}, headers=token).status_code == 400
    assert post(shop, event(5)).status_code == 503
    shop.set_mode("hang")
    with pytest.raises(httpx.ReadTimeout):
        post(shop, event(5), timeout=0.3)
    shop.set_mode("up", delay=0.05)
    started = time.monotonic()
    assert post(shop, event(5)).status_code == 200
    assert time.monotonic() - started >= 0.05
    with httpx.Client(trust_env=False) as client:
        stats = client.get(f"{shop.url}_stats").json()
    assert stats["name"] == "shop" and stats["failed_on_purpose"] >= 1 and stats["hung"] >= 1
    with pytest.raises(ValidationError):
        shop.set_mode("sideways")


def test_receivers_listen_on_loopback_only() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        ReceiverServer([Receiver("x")], host="0.0.0.0")


# ------------------------------------------------------------------ the transport
def routes_for(served: dict[str, Receiver]) -> Routes:
    return Routes([served["shop"].endpoint, served["books"].endpoint], {"analytics": served["books"].endpoint})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_http_transport_delivers_signed_events(served: dict[str, Receiver], shop: Receiver, backend: str) -> None:
    routes = routes_for(served)
    base = 100 if backend == "asyncio" else 200

    async def main() -> dict[int, int]:
        async with HttpTransport(routes, limits=HttpLimits(max_connections=4, max_keepalive=2)) as transport:
            async with anyio.create_task_group() as tg:
                for n in range(base, base + 10):  # mch_00002 -> shop, mch_00003 -> books (number mod 2)
                    tg.start_soon(transport.send, event(n, merchant=f"mch_0000{2 + n % 2}"))
            await transport.send(event(base, "analytics"))
            return transport.statuses

    statuses = anyio.run(main, backend=backend)
    assert statuses == {200: 11}
    applied = {e for r in served.values() for e in r.ledger.event_ids()}
    assert {event_id(f"pay_{n:012x}", "webhook") for n in range(base, base + 10)} <= applied
    assert served["books"].ledger.has(event_id(f"pay_{base:012x}", "analytics"))


def test_the_http_transport_tells_failures_from_rejections(served: dict[str, Receiver], shop: Receiver) -> None:
    async def send(routes: Routes, evt: OutboxEvent, limits: HttpLimits | None = None) -> None:
        async with HttpTransport(routes, limits=limits) as transport:
            await transport.send(evt)

    only_shop = Routes([shop.endpoint], {})
    shop.set_mode("fail")
    with pytest.raises(DeliveryFailed, match="HTTP 503") as failed:
        anyio.run(send, only_shop, event(300))
    assert failed.value.retryable and failed.value.status == 503
    shop.set_mode("up")
    wrong_secret = Routes([Endpoint(str(shop.url), Receiver("x").secret)], {})
    with pytest.raises(DeliveryRejected, match="HTTP 401") as rejected:
        anyio.run(send, wrong_secret, event(301))
    assert not rejected.value.retryable
    with pytest.raises(DeliveryRejected, match="no endpoint"):
        anyio.run(send, only_shop, event(302, "audit"))
    shop.set_mode("hang")
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match="timeout"):
        anyio.run(send, only_shop, event(303), HttpLimits(read_timeout=0.3))
    assert time.monotonic() - started < 30  # the 0.3 s read timeout, not the hang (a loose net for busy machines)
    shop.set_mode("up")
    closed = Routes([Endpoint("http://127.0.0.1:9/", shop.secret)], {})  # nothing listens on port 9
    with pytest.raises(DeliveryFailed, match="ConnectError"):
        anyio.run(send, closed, event(304))


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_keepalive": 100}, "max_keepalive"),
        ({"read_timeout": 0}, "read_timeout"),
        ({"pool_timeout": float("inf")}, "pool_timeout"),
    ],
)
def test_http_limits_are_explicit_and_checked(limits: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HttpLimits(**limits)
    assert caught.value.field == field


def test_routes_are_checked_and_round_trip_through_json(tmp_path: Path, served: dict[str, Receiver]) -> None:
    routes = routes_for(served)
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps(routes.as_dict()))
    again = Routes.load(path)
    assert again.as_dict() == routes.as_dict()
    assert again(event(1, merchant="mch_00004")).url == served["shop"].url  # merchant number mod 2 -> 0
    assert again(event(1, merchant="mch_00003")).url == served["books"].url
    for bad, message in [
        ({"webhook": []}, "at least one"),
        ({"webhook": [{"url": "ftp://x", "secret": "whsec_AA=="}]}, "http"),
        ({"webhook": [{"url": "http://x"}]}, "exactly"),
        ({"hooks": []}, "'webhook' list"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Routes.from_dict(bad)
    path.write_text("{oops")
    with pytest.raises(ValidationError, match="not JSON"):
        Routes.load(path)
    with pytest.raises(ValidationError, match="cannot read"):
        Routes.load(tmp_path / "missing.json")
