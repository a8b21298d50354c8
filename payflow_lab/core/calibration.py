"""The numbers of the PayFlow world, and where each one comes from.

The story gives a handful of facts; everything else here is a modelling choice
made so that those facts come out of the simulation rather than being typed
into it. Change a number here and every phase, scenario, test and lesson moves
with it (the notebooks' checked outputs will tell you).

From the story
==============

====================================  ==========================================
fact                                  where it is used
====================================  ==========================================
$10M a day, 5,000 merchants           :data:`DAILY_VOLUME_USD`, :data:`MERCHANTS`
Black Friday: volume x10              scenarios (traffic multiplier)
webhook: 5 s timeout                  :data:`WEBHOOK_TIMEOUT_S`
analytics write 2 s, audit write 1 s  :data:`SIDE_EFFECTS`
risk score 3 s, fraud API 2 s         :data:`SIDE_EFFECTS`
authorization ~150 ms                 :data:`AUTHORIZATION`
synchronous mean ~13.5 s              emerges from the sum below (tested)
====================================  ==========================================

How the synchronous 13.5 s is met
=================================

The story's durations are *typical* values. Real service times are
right-skewed, so each is modelled as a log-normal whose **median** is the
story's figure; its mean sits a little above (``median * exp(sigma**2 / 2)``).

====================  ========  =====  =========
step                  median    sigma  mean
====================  ========  =====  =========
insert + commit (DB)  2 x 3 ms  0.3    ~0.006 s
authorization         140 ms    0.35   ~0.149 s
merchant webhook      by tier   --     ~3.2 s (volume-weighted, see below)
analytics write       2.0 s     0.65   ~2.47 s
audit write           1.0 s     0.65   ~1.24 s
risk score            3.0 s     0.65   ~3.71 s
fraud API             2.0 s     0.65   ~2.47 s
====================  ========  =====  =========

Webhook endpoints differ by merchant tier (enterprise merchants run fast,
well-provisioned receivers; most small shops fulfil the order inside the
webhook handler and answer in seconds). A few percent of healthy calls exceed
the 5 s timeout; the original code retried those at once (up to
:data:`SYNC_WEBHOOK_ATTEMPTS` attempts), which is the detail that turns slow
merchants into a frozen payment pipeline on Black Friday.

The sum is about 13.3 s; with timeouts and retries the measured normal-day
mean lands near the story's 13.5 s (``tests/test_phase1.py`` pins it).

The database pool
=================

The pool (:data:`DB_POOL_SIZE` at scale 1) is sized so that the synchronous
pipeline survives a *healthy* Black Friday with headroom on average (about
62% of connections busy at 10x traffic). At scale 0.1 the headroom is only
about three standard deviations of the noise (Poisson arrivals, plus the
variance of the second connection the analytics and audit writes borrow), so
the pool does touch its limit now and then with no fault at all: full within
the first three minutes of x10 in roughly one seed in seven, for a few seconds
to half a minute. At scale 1 the same headroom is about ten standard
deviations. What the pool does not survive is slow merchants:
Little's law (connections in use = arrival rate x time each payment holds one)
does the rest. The analytics and audit writes borrow a *second* connection
from the same pool while the request still holds its first, so once the pool
is full every request waits for a connection that only another waiting request
could return: the freeze. The original code waited for a connection without a
timeout (:data:`DB_CHECKOUT_TIMEOUT_S`), so the freeze is total: nothing
completes, nothing fails, everything waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from payflow_lab.core.domain import Tier

__all__ = [
    "AUTHORIZATION",
    "DAILY_VOLUME_USD",
    "DB_CHECKOUT_TIMEOUT_S",
    "DB_POOL_SIZE",
    "DB_QUERY",
    "DECLINE_RATE",
    "Distribution",
    "MERCHANTS",
    "SIDE_EFFECTS",
    "SYNC_WEBHOOK_ATTEMPTS",
    "TIERS",
    "TierProfile",
    "WEBHOOK_TIMEOUT_S",
]


@dataclass(frozen=True, slots=True)
class Distribution:
    """A log-normal service time: ``median`` seconds, shape ``sigma``."""

    median: float
    sigma: float
    #: ``log(median)``, the normal's mean, computed once: it is needed on every draw.
    mu: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mu", math.log(self.median))


@dataclass(frozen=True, slots=True)
class TierProfile:
    """What a tier's merchants look like.

    ``merchant_share`` is the share of merchants in the tier and
    ``volume_share`` the share of payments they receive. ``endpoint`` is the
    typical webhook endpoint of the tier; each merchant's own median is drawn
    around it with ``merchant_spread``.
    """

    merchant_share: float
    volume_share: float
    ticket: Distribution  # dollars
    endpoint: Distribution
    merchant_spread: float
    endpoint_error_rate: float
    webhook_rate_per_s: float
    webhook_burst: int


#: PayFlow's daily volume and merchant count at scale 1 (the story).
DAILY_VOLUME_USD = 10_000_000.0
MERCHANTS = 5_000

TIERS: dict[Tier, TierProfile] = {
    Tier.STANDARD: TierProfile(
        merchant_share=0.90,
        volume_share=0.55,
        ticket=Distribution(median=38.0, sigma=0.8),
        endpoint=Distribution(median=4.0, sigma=0.12),
        merchant_spread=0.06,
        endpoint_error_rate=0.01,
        webhook_rate_per_s=2.0,
        webhook_burst=5,
    ),
    Tier.PREMIUM: TierProfile(
        merchant_share=0.09,
        volume_share=0.30,
        ticket=Distribution(median=55.0, sigma=0.8),
        endpoint=Distribution(median=3.2, sigma=0.15),
        merchant_spread=0.08,
        endpoint_error_rate=0.01,
        webhook_rate_per_s=5.0,
        webhook_burst=10,
    ),
    Tier.ENTERPRISE: TierProfile(
        merchant_share=0.01,
        volume_share=0.15,
        ticket=Distribution(median=70.0, sigma=0.9),
        endpoint=Distribution(median=0.35, sigma=0.3),
        merchant_spread=0.15,
        endpoint_error_rate=0.005,
        webhook_rate_per_s=20.0,
        webhook_burst=40,
    ),
}

#: The payment gateway: the only step that belongs on the critical path.
AUTHORIZATION = Distribution(median=0.140, sigma=0.35)
#: Share of authorizations the card networks decline (a normal, non-webhook failure).
DECLINE_RATE = 0.015
#: One fast query on a healthy database (insert the payment, commit it).
DB_QUERY = Distribution(median=0.003, sigma=0.3)

#: The side effects of the original code, by name, with the story's durations as medians.
SIDE_EFFECTS: dict[str, Distribution] = {
    "analytics": Distribution(median=2.0, sigma=0.65),
    "audit": Distribution(median=1.0, sigma=0.65),
    "risk": Distribution(median=3.0, sigma=0.65),
    "fraud": Distribution(median=2.0, sigma=0.65),
}
#: The side effects that are database writes and so borrow a pool connection.
DB_WRITES = frozenset({"analytics", "audit"})

#: The story's webhook timeout, and the "global 5-second timeout" of the fix.
WEBHOOK_TIMEOUT_S = 5.0
#: The original code's webhook helper retried a timed-out or failed call at once.
SYNC_WEBHOOK_ATTEMPTS = 3

#: Connections in the database pool at scale 1.
DB_POOL_SIZE = 650
#: How long a checkout waits for a free connection. ``None``, as in the original code:
#: asyncpg's ``Pool.acquire()`` and Go's ``database/sql`` with a background context
#: both wait for ever unless told otherwise. Later phases pass their own timeouts.
DB_CHECKOUT_TIMEOUT_S: float | None = None
