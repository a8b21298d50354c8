"""Outbox events: one row per side effect of one authorized payment, with a stable id.

The id is the whole trick of at-least-once delivery. A sender that crashed
after the receiver answered but before it wrote "done" will send the same
event again; a receiver that remembers the ids it has applied will
acknowledge the repeat and do nothing. So the id must be *stable*: the same
event has the same id on every attempt, in every process, forever. Here it is
derived from what the event is (``evt_`` + the payment's 12 hex digits + the
side effect), never drawn at random, and it travels as the Standard Webhooks
``webhook-id`` header: the receiver's idempotency key.

The body is the JSON document the receiver gets, encoded once, when the
payment is recorded, and stored as text. Every attempt sends exactly those
bytes, so the signature (over the bytes) and the receiver's view of the event
never change between attempts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import MalformedPayload, ValidationError
from payflow_lab.core.world import SIDE_EFFECT_KINDS

__all__ = [
    "DURABLE_KINDS",
    "EVENT_TYPE",
    "OutboxEvent",
    "decode_body",
    "encode_body",
    "event_id",
    "endpoint_key",
]

#: The side effects the durable pipeline delivers by default: the merchant's webhook and the two
#: records a payments company must not lose (analytics for the books, audit for the regulator).
DURABLE_KINDS: tuple[str, ...] = ("webhook", "analytics", "audit")
#: The Standard Webhooks ``type`` of every event.
EVENT_TYPE = "payment.authorized"


def event_id(payment_id: str, kind: str) -> str:
    """The stable id of ``kind``'s event for ``payment_id``: ``evt_<12 hex>_<kind>``."""
    if not isinstance(payment_id, str) or not payment_id.startswith("pay_"):
        raise ValidationError("payment_id", f"must look like 'pay_' and 12 hex digits, got {payment_id!r}")
    if kind not in SIDE_EFFECT_KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(SIDE_EFFECT_KINDS)}, got {kind!r}")
    return f"evt_{payment_id[4:]}_{kind}"


def endpoint_key(kind: str, merchant_id: str) -> str:
    """Whom an event is for: the merchant (webhooks) or the internal service (analytics, audit, ...).

    Breakers, rate limits and dead letters are kept per endpoint key.
    """
    return merchant_id if kind == "webhook" else kind


def encode_body(payment: Payment, kind: str) -> str:
    """The JSON body of ``kind``'s event for ``payment`` (compact, keys sorted: the same bytes every time)."""
    document = {
        "type": EVENT_TYPE,
        "id": event_id(payment.id, kind),
        "kind": kind,
        "data": {
            "payment_id": payment.id,
            "merchant_id": payment.merchant_id,
            "amount_cents": payment.amount_cents,
            "currency": payment.currency,
            "created_at": payment.created_at,
        },
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def decode_body(body: str | bytes) -> tuple[str, str, Payment]:
    """Parse and check an event body: ``(event id, kind, payment)``; :class:`MalformedPayload` if it is wrong."""
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedPayload(f"must be a JSON object, got {type(document).__name__}")
    missing = [key for key in ("type", "id", "kind", "data") if key not in document]
    if missing:
        raise MalformedPayload(f"missing {', '.join(missing)}")
    if document["type"] != EVENT_TYPE:
        raise MalformedPayload(f"type must be {EVENT_TYPE!r}, got {document['type']!r}")
    data: Any = document["data"]
    if not isinstance(data, dict):
        raise MalformedPayload("data must be a JSON object")
    try:
        field: Callable[[str], Any] = data.get  # a missing field is None: Payment says which
        payment = Payment(
            id=field("payment_id"),
            merchant_id=field("merchant_id"),
            amount_cents=field("amount_cents"),
            currency=field("currency"),
            created_at=field("created_at"),
        )
        expected = event_id(payment.id, document["kind"])
    except ValidationError as exc:
        raise MalformedPayload(f"bad payment in data: {exc}") from None
    if document["id"] != expected:
        raise MalformedPayload(f"id {document['id']!r} does not match its payment and kind ({expected!r})")
    return expected, document["kind"], payment


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One side effect of one payment, as stored in the outbox.

    ``attempts`` counts delivery attempts over every process that tried;
    ``available_at`` is the earliest time of the next one (the outbox's clock).
    """

    seq: int
    event_id: str
    kind: str
    payment_id: str
    merchant_id: str
    body: str
    created_at: float
    status: str = "pending"
    attempts: int = 0
    available_at: float = 0.0
    last_error: str | None = None

    @property
    def key(self) -> str:
        """The endpoint key (see :func:`endpoint_key`)."""
        return endpoint_key(self.kind, self.merchant_id)

    def payment(self) -> Payment:
        """The payment the event is about, parsed from the body (:class:`MalformedPayload` if it is corrupt)."""
        return decode_body(self.body)[2]

    def body_bytes(self) -> bytes:
        return self.body.encode()
