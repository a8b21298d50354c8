"""Signed webhooks in the Standard Webhooks format, and the receiver's check.

A merchant's endpoint is a public URL: anyone can POST to it. The signature
is how the merchant knows that a ``payment.authorized`` really comes from
PayFlow and was not altered or replayed later. The Standard Webhooks
specification (used by Svix, Zapier, Supabase and others; Stripe's scheme is
the same idea) sends three headers:

``webhook-id``
    the event's stable id, which is also the receiver's idempotency key;
``webhook-timestamp``
    Unix seconds when this attempt was signed;
``webhook-signature``
    ``v1,`` + base64(HMAC-SHA256(key, ``"{id}.{timestamp}.{body}"``)). Several
    space-separated signatures may be sent (while a secret is being rotated);
    one valid ``v1`` signature is enough.

The secret is ``whsec_`` + base64 of the key bytes. Signing the id and the
timestamp with the body means that a captured request cannot be replayed with
another id (to dodge deduplication) or later than the tolerance (5 minutes by
default, in both directions, for clock skew).

:func:`verify` rejects, each with its own :class:`SignatureError` subclass:
a missing header, a timestamp that is not a number or lies outside the
tolerance, and a signature that does not match (wrong secret, tampered body,
id or timestamp). Comparisons are constant-time (:func:`hmac.compare_digest`).
``tests/test_durable_signing.py`` checks these signatures against the
``standardwebhooks`` package, an independent implementation.

Time: the timestamp is Unix time by definition of the format, so ``now`` is
passed in by the caller (the real-time transport passes its wall clock; a
test passes any number). Nothing here reads a clock by itself, except
:func:`verify`'s default, for receivers that run in real time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping

from payflow_lab.core.errors import InvalidSignature, MissingHeader, SignatureError, TimestampOutOfTolerance
from payflow_lab.core.validation import integer, number

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "InvalidSignature",
    "MissingHeader",
    "SECRET_PREFIX",
    "SignatureError",
    "TimestampOutOfTolerance",
    "WebhookSigner",
    "generate_secret",
    "sign",
    "signed_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
#: How far a timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE_S = 300.0
_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
#: A timestamp header as senders write it: Unix seconds in decimal digits, no sign, no leading zero.
_CANONICAL_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}")


def generate_secret(nbytes: int = 24) -> str:
    """A new random secret, ``whsec_`` + base64 (from :mod:`secrets`: key material, not simulation randomness)."""
    integer("nbytes", nbytes, minimum=16, maximum=64)
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        text = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
        try:
            # Unpadded base64 is accepted, as the standardwebhooks libraries accept it: pad it here.
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("secret must be 'whsec_' followed by base64") from None
    else:
        raise TypeError(f"secret must be a str or bytes, got {type(secret).__name__}")
    if not key:
        raise ValueError("secret must not be empty")
    return key


def _as_bytes(body: str | bytes) -> bytes:
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"body must be str or bytes, got {type(body).__name__}")


def _mac(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    # The timestamp is signed as the header carries it, character for character.
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _timestamp(value: float | int) -> int:
    return int(number("timestamp", value, minimum=0, unit=" (Unix seconds)"))


def sign(secret: str | bytes, msg_id: str, timestamp: float | int, body: str | bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one message."""
    if not isinstance(msg_id, str) or not msg_id:
        raise ValueError(f"msg_id must be a non-empty string, got {msg_id!r}")
    digest = _mac(_key(secret), msg_id, str(_timestamp(timestamp)), _as_bytes(body))
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str | bytes, msg_id: str, timestamp: float | int, body: str | bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(_timestamp(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str | bytes,
    body: str | bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a received webhook; return its ``webhook-id``. Raise a :class:`SignatureError` subclass if it is bad.

    ``headers`` may use any capitalisation. ``now`` is Unix seconds (default:
    this machine's clock); ``tolerance`` is in seconds.
    """
    key = _key(secret)
    lowered = {str(name).lower(): value for name, value in headers.items()}
    values = {}
    for name in _HEADERS:
        value = lowered.get(name)
        if not value:
            raise MissingHeader(f"missing header {name}")
        values[name] = value
    # Canonical Unix seconds only, as the format defines them and as every sender writes them: digits. Python's
    # float() would also take " 1e9", "1_700_000_000", "+17e8" or "nan": forms no sender emits, and an attacker's
    # room to play with the signed string.
    if not _CANONICAL_TIMESTAMP.fullmatch(values["webhook-timestamp"]):
        raise TimestampOutOfTolerance(f"webhook-timestamp is not Unix seconds: {values['webhook-timestamp']!r}")
    stamp = float(values["webhook-timestamp"])
    current = time.time() if now is None else now
    if stamp < current - tolerance:
        raise TimestampOutOfTolerance(
            f"webhook-timestamp is {current - stamp:.0f} s old "
            f"(tolerance {tolerance:g} s): a replay, or a clock far behind"
        )
    if stamp > current + tolerance:
        raise TimestampOutOfTolerance(
            f"webhook-timestamp is {stamp - current:.0f} s in the future (tolerance {tolerance:g} s)"
        )
    expected = _mac(key, values["webhook-id"], values["webhook-timestamp"], _as_bytes(body))
    for candidate in values["webhook-signature"].split(" "):
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return values["webhook-id"]
    raise InvalidSignature("no v1 signature matches: wrong secret, or the body, id or timestamp was altered")


class WebhookSigner:
    """Signs outgoing webhooks with one secret; ``clock`` gives Unix seconds for the timestamp."""

    def __init__(self, secret: str | bytes, *, clock: object = time.time) -> None:
        _key(secret)  # fail now, not at the first delivery
        if not callable(clock):
            raise ValueError(f"clock must be callable, got {clock!r}")
        self.secret = secret
        self._clock = clock

    def headers(self, msg_id: str, body: str | bytes) -> dict[str, str]:
        return signed_headers(self.secret, msg_id, self._clock(), body)
