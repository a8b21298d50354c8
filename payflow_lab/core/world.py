"""The simulated PayFlow world: merchants, downstream services, the database pool and the faults.

Everything a phase talks to lives here, and every random draw comes from the
world's one seed. Customers (who arrives when, paying what) come from one
seeded :class:`random.Random`, drawn in arrival order. A service call's dice
are named by the call (:meth:`World.dice`: the payment, the service, and how
many times that payment has called it), so the same call gets the same
numbers whichever task the scheduler happens to run first, on asyncio and
trio alike. The services only *take time*
(``anyio.sleep``) and sometimes fail; they never look at a wall clock, so the
same world runs in virtual time (tests, CLI, notebook summaries), paced (live
notebooks) or in real time.

The services, with their calibration in :mod:`payflow_lab.core.calibration`:

=====================  =========================================================
``authorize``          the payment gateway (~150 ms); a small share is declined
``db_query``           one fast query on a connection the caller already holds
``deliver_webhook``    POST to the merchant's endpoint; may be slow, fail,
                       refuse the connection, or hang (see :mod:`.faults`)
``write_analytics``    a ~2 s database write: borrows its own pool connection
``write_audit_log``    a ~1 s database write: borrows its own pool connection
``update_risk_score``  a ~3 s call to the risk service
``notify_fraud``       a ~2 s call to the fraud API
=====================  =========================================================
"""

from __future__ import annotations

import bisect
import math
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from payflow_lab.core import calibration as cal
from payflow_lab.core.db import ConnectionPool
from payflow_lab.core.dice import Dice
from payflow_lab.core.domain import CURRENCIES, EndpointProfile, Merchant, MerchantDirectory, Payment, Tier
from payflow_lab.core.errors import Declined, EndpointError, ValidationError
from payflow_lab.core.faults import EndpointMode, FaultPlan
from payflow_lab.core.recorder import Recorder
from payflow_lab.core.validation import integer, number

__all__ = ["Declined", "EndpointError", "SCALE_LIMITS", "SIDE_EFFECT_KINDS", "World"]

#: The five side effects of the original code, in the order it awaited them.
SIDE_EFFECT_KINDS = ("webhook", "analytics", "audit", "risk", "fraud")

#: The scale knob's bounds: 0.002 keeps at least a handful of merchants; 2 is twice PayFlow.
SCALE_LIMITS = (0.002, 2.0)

_NAMES_A = (
    "Acme",
    "Blue",
    "Cedar",
    "Delta",
    "Ember",
    "Fjord",
    "Golden",
    "Harbor",
    "Iris",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "North",
    "Orbit",
    "Pine",
    "Quartz",
    "River",
    "Summit",
    "Tidal",
    "Umber",
    "Vista",
    "Willow",
    "Yonder",
    "Zephyr",
)
_NAMES_B = (
    "Outfitters",
    "Books",
    "Coffee",
    "Electronics",
    "Games",
    "Home",
    "Kitchen",
    "Labs",
    "Market",
    "Apparel",
    "Pets",
    "Records",
    "Sports",
    "Supply",
    "Travel",
    "Toys",
    "Goods",
    "Studio",
)

#: Currencies PayFlow's traffic arrives in, with their shares.
_CURRENCY_MIX = (("USD", 0.86), ("EUR", 0.05), ("GBP", 0.03), ("CAD", 0.03), ("AUD", 0.02), ("CHF", 0.01))


def _lognormal(rng: random.Random | Dice, dist: cal.Distribution) -> float:
    return rng.lognormvariate(dist.mu, dist.sigma)


def merchant_count(scale: float) -> int:
    """How many merchants a world of ``scale`` has (``mch_00001`` to ``mch_<count>``), without building it."""
    return sum(
        max(1, round(cal.MERCHANTS * scale * cal.TIERS[tier].merchant_share))
        for tier in (Tier.ENTERPRISE, Tier.PREMIUM, Tier.STANDARD)
    )


