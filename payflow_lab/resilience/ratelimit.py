"""Rate limits: a token bucket per merchant, so a backlog never floods one endpoint.

A merchant's tier sets two numbers (:attr:`Merchant.webhook_rate_per_s` and
:attr:`Merchant.webhook_burst`): the bucket holds at most ``burst`` tokens and
refills at ``rate_per_s`` tokens a second; every delivery spends one. Over any
span of ``T`` seconds at most ``burst + rate_per_s * T`` deliveries go out,
which is what a merchant agreed to receive when their endpoint comes back
after an outage and PayFlow has an hour of webhooks queued for it.

Waiting or rejecting is the caller's choice:

``try_acquire()``
    take a token now or get ``False`` (and ask :meth:`TokenBucket.retry_after`
    when to come back). For a worker that has other merchants' work to do.
``await acquire()``
    wait until the token is yours. Waiters are served first come, first
    served: each one *reserves* its token at once (the balance may go
    negative) and sleeps until the refill has paid for it, so a newcomer can
    never overtake a waiter, and ``try_acquire`` fails while anyone is
    waiting. A waiter that is cancelled gives its reservation back.
    ``max_wait`` turns a wait that would be too long into an immediate
    :class:`RateLimited`, without sleeping first to find out.

There is no background refill task: the balance is computed from the clock
whenever it is needed (by default :func:`anyio.current_time`, so an hour of
traffic costs no real time in virtual time).

Why not aiolimiter: it is asyncio-only (it schedules ``loop.call_later``
wake-ups), and this engine must run on trio too. anyio's
:class:`~anyio.CapacityLimiter` bounds how many calls run *at once*, not how
many start per second: a different limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

from payflow_lab.core.domain import Merchant
from payflow_lab.core.errors import RateLimited, ValidationError
from payflow_lab.core.validation import Clock, default_clock, integer, number

__all__ = ["KeyedRateLimiter", "RateLimit", "RateLimited", "TokenBucket"]

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A rate (tokens per second) and a burst (bucket size, at least 1 token)."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        number("rate_per_s", self.rate_per_s, above=0.0)
        integer("burst", self.burst, minimum=1)

    @classmethod
    def for_merchant(cls, merchant: Merchant) -> RateLimit:
        """The webhook limit of ``merchant``'s tier."""
        if not isinstance(merchant, Merchant):
            raise ValidationError("merchant", f"must be a Merchant, got {type(merchant).__name__}")
        return cls(merchant.webhook_rate_per_s, merchant.webhook_burst)


