"""Standard Webhooks signatures: ours verify with the ``standardwebhooks`` package, and every tampering is caught.

``standardwebhooks`` (the reference implementation published by the Standard
Webhooks project) checks timestamps against the real clock, so these tests
sign with the real time; our :func:`verify` is given the same ``now``.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import InvalidSignature, MissingHeader, SignatureError, TimestampOutOfTolerance
from payflow_lab.durable import WebhookSigner, encode_body, generate_secret, sign, signed_headers, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + base64.b64encode(b"another merchant's key!!").decode()
BODY = encode_body(
    Payment(id="pay_0000000000ab", merchant_id="mch_00042", amount_cents=4999, currency="USD", created_at=51_300.0),
    "webhook",
)
MSG_ID = "evt_0000000000ab_webhook"


def theirs_accepts(body: str | bytes, headers: dict[str, str], secret: str = SECRET) -> bool:
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def test_the_known_answer_of_the_specification_example() -> None:
    # The example of the Standard Webhooks specification (secret, id, timestamp, body -> signature).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_our_signatures_verify_with_the_standardwebhooks_package() -> None:
    now = time.time()
    headers = signed_headers(SECRET, MSG_ID, now, BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-timestamp"] == str(int(now))
    assert Webhook(SECRET).verify(BODY, headers)["id"] == MSG_ID
    assert verify(SECRET, BODY, headers, now=now) == MSG_ID
    signer = WebhookSigner(generate_secret(), clock=lambda: now)
    assert theirs_accepts(BODY.encode(), signer.headers(MSG_ID, BODY), secret=signer.secret)  # type: ignore[arg-type]


def test_their_signatures_verify_with_ours() -> None:
    from datetime import datetime

    now = time.time()
    stamp = datetime.fromtimestamp(int(now), tz=UTC)
    signature = Webhook(SECRET).sign(MSG_ID, stamp, BODY)
    headers = {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(int(now)), "Webhook-Signature": signature}
    assert verify(SECRET, BODY, headers, now=now) == MSG_ID  # header names in any case


def _tampered(case: str, now: float) -> tuple[str | bytes, dict[str, str], str, type[SignatureError]]:
    headers = signed_headers(SECRET, MSG_ID, now, BODY)
    body: str | bytes = BODY
    secret = SECRET
    error: type[SignatureError] = InvalidSignature
    if case == "wrong secret":
        secret = OTHER
    elif case == "tampered body":
        body = BODY.replace("4999", "9999")
    elif case == "one byte appended":
        body = BODY + " "
    elif case == "tampered id (a replay dodging deduplication)":
        headers["webhook-id"] = "evt_0000000000ac_webhook"
    elif case == "tampered timestamp":
        headers["webhook-timestamp"] = str(int(now) + 1)
    elif case == "signature of another message":
        headers["webhook-signature"] = sign(SECRET, MSG_ID, now, BODY + "x")
    elif case == "garbage signature":
        headers["webhook-signature"] = "v1,not-base64!!"
    elif case == "unknown version only":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    elif case.startswith("missing "):
        del headers[case.removeprefix("missing ")]
        error = MissingHeader
    elif case == "empty signature header":
        headers["webhook-signature"] = ""
        error = MissingHeader
    elif case == "timestamp too old":
        headers = signed_headers(SECRET, MSG_ID, now - 301, BODY)
        error = TimestampOutOfTolerance
    elif case == "timestamp from the future":
        headers = signed_headers(SECRET, MSG_ID, now + 301, BODY)
        error = TimestampOutOfTolerance
    elif case == "timestamp not a number":
        headers["webhook-timestamp"] = "yesterday"
        error = TimestampOutOfTolerance
    else:  # pragma: no cover
        raise AssertionError(case)
    return body, headers, secret, error


CASES = [
    "wrong secret",
    "tampered body",
    "one byte appended",
    "tampered id (a replay dodging deduplication)",
    "tampered timestamp",
    "signature of another message",
    "garbage signature",
    "unknown version only",
    "missing webhook-id",
    "missing webhook-timestamp",
    "missing webhook-signature",
    "empty signature header",
    "timestamp too old",
    "timestamp from the future",
    "timestamp not a number",
]


@pytest.mark.parametrize("case", CASES)
def test_every_tampering_is_rejected_by_ours_and_by_theirs(case: str) -> None:
    now = time.time()
    body, headers, secret, error = _tampered(case, now)
    with pytest.raises(error):
        verify(secret, body, headers, now=now)
    if case != "garbage signature":  # their verifier raises binascii.Error there instead of its own error
        assert not theirs_accepts(body, headers, secret)


def test_a_rotated_secret_is_accepted_while_both_signatures_are_sent() -> None:
    now = time.time()
    headers = signed_headers(OTHER, MSG_ID, now, BODY)
    headers["webhook-signature"] += " " + sign(SECRET, MSG_ID, now, BODY)
    assert verify(SECRET, BODY, headers, now=now) == MSG_ID
    assert theirs_accepts(BODY, headers)


def test_the_tolerance_is_five_minutes_either_way_by_default_and_can_be_changed() -> None:
    headers = signed_headers(SECRET, MSG_ID, 1_000_000, BODY)
    assert verify(SECRET, BODY, headers, now=1_000_000 + 300) == MSG_ID
    assert verify(SECRET, BODY, headers, now=1_000_000 - 300) == MSG_ID
    with pytest.raises(TimestampOutOfTolerance, match="old"):
        verify(SECRET, BODY, headers, now=1_000_000 + 301)
    assert verify(SECRET, BODY, headers, now=1_000_000 + 3000, tolerance=3600) == MSG_ID


@pytest.mark.parametrize(("secret", "error"), [("whsec_", ValueError), ("whsec_***", ValueError), (42, TypeError)])
def test_bad_secrets_are_refused_at_once(secret: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        WebhookSigner(secret)  # type: ignore[arg-type]
    with pytest.raises(error):
        sign(secret, MSG_ID, 1, BODY)  # type: ignore[arg-type]


def test_generated_secrets_are_distinct_and_well_formed() -> None:
    secrets = {generate_secret() for _ in range(20)}
    assert len(secrets) == 20 and all(s.startswith("whsec_") and len(base64.b64decode(s[6:])) == 24 for s in secrets)
    with pytest.raises(ValueError):
        generate_secret(4)
