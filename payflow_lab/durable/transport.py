"""How an event reaches its receiver: one small interface, a simulated and a real implementation.

The delivery code (:mod:`.delivery`: breaker, rate limit, timeout, retries)
does not know whether it talks to a simulated merchant or a real one. It calls
``await transport.send(event)``, which returns when the receiver has
acknowledged the event and raises :class:`DeliveryFailed` (worth retrying) or
:class:`DeliveryRejected` (not) when it has not.
Two transports implement that:

:class:`SimulatedTransport`
    the simulated world's services (``world.deliver_webhook``,
    ``write_analytics``, ``write_audit_log``, ...): virtual time, the fault
    plan's slow, failing and hanging endpoints, and a
    :class:`~.ledger.ReceiverLedger` standing in for the receivers' own
    deduplication.
:class:`HttpTransport`
    a real ``POST`` with httpx (which runs on anyio, so on asyncio and trio)
    to a real receiver (:mod:`.receiver`), signed in the Standard Webhooks
    format (:mod:`.signing`). Its connection limits and timeouts are set
    explicitly, never left to library defaults: a webhook sender with an
    unbounded pool, or no read timeout, is the Phase 2 leak again.

Only the transport and the clock differ between the two; everything above
``send`` is the same code.

How an HTTP answer is read: 2xx is delivered; 408, 425, 429 and 5xx are
worth retrying (the endpoint is busy or broken for now); any other 4xx is
not (a bad signature, an unknown route, "gone"): retrying would only repeat
the refusal, so the event goes to the dead letters at once. Connection errors
and timeouts are worth retrying.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio

from payflow_lab.core.calibration import DB_WRITES, WEBHOOK_TIMEOUT_S
from payflow_lab.core.errors import (
    DeliveryError,
    DeliveryFailed,
    DeliveryRejected,
    EndpointError,
    PoolTimeout,
    ValidationError,
)
from payflow_lab.core.validation import integer, number
from payflow_lab.core.world import SIDE_EFFECT_KINDS, World
from payflow_lab.durable.events import OutboxEvent
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.signing import WebhookSigner

__all__ = [
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryRejected",
    "RETRY_ON",
    "Endpoint",
    "HttpLimits",
    "HttpTransport",
    "Routes",
    "SimulatedTransport",
    "Transport",
]


#: What the delivery code's retry policy retries: failures, never rejections (nor breaker refusals).
RETRY_ON: tuple[type[Exception], ...] = (DeliveryFailed, TimeoutError)


@runtime_checkable
class Transport(Protocol):
    """Sends one event; returns once the receiver acknowledged it, raises a :class:`DeliveryError` otherwise."""

    async def send(self, event: OutboxEvent) -> None: ...


# ---------------------------------------------------------------------------------- simulated
class SimulatedTransport:
    """Delivery through the simulated world's services, deduplicated by a ledger (see the module docstring).

    ``checkout_timeout`` bounds the wait for a pool connection of the
    database writes (analytics, audit), as in Phase 4.
    """

    def __init__(
        self,
        world: World,
        *,
        ledger: ReceiverLedger | None = None,
        checkout_timeout: float = 1.0,
        ack_latency: float = 0.0,
    ) -> None:
        if not isinstance(world, World):
            raise ValidationError("world", f"must be a World, got {type(world).__name__}")
        number("ack_latency", ack_latency, minimum=0, maximum=60, unit=" seconds")
        self.world = world
        self.ledger = ledger if ledger is not None else ReceiverLedger()
        self.checkout_timeout = checkout_timeout
        self.ack_latency = float(ack_latency)
        self._services = {kind: world.service(kind) for kind in SIDE_EFFECT_KINDS}
        # The attempt each event's last send was (the outbox's count covers earlier processes; retries within
        # one delivery count here), so that every try draws new dice, a replay after a restart included.
        self._last_attempt: dict[str, int] = {}

    async def send(self, event: OutboxEvent) -> None:
        payment = event.payment()
        service = self._services[event.kind]
        attempt = max(event.attempts, self._last_attempt.get(event.event_id, 0)) + 1
        self._last_attempt[event.event_id] = attempt
        try:
            if event.kind in DB_WRITES:
                await service(payment, checkout_timeout=self.checkout_timeout, attempt=attempt)
            else:
                await service(payment, attempt=attempt)
        except EndpointError as exc:
            raise DeliveryFailed(str(exc), status=503) from exc
        except PoolTimeout as exc:
            raise DeliveryFailed(str(exc)) from exc
        # The receiver applies it (once, however many times it is delivered), then its answer travels back:
        # a sender that dies during ``ack_latency`` has delivered without knowing it.
        self._last_attempt.pop(event.event_id, None)
        self.ledger.apply(event.event_id, event.kind, payment, at=self.world.clock())
        if self.ack_latency:
            await anyio.sleep(self.ack_latency)


# --------------------------------------------------------------------------------------- HTTP
@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one receiver listens, and the secret it shares with PayFlow."""

    url: str
    secret: str

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValidationError("endpoint.url", f"must be an http(s) URL, got {self.url!r}")
        try:
            WebhookSigner(self.secret)  # a bad secret fails here, not at the first delivery
        except (TypeError, ValueError) as exc:
            raise ValidationError("endpoint.secret", f"{exc} (for {self.url})") from None