class World:
    """Merchants, services, the DB pool and the fault plan of one run.

    ``clock`` returns story time (seconds since midnight); ``scale`` shrinks
    merchants, traffic and the pool together. ``recorder`` receives the
    authorizations the gateway makes (so that a payment whose request later
    dies is known to be *stuck*, not merely failed). ``sleep`` is how a
    service waits out its latency (``anyio.sleep`` by default); the runner
    passes its loop's own, asked for once.
    """

    def __init__(
        self,
        *,
        seed: int,
        scale: float,
        clock: Callable[[], float],
        recorder: Recorder,
        faults: FaultPlan | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
    ) -> None:
        integer("seed", seed, minimum=0)
        number("scale", scale, minimum=SCALE_LIMITS[0], maximum=SCALE_LIMITS[1])
        self.seed = seed
        self.scale = float(scale)
        # One seed, owned by the world, split into independent named streams: the merchants, the
        # customers (who arrives when, paying what, and what the card network will answer) and the
        # service calls (how long each takes, whether it fails: see dice()). Every phase meets the
        # same merchants and the same customers at the same moments, whatever it does with them.
        self.traffic_rng = random.Random(f"payflow:{seed}:customers")
        self._merchant_rng = random.Random(f"payflow:{seed}:merchants")
        #: A sequence for code outside the phases that draws in one task's order (the durable
        #: pipeline's real-time traffic, say). Concurrent calls use :meth:`dice` instead.
        self.rng = random.Random(f"payflow:{seed}:services")
        self._dice_prefix = f"payflow:{seed}:".encode()
        self._calls: weakref.WeakKeyDictionary[Payment, dict[str, int]] = weakref.WeakKeyDictionary()
        self._card_fates: dict[str, tuple[float, bool]] = {}
        self.clock = clock
        #: How a service waits out its latency: ``anyio.sleep`` unless the runner hands over its
        #: loop's own (:func:`~payflow_lab.core.vtime.sleep_of_running_loop`, the same sleep, asked for once).
        self.sleep = sleep if sleep is not None else anyio.sleep
        self.recorder = recorder
        self.faults = faults or FaultPlan()
        self.merchants = MerchantDirectory(self._make_merchants())
        self._merchant_list = list(self.merchants.values())
        weights = self._volume_weights()
        total = sum(weights)
        acc = 0.0
        self._cumulative: list[float] = []
        for w in weights:
            acc += w / total
            self._cumulative.append(acc)
        self._currency_names = [c for c, _ in _CURRENCY_MIX]
        self._currency_cum = []
        acc = 0.0
        for _, share in _CURRENCY_MIX:
            acc += share
            self._currency_cum.append(acc)
        self.pool = ConnectionPool(
            max(1, round(cal.DB_POOL_SIZE * self.scale)), cal.DB_CHECKOUT_TIMEOUT_S, on_exhausted=self._pool_exhausted
        )
        self._payment_serial = 0
        self.base_rate = self._base_rate() * self.scale

    # ------------------------------------------------------------ merchants
    def _make_merchants(self) -> list[Merchant]:
        merchants: list[Merchant] = []
        serial = 0
        # Enterprise first, so that mch_00001 is PayFlow's biggest merchant at every scale.
        for tier in (Tier.ENTERPRISE, Tier.PREMIUM, Tier.STANDARD):
            profile = cal.TIERS[tier]
            count = max(1, round(cal.MERCHANTS * self.scale * profile.merchant_share))
            for _ in range(count):
                serial += 1
                rng = self._merchant_rng
                median = profile.endpoint.median * rng.lognormvariate(0.0, profile.merchant_spread)
                name = f"{rng.choice(_NAMES_A)} {rng.choice(_NAMES_B)}"
                merchants.append(
                    Merchant(
                        id=f"mch_{serial:05d}",
                        name=name,
                        tier=tier,
                        endpoint=EndpointProfile(
                            median_latency_s=median,
                            sigma=profile.endpoint.sigma,
                            error_rate=profile.endpoint_error_rate,
                        ),
                        webhook_rate_per_s=profile.webhook_rate_per_s,
                        webhook_burst=profile.webhook_burst,
                    )
                )
        return merchants

    def _volume_weights(self) -> list[float]:
        """Each tier gets its share of volume, spread over its merchants by a Zipf-like law."""
        by_tier: dict[Tier, list[Merchant]] = {tier: [] for tier in Tier}
        for merchant in self._merchant_list:
            by_tier[merchant.tier].append(merchant)
        weight: dict[str, float] = {}
        for tier, members in by_tier.items():
            raw = [1.0 / (rank + 1) ** 0.8 for rank in range(len(members))]
            total = sum(raw)
            for merchant, r in zip(members, raw):
                weight[merchant.id] = cal.TIERS[tier].volume_share * r / total
        return [weight[m.id] for m in self._merchant_list]

    def busiest(self, tier: Tier) -> Merchant:
        """The merchant of ``tier`` that receives the most payments."""
        return next(m for m in self._merchant_list if m.tier is tier)

    def merchants_of(self, tier: Tier) -> list[Merchant]:
        return [m for m in self._merchant_list if m.tier is tier]

    @staticmethod
    def _base_rate() -> float:
        """Payments per second, averaged over the day, at scale 1 ($10M / mean ticket / 86,400 s)."""
        mean_ticket = sum(
            p.volume_share * p.ticket.median * math.exp(p.ticket.sigma**2 / 2) for p in cal.TIERS.values()
        )
        return cal.DAILY_VOLUME_USD / mean_ticket / 86_400.0

    # ------------------------------------------------------------- payments
    def new_payment(self) -> Payment:
        """Draw the next customer payment: a merchant by volume, an amount by tier, a currency.

        The card network's answer (how long it takes, approve or decline) is drawn now too, from
        the customers' stream: it belongs to the card, not to the moment a phase gets round to asking.
        """
        rng = self.traffic_rng
        merchant = self._merchant_list[bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1])]
        dollars = _lognormal(rng, cal.TIERS[merchant.tier].ticket)
        currency = self._currency_names[bisect.bisect_left(self._currency_cum, rng.random() * self._currency_cum[-1])]
        cents = max(50, min(int(dollars / CURRENCIES[currency] * 100), 100_000_000))
        self._payment_serial += 1
        payment = Payment(
            id=f"pay_{self._payment_serial:06x}{rng.getrandbits(24):06x}",
            merchant_id=merchant.id,
            amount_cents=cents,
            currency=currency,
            created_at=round(self.clock(), 6),
        )
        self._card_fates[payment.id] = (_lognormal(rng, cal.AUTHORIZATION), rng.random() < cal.DECLINE_RATE)
        return payment

    # ------------------------------------------------------------- services
    def dice(self, payment: Payment, purpose: str, attempt: int | None = None) -> Dice:
        """The dice for ``payment``'s next call of ``purpose`` (a service name, "retry-jitter", ...).

        The n-th call of one purpose for one payment always gets the same
        numbers, whichever order concurrent tasks run in: that is what makes a
        seed tell the same story on asyncio and trio. The world counts the
        calls per payment object (a small dict while the object lives, no
        longer); a caller that keeps its own count, across processes even (the
        outbox does), passes ``attempt`` instead.
        """
        if attempt is None:
            calls = self._calls.get(payment)
            if calls is None:
                calls = self._calls[payment] = {}
            n = calls.get(purpose, 0) + 1
            calls[purpose] = n
        else:
            n = integer("attempt", attempt, minimum=1)
        return Dice(self._dice_prefix + f"{purpose}:{payment.id}:{n}".encode())

    async def authorize(self, payment: Payment) -> None:
        """Ask the gateway to authorize ``payment``; raise :class:`Declined` if the card is declined."""
        fate = self._card_fates.pop(payment.id, None)
        if fate is None:  # a payment from outside the traffic generator
            dice = self.dice(payment, "authorize")
            fate = (_lognormal(dice, cal.AUTHORIZATION), dice.random() < cal.DECLINE_RATE)
        latency, declined = fate
        await self.sleep(latency)
        if declined:
            raise Declined("card declined by the network")
        self.recorder.payment_authorized(payment, latency)

    async def db_query(self, payment: Payment) -> None:
        """One fast query about ``payment`` on a connection the caller holds."""
        await self.sleep(_lognormal(self.dice(payment, "db_query"), cal.DB_QUERY))

    async def deliver_webhook(self, payment: Payment, *, attempt: int | None = None) -> None:
        """POST ``payment.authorized`` to the payment's merchant. Slow, failing or hanging as the fault plan says.

        Raises :class:`EndpointError` on a 5xx or a refused connection. A
        hanging endpoint never returns: only the caller's timeout (a cancel
        scope) ends the call. ``attempt``: see :meth:`dice` (every service takes it).
        """
        merchant = self.merchants[payment.merchant_id]
        faults = self.faults
        mode, extra_error = faults.endpoint_mode(merchant.id, merchant.tier)
        dice = self.dice(payment, "webhook", attempt)
        if mode is EndpointMode.DOWN:
            await self.sleep(0.005 + 0.01 * dice.random())
            raise EndpointError("connection refused")
        if mode is EndpointMode.HANG or (faults.webhook_hang_rate and dice.random() < faults.webhook_hang_rate):
            del dice  # a hung call lives long: keep nothing it does not need
            await anyio.sleep_forever()
        profile = merchant.endpoint
        latency = dice.lognormvariate(math.log(profile.median_latency_s), profile.sigma)
        latency *= faults.webhook_latency_multiplier
        failed = dice.random() < max(profile.error_rate, extra_error)
        del dice
        await self.sleep(latency)
        if failed:
            raise EndpointError("HTTP 503 from merchant endpoint")

    async def _db_write(self, payment: Payment, kind: str, checkout_timeout: float | None, attempt: int | None) -> None:
        duration = _lognormal(self.dice(payment, kind, attempt), cal.SIDE_EFFECTS[kind])
        async with self.pool.connection(checkout_timeout):
            await self.sleep(duration)

    async def write_analytics(
        self, payment: Payment, *, checkout_timeout: float | None = None, attempt: int | None = None
    ) -> None:
        """Write the analytics row (~2 s). A database write: needs its own connection.

        ``checkout_timeout`` bounds the wait for that connection (``None``: wait for ever).
        """
        await self._db_write(payment, "analytics", checkout_timeout, attempt)

    async def write_audit_log(
        self, payment: Payment, *, checkout_timeout: float | None = None, attempt: int | None = None
    ) -> None:
        """Append to the audit log (~1 s). A database write: needs its own connection (see :meth:`write_analytics`)."""
        await self._db_write(payment, "audit", checkout_timeout, attempt)

    async def update_risk_score(self, payment: Payment, *, attempt: int | None = None) -> None:
        """Recalculate the merchant's risk score (~3 s)."""
        await self.sleep(_lognormal(self.dice(payment, "risk", attempt), cal.SIDE_EFFECTS["risk"]))

    async def notify_fraud(self, payment: Payment, *, attempt: int | None = None) -> None:
        """Tell the fraud system about the payment (~2 s)."""
        await self.sleep(_lognormal(self.dice(payment, "fraud", attempt), cal.SIDE_EFFECTS["fraud"]))

    def service(self, kind: str) -> Callable[..., Awaitable[None]]:
        """The service behind side effect ``kind`` (one of :data:`SIDE_EFFECT_KINDS`)."""
        services = {
            "webhook": self.deliver_webhook,
            "analytics": self.write_analytics,
            "audit": self.write_audit_log,
            "risk": self.update_risk_score,
            "fraud": self.notify_fraud,
        }
        try:
            return services[kind]
        except KeyError:
            known = ", ".join(services)
            raise ValidationError("side_effect", f"unknown side effect {kind!r}; known: {known}") from None

    # ------------------------------------------------------------ internals
    def _pool_exhausted(self) -> None:
        self.recorder.mark_once(
            "pool_exhausted", f"database connection pool exhausted: all {self.pool.size} connections busy"
        )