class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; starts full. See the module docstring."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Clock | None = None, name: str = "bucket") -> None:
        limit = RateLimit(rate_per_s, burst)
        self.rate_per_s = float(limit.rate_per_s)
        self.burst = limit.burst
        self.name = name
        self._clock = default_clock(clock)
        self._tokens = float(self.burst)
        self._updated: float | None = None  # first read of the clock happens on first use
        #: Tokens handed out at once, after a wait, and requests refused.
        self.granted = 0
        self.delayed = 0
        self.rejected = 0
        self.waited_seconds = 0.0

    @classmethod
    def for_merchant(cls, merchant: Merchant, *, clock: Clock | None = None) -> TokenBucket:
        limit = RateLimit.for_merchant(merchant)
        return cls(limit.rate_per_s, limit.burst, clock=clock, name=merchant.id)

    # ------------------------------------------------------------ reading (pure)
    def _balance(self, now: float) -> float:
        if self._updated is None:
            return self._tokens
        return min(float(self.burst), self._tokens + (now - self._updated) * self.rate_per_s)

    @property
    def tokens(self) -> float:
        """Tokens available now; negative while waiters hold reservations."""
        return self._balance(self._clock())

    def retry_after(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` could be taken (0.0 if now)."""
        self._check(tokens)
        missing = tokens - self.tokens
        return max(0.0, missing / self.rate_per_s)

    # ----------------------------------------------------------------- taking
    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` now if the bucket has them; never waits."""
        self._check(tokens)
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            self.granted += 1
            return True
        self.rejected += 1
        return False

    async def acquire(self, tokens: float = 1.0, *, max_wait: float | None = None) -> float:
        """Take ``tokens``, waiting (first come, first served) if need be; return the seconds waited.

        Raises :class:`RateLimited` at once if the wait would exceed
        ``max_wait``. Honours cancellation: a cancelled waiter's reservation
        is given back.
        """
        self._check(tokens)
        if max_wait is not None:
            number("max_wait", max_wait, minimum=0.0)
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            self.granted += 1
            return 0.0
        wait = (tokens - self._tokens) / self.rate_per_s
        if max_wait is not None and wait > max_wait:
            self.rejected += 1
            raise RateLimited(self.name, wait)
        self._tokens -= tokens  # the reservation: later callers queue behind it
        try:
            await anyio.sleep(wait)
        except BaseException:
            self._refill()
            self._tokens = min(float(self.burst), self._tokens + tokens)
            raise
        self.granted += 1
        self.delayed += 1
        self.waited_seconds += wait
        return wait

    # -------------------------------------------------------------- internals
    def _refill(self) -> None:
        now = self._clock()
        self._tokens = self._balance(now)
        self._updated = now

    def _check(self, tokens: float) -> None:
        number("tokens", tokens, above=0.0, maximum=float(self.burst))


class KeyedRateLimiter(Generic[K]):
    """A :class:`TokenBucket` per key, created on first use.

    ``limit_for`` is one :class:`RateLimit` for every key, or a function from a
    key to its limit (:meth:`for_merchants` builds one from the merchant
    directory, so each merchant gets its tier's limit).
    """

    def __init__(self, limit_for: RateLimit | Callable[[K], RateLimit], *, clock: Clock | None = None) -> None:
        if isinstance(limit_for, RateLimit):
            fixed = limit_for
            self._limit_for: Callable[[K], RateLimit] = lambda _key: fixed
        elif callable(limit_for):
            self._limit_for = limit_for
        else:
            raise ValidationError("limit_for", f"must be a RateLimit or a function of the key, got {limit_for!r}")
        self._clock = default_clock(clock)
        self._buckets: dict[K, TokenBucket] = {}

    @staticmethod
    def for_merchants(merchants: Mapping[str, Merchant], *, clock: Clock | None = None) -> KeyedRateLimiter[str]:
        """One bucket per merchant id, with that merchant's tier limits."""

        def limit_for(merchant_id: str) -> RateLimit:
            return RateLimit.for_merchant(merchants[merchant_id])

        return KeyedRateLimiter(limit_for, clock=clock)

    def bucket(self, key: K) -> TokenBucket:
        """The bucket of ``key`` (created full on first use)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            limit = self._limit_for(key)
            if not isinstance(limit, RateLimit):
                raise ValidationError("limit_for", f"returned {limit!r} for {key!r}, not a RateLimit")
            bucket = TokenBucket(limit.rate_per_s, limit.burst, clock=self._clock, name=str(key))
            self._buckets[key] = bucket
        return bucket

    def try_acquire(self, key: K, tokens: float = 1.0) -> bool:
        return self.bucket(key).try_acquire(tokens)

    async def acquire(self, key: K, tokens: float = 1.0, *, max_wait: float | None = None) -> float:
        return await self.bucket(key).acquire(tokens, max_wait=max_wait)

    def retry_after(self, key: K, tokens: float = 1.0) -> float:
        return self.bucket(key).retry_after(tokens)

    def items(self) -> list[tuple[K, TokenBucket]]:
        """A snapshot of (key, bucket) pairs in creation order."""
        return list(self._buckets.items())

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def __iter__(self) -> Iterator[K]:
        return iter(self._buckets)

    def __len__(self) -> int:
        return len(self._buckets)

    def prune(self) -> int:
        """Forget buckets that are full again (a full bucket is the same as a new one); return how many."""
        full = [key for key, bucket in self._buckets.items() if bucket.tokens >= bucket.burst]
        for key in full:
            del self._buckets[key]
        return len(full)