class Routes:
    """Which receiver gets which event: merchants' webhooks spread over ``webhook`` endpoints, one per service.

    A merchant's webhooks always go to the same endpoint: number ``n`` of
    ``mch_0000n`` modulo the number of webhook endpoints.
    """

    def __init__(self, webhook: list[Endpoint], services: Mapping[str, Endpoint]) -> None:
        if not webhook:
            raise ValidationError("webhook", "needs at least one endpoint")
        for kind in services:
            if kind not in SIDE_EFFECT_KINDS or kind == "webhook":
                raise ValidationError("services", f"unknown service {kind!r}")
        self.webhook = list(webhook)
        self.services = dict(services)

    def __call__(self, event: OutboxEvent) -> Endpoint:
        if event.kind == "webhook":
            return self.webhook[int(event.merchant_id[4:]) % len(self.webhook)]
        try:
            return self.services[event.kind]
        except KeyError:
            raise DeliveryRejected(f"no endpoint configured for {event.kind!r} events") from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "webhook": [{"url": e.url, "secret": e.secret} for e in self.webhook],
            **{kind: {"url": e.url, "secret": e.secret} for kind, e in self.services.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Routes:
        """From ``{"webhook": [{"url", "secret"}, ...], "analytics": {...}, "audit": {...}}``."""
        if not isinstance(data, dict) or not isinstance(data.get("webhook"), list):
            raise ValidationError("endpoints", "must be an object with a 'webhook' list of {url, secret}")
        entries = [(f"webhook[{i}]", item) for i, item in enumerate(data["webhook"])]
        entries += [(kind, item) for kind, item in data.items() if kind != "webhook"]
        built: dict[str, Endpoint] = {}
        for where, item in entries:
            if not isinstance(item, dict) or set(item) != {"url", "secret"}:
                raise ValidationError("endpoints", f"{where} needs exactly 'url' and 'secret', got {item!r}")
            try:
                built[where] = Endpoint(**item)
            except ValidationError as exc:
                raise ValidationError("endpoints", f"{where}: {exc}") from None
        webhook = [built[where] for where, _ in entries if where.startswith("webhook[")]
        services = {where: endpoint for where, endpoint in built.items() if not where.startswith("webhook[")}
        try:
            return cls(webhook, services)
        except ValidationError as exc:
            raise ValidationError("endpoints", str(exc)) from None

    @classmethod
    def load(cls, path: str | Path) -> Routes:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ValidationError("endpoints", f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValidationError("endpoints", f"{path} is not JSON: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The HTTP client's limits, all explicit.

    ``max_connections`` bounds the sockets open at once (a hanging endpoint
    can hold at most that many); ``read_timeout`` defaults to the story's 5 s
    webhook timeout (the delivery code's own ``fail_after`` is the first line,
    this is the second); ``pool_timeout`` bounds the wait for a free
    connection when all are busy.
    """

    max_connections: int = 64
    max_keepalive: int = 32
    keepalive_expiry: float = 5.0
    connect_timeout: float = 2.0
    read_timeout: float = WEBHOOK_TIMEOUT_S
    write_timeout: float = 2.0
    pool_timeout: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_keepalive"):
            integer(name, getattr(self, name), minimum=1, maximum=10_000)
        if self.max_keepalive > self.max_connections:
            raise ValidationError("max_keepalive", "cannot exceed max_connections")
        for name in ("keepalive_expiry", "connect_timeout", "read_timeout", "write_timeout", "pool_timeout"):
            number(name, getattr(self, name), above=0, maximum=3600, unit=" seconds")

    @classmethod
    def for_workers(cls, workers: int, timeout: float) -> HttpLimits:
        """Limits for ``workers`` concurrent deliveries of at most ``timeout`` seconds each, on loopback.

        Four sockets per worker (a hanging receiver holds some while others
        are opened), half of them kept alive; reads may take the delivery's
        timeout and a little more (the delivery's own deadline comes first);
        connecting, writing and waiting for a free socket take a second at most.
        """
        return cls(
            max_connections=4 * workers,
            max_keepalive=2 * workers,
            read_timeout=timeout + 0.5,
            connect_timeout=1.0,
            write_timeout=1.0,
            pool_timeout=1.0,
        )


class HttpTransport:
    """Signed ``POST`` of each event's body to the receiver ``routes`` picks. Use as ``async with``.

    ``clock`` gives the Unix time stamped into each signature (the real clock:
    a receiver checks it against its own).
    """

    def __init__(
        self,
        routes: Routes | Callable[[OutboxEvent], Endpoint],
        *,
        limits: HttpLimits | None = None,
        clock: Callable[[], float] = time.time,
        user_agent: str = "payflow-lab-webhooks/1",
    ) -> None:
        if not callable(routes):
            raise ValidationError("routes", f"must be a Routes or a function of an event, got {routes!r}")
        self.routes = routes
        self.limits = limits if limits is not None else HttpLimits()
        self.clock = clock
        self.user_agent = user_agent
        self._client: Any = None
        self._signers: dict[str, WebhookSigner] = {}
        #: Responses by HTTP status, and transport errors by type.
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}

    async def __aenter__(self) -> HttpTransport:
        import httpx

        limits = self.limits
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive,
                keepalive_expiry=limits.keepalive_expiry,
            ),
            timeout=httpx.Timeout(
                connect=limits.connect_timeout,
                read=limits.read_timeout,
                write=limits.write_timeout,
                pool=limits.pool_timeout,
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment between us and 127.0.0.1
            headers={"user-agent": self.user_agent, "content-type": "application/json"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _signer(self, endpoint: Endpoint) -> WebhookSigner:
        signer = self._signers.get(endpoint.secret)
        if signer is None:
            signer = self._signers[endpoint.secret] = WebhookSigner(endpoint.secret, clock=self.clock)
        return signer

    async def send(self, event: OutboxEvent) -> None:
        import httpx

        if self._client is None:
            raise RuntimeError("HttpTransport is not open: use `async with HttpTransport(...)`")
        endpoint = self.routes(event)
        body = event.body_bytes()
        headers = self._signer(endpoint).headers(event.event_id, body)
        try:
            response = await self._client.post(endpoint.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            raise DeliveryFailed(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            return
        if status >= 500 or status in (408, 425, 429):
            raise DeliveryFailed(f"HTTP {status} from {endpoint.url}", status=status)
        raise DeliveryRejected(f"HTTP {status} from {endpoint.url}", status=status)
