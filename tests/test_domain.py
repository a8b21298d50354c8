"""Payments and merchants refuse bad input with an error naming the field."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payflow_lab.core.domain import (
    CURRENCIES,
    MAX_AMOUNT_CENTS,
    EndpointProfile,
    Merchant,
    MerchantDirectory,
    Payment,
    Tier,
)
from payflow_lab.core.errors import ValidationError

GOOD = dict(id="pay_0000010abcde", merchant_id="mch_00001", amount_cents=1250, currency="USD", created_at=50_400.0)


def make(**changes):
    return Payment(**{**GOOD, **changes})


def merchant(**changes):
    fields = dict(
        id="mch_00001",
        name="Acme Books",
        tier=Tier.STANDARD,
        endpoint=EndpointProfile(median_latency_s=1.0),
        webhook_rate_per_s=2.0,
        webhook_burst=5,
    )
    return Merchant(**{**fields, **changes})


def test_a_good_payment_is_accepted():
    payment = make()
    assert payment.amount_cents == 1250
    assert payment.dollars == pytest.approx(12.50)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"amount_cents": 0}, "amount_cents", "between 1 and 100,000,000, got 0"),
        ({"amount_cents": -500}, "amount_cents", "between 1 and 100,000,000, got -500"),
        ({"amount_cents": 12.5}, "amount_cents", "float"),
        ({"amount_cents": 1250.0}, "amount_cents", "float"),
        ({"amount_cents": True}, "amount_cents", "integer"),
        ({"amount_cents": "1250"}, "amount_cents", "integer"),
        ({"amount_cents": MAX_AMOUNT_CENTS + 1}, "amount_cents", "between 1 and 100,000,000, got 100,000,001"),
        ({"currency": "XYZ"}, "currency", "unknown currency"),
        ({"currency": "usd"}, "currency", "unknown currency"),
        ({"currency": None}, "currency", "unknown currency"),
        ({"id": "pay_123"}, "id", "pay_"),
        ({"id": "PAY_0000010ABCDE"}, "id", "pay_"),
        ({"id": 42}, "id", "pay_"),
        ({"merchant_id": "merchant-1"}, "merchant_id", "mch_"),
        ({"created_at": -1.0}, "created_at", "at least 0"),
        ({"created_at": math.nan}, "created_at", "finite"),
    ],
)
def test_bad_payment_fields_name_the_field(changes, field, words):
    with pytest.raises(ValidationError) as info:
        make(**changes)
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"{field}:")


def test_unknown_merchant_is_a_validation_error():
    directory = MerchantDirectory([merchant()])
    with pytest.raises(ValidationError) as info:
        directory.validate(make(merchant_id="mch_99999"))
    assert info.value.field == "merchant_id"
    assert "mch_99999" in str(info.value)
    assert directory.validate(make()).id == "mch_00001"


def test_directory_answers_membership_like_a_mapping():
    directory = MerchantDirectory([merchant()])
    assert "mch_00001" in directory and "mch_99999" not in directory and 1 not in directory
    assert directory.get("mch_99999") is None and directory.get("mch_00001").id == "mch_00001"
    with pytest.raises(ValidationError, match="merchant_id: unknown merchant"):
        directory["mch_99999"]


@pytest.mark.parametrize("bad_id", ["pay_0123456789ab\n", "pay_0123456789ab\n\n"])
def test_an_id_with_a_trailing_newline_is_malformed(bad_id):
    with pytest.raises(ValidationError) as info:
        make(id=bad_id)
    assert info.value.field == "id"
    with pytest.raises(ValidationError) as info:
        merchant(id="mch_00001\n")
    assert info.value.field == "merchant.id"


def test_directory_refuses_non_payments_and_duplicates():
    directory = MerchantDirectory([merchant()])
    with pytest.raises(ValidationError, match="must be a Payment"):
        directory.validate({"id": "pay_0000010abcde"})
    with pytest.raises(ValidationError, match="duplicate"):
        MerchantDirectory([merchant(), merchant()])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "m1"}, "merchant.id"),
        ({"name": "  "}, "merchant.name"),
        ({"tier": "gold"}, "merchant.tier"),
        ({"webhook_rate_per_s": 0}, "merchant.webhook_rate_per_s"),
        ({"webhook_rate_per_s": -1.0}, "merchant.webhook_rate_per_s"),
        ({"webhook_burst": 0}, "merchant.webhook_burst"),
        ({"webhook_burst": 2.5}, "merchant.webhook_burst"),
        ({"endpoint": "fast"}, "merchant.endpoint"),
    ],
)
def test_bad_merchant_fields_name_the_field(changes, field):
    with pytest.raises(ValidationError) as info:
        merchant(**changes)
    assert info.value.field == field


def test_tier_given_as_text_becomes_a_tier():
    assert merchant(tier="enterprise").tier is Tier.ENTERPRISE


@pytest.mark.parametrize(("field", "value"), [("median_latency_s", 0.0), ("sigma", -0.1), ("error_rate", 1.5)])
def test_bad_endpoint_profile(field, value):
    with pytest.raises(ValidationError) as info:
        EndpointProfile(**{"median_latency_s": 1.0, field: value})
    assert info.value.field == f"endpoint.{field}"


@given(st.integers(min_value=1, max_value=MAX_AMOUNT_CENTS), st.sampled_from(sorted(CURRENCIES)))
def test_every_positive_integer_amount_in_range_is_valid(cents, currency):
    assert make(amount_cents=cents, currency=currency).amount_cents == cents


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_no_float_is_ever_accepted_as_cents(value):
    with pytest.raises(ValidationError) as info:
        make(amount_cents=value)
    assert info.value.field == "amount_cents"


def test_payments_are_immutable():
    payment = make()
    with pytest.raises(AttributeError):
        payment.amount_cents = 1  # type: ignore[misc]
