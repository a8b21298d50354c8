"""Payments, merchants and their validation.

These are the nouns of the PayFlow story. They are plain frozen dataclasses so
that a payment can travel through queues, streams and hooks without anyone
mutating it on the way. Every constructor validates its fields and raises
:class:`ValidationError` naming the field that is wrong, *before* anything is
recorded anywhere: a bad payment never becomes half a payment.

Amounts are integer minor units ("cents") because floating-point money is the
first bug every payments team ships; passing ``12.5`` is refused, not rounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from payflow_lab.core.enums import TextEnum
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import integer, number

__all__ = [
    "CURRENCIES",
    "EndpointProfile",
    "Merchant",
    "MerchantDirectory",
    "Payment",
    "Tier",
    "ValidationError",
    "to_usd",
]

#: ISO 4217 codes PayFlow accepts, with an illustrative fixed rate to US dollars
#: (used only to add up "dollars stuck"; the simulation does no FX).
CURRENCIES: Mapping[str, float] = {
    "USD": 1.0,
    "EUR": 1.08,
    "GBP": 1.27,
    "CAD": 0.73,
    "AUD": 0.66,
    "CHF": 1.13,
    "SEK": 0.095,
    "NZD": 0.60,
    "SGD": 0.74,
    "MXN": 0.058,
}

PAYMENT_ID = re.compile(r"^pay_[0-9a-f]{12}$")
MERCHANT_ID = re.compile(r"^mch_[0-9]{5}$")

#: The largest single payment PayFlow accepts: $1M. Larger amounts are
#: almost certainly a units mistake (dollars sent as cents, or worse).
MAX_AMOUNT_CENTS = 100_000_000


class Tier(TextEnum):
    """Merchant tiers. Enterprise merchants get dedicated webhook workers in Phase 5."""

    STANDARD = "standard"
    PREMIUM = "premium"
    ENTERPRISE = "enterprise"


@dataclass(frozen=True, slots=True)
class EndpointProfile:
    """How a merchant's webhook endpoint behaves on a healthy day.

    ``median_latency_s`` and ``sigma`` describe a log-normal response time;
    ``error_rate`` is the share of calls answered with a 5xx.
    """

    median_latency_s: float
    sigma: float = 0.15
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        number("endpoint.median_latency_s", self.median_latency_s, above=0.0, maximum=3600.0)
        number("endpoint.sigma", self.sigma, minimum=0.0, maximum=3.0)
        number("endpoint.error_rate", self.error_rate, minimum=0.0, maximum=1.0)


@dataclass(frozen=True, slots=True)
class Merchant:
    """A PayFlow merchant: who gets the webhooks, and how fast they may get them."""

    id: str
    name: str
    tier: Tier
    endpoint: EndpointProfile
    webhook_rate_per_s: float
    webhook_burst: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not MERCHANT_ID.fullmatch(self.id):
            raise ValidationError("merchant.id", f"must look like 'mch_00042', got {self.id!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValidationError("merchant.name", f"must be a non-empty string, got {self.name!r}")
        try:
            tier = Tier(self.tier)
        except ValueError:
            allowed = ", ".join(t.value for t in Tier)
            raise ValidationError("merchant.tier", f"must be one of {allowed}, got {self.tier!r}") from None
        object.__setattr__(self, "tier", tier)
        if not isinstance(self.endpoint, EndpointProfile):
            raise ValidationError("merchant.endpoint", "must be an EndpointProfile")
        number("merchant.webhook_rate_per_s", self.webhook_rate_per_s, above=0.0, maximum=100_000.0)
        integer("merchant.webhook_burst", self.webhook_burst, minimum=1, maximum=1_000_000)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Payment:
    """One card payment, as PayFlow receives it.

    ``created_at`` is story time in seconds since midnight of the simulated
    day; ``amount_cents`` is in the currency's minor unit.
    """

    id: str
    merchant_id: str
    amount_cents: int
    currency: str
    created_at: float

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not PAYMENT_ID.fullmatch(self.id):
            raise ValidationError("id", f"must look like 'pay_' and 12 hex digits, got {self.id!r}")
        if not isinstance(self.merchant_id, str) or not MERCHANT_ID.fullmatch(self.merchant_id):
            raise ValidationError("merchant_id", f"must look like 'mch_00042', got {self.merchant_id!r}")
        if isinstance(self.amount_cents, float):
            raise ValidationError(
                "amount_cents",
                f"must be an integer number of cents, got the float {self.amount_cents!r} (send 1250 for $12.50)",
            )
        integer("amount_cents", self.amount_cents, minimum=1, maximum=MAX_AMOUNT_CENTS)
        if not isinstance(self.currency, str) or self.currency not in CURRENCIES:
            allowed = ", ".join(sorted(CURRENCIES))
            raise ValidationError("currency", f"unknown currency {self.currency!r}; PayFlow accepts {allowed}")
        number("created_at", self.created_at, minimum=0.0)

    @property
    def dollars(self) -> float:
        """The amount in US dollars at the fixed illustrative rate."""
        return to_usd(self.amount_cents, self.currency)


def to_usd(amount_cents: int, currency: str) -> float:
    """Convert minor units of ``currency`` to US dollars (fixed, illustrative rates)."""
    return amount_cents / 100.0 * CURRENCIES[currency]


class MerchantDirectory(Mapping[str, Merchant]):
    """The merchants PayFlow knows, by id.

    ``directory[id]`` with an unknown id is a validation error naming
    ``merchant_id``; ``id in directory`` and ``directory.get(id)`` answer
    ``False`` and ``None`` like any mapping.
    """

    def __init__(self, merchants: Iterable[Merchant]) -> None:
        self._by_id: dict[str, Merchant] = {}
        for merchant in merchants:
            if merchant.id in self._by_id:
                raise ValidationError("merchant.id", f"duplicate merchant id {merchant.id!r}")
            self._by_id[merchant.id] = merchant

    def __getitem__(self, merchant_id: str) -> Merchant:
        try:
            return self._by_id[merchant_id]
        except KeyError:
            raise ValidationError("merchant_id", f"unknown merchant {merchant_id!r}") from None

    def __contains__(self, merchant_id: object) -> bool:
        return merchant_id in self._by_id

    def get(self, merchant_id: str, default: Any = None) -> Any:
        return self._by_id.get(merchant_id, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def validate(self, payment: Payment) -> Merchant:
        """Check that ``payment`` is a :class:`Payment` for a known merchant; return the merchant."""
        if not isinstance(payment, Payment):
            raise ValidationError("payment", f"must be a Payment, got {type(payment).__name__}")
        return self[payment.merchant_id]
