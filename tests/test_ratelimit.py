"""The token bucket against its stated semantics: long-run rates, bursts, waiting vs rejecting, fairness."""

from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payflow_lab.core.calibration import TIERS
from payflow_lab.core.domain import EndpointProfile, Merchant, MerchantDirectory, Tier
from payflow_lab.core.errors import RateLimited, ValidationError
from payflow_lab.core.vtime import BACKENDS, run_virtual
from payflow_lab.resilience import KeyedRateLimiter, RateLimit, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def merchant(serial: int, tier: Tier) -> Merchant:
    profile = TIERS[tier]
    return Merchant(
        id=f"mch_{serial:05d}",
        name=f"Shop {serial}",
        tier=tier,
        endpoint=EndpointProfile(median_latency_s=1.0),
        webhook_rate_per_s=profile.webhook_rate_per_s,
        webhook_burst=profile.webhook_burst,
    )


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("rate", "burst", "field"),
    [
        (0, 5, "rate_per_s"),
        (-1.0, 5, "rate_per_s"),
        (float("inf"), 5, "rate_per_s"),
        ("2", 5, "rate_per_s"),
        (2.0, 0, "burst"),
        (2.0, 1.5, "burst"),
        (2.0, True, "burst"),
    ],
)
def test_bad_limits_are_refused_naming_the_setting(rate: object, burst: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TokenBucket(rate, burst)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_bad_requests_are_refused() -> None:
    bucket = TokenBucket(1.0, 3, clock=FakeClock())
    for tokens in (0, -1, 4, float("nan")):
        with pytest.raises(ValidationError) as caught:
            bucket.try_acquire(tokens)
        assert caught.value.field == "tokens"
    assert bucket.tokens == 3.0  # nothing half-applied

    async def negative_wait() -> None:
        await bucket.acquire(max_wait=-1)

    with pytest.raises(ValidationError) as caught:
        run_virtual(negative_wait)
    assert caught.value.field == "max_wait"


def test_keyed_limiter_refuses_bad_limit_functions() -> None:
    with pytest.raises(ValidationError):
        KeyedRateLimiter(3.0)  # type: ignore[arg-type]
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(lambda key: (2.0, 5), clock=FakeClock())  # type: ignore[arg-type,return-value]
    with pytest.raises(ValidationError) as caught:
        limiter.try_acquire("mch_00001")
    assert caught.value.field == "limit_for"
    assert len(limiter) == 0


# ------------------------------------------------------------------ bucket arithmetic (fake clock)
def test_starts_full_then_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, 5, clock=clock)
    assert sum(bucket.try_acquire() for _ in range(10)) == 5
    assert bucket.retry_after() == pytest.approx(0.5)
    clock.now = 0.49
    assert not bucket.try_acquire()
    clock.now = 0.5
    assert bucket.try_acquire()
    clock.now = 1000.0
    assert bucket.tokens == 5.0  # never more than the burst
    assert (bucket.granted, bucket.rejected) == (6, 6)


def test_reading_tokens_is_pure() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2, clock=clock)
    bucket.try_acquire()
    bucket.try_acquire()
    clock.now = 0.75
    for _ in range(10):
        assert bucket.tokens == pytest.approx(0.75)
        assert bucket.retry_after() == pytest.approx(0.25)
    assert bucket.granted == 2 and bucket.rejected == 0


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.1, 50.0), burst=st.integers(1, 50), steps=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=200)
)
def test_no_span_gets_more_than_burst_plus_rate_times_duration(rate: float, burst: int, steps: list[float]) -> None:
    """A greedy caller polling at random instants: granted within [0, T] <= burst + rate * T, whatever the pattern."""
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock)
    granted_at: list[float] = []
    for step in steps:
        clock.now += step
        while bucket.try_acquire():
            granted_at.append(clock.now)
    # For every pair of grants i <= j: j - i + 1 <= burst + rate * (t_j - t_i). With a running minimum of
    # (i - rate * t_i) that is one pass instead of checking every pair.
    lowest = math.inf
    for j, at in enumerate(granted_at):
        lowest = min(lowest, j - rate * at)
        assert (j + 1 - rate * at) - lowest <= burst + 1e-6
    # Conservation: what was handed out plus what is left never exceeds what the refill paid for.
    assert len(granted_at) + bucket.tokens <= burst + rate * clock.now + 1e-6


def test_a_greedy_poller_gets_burst_plus_rate_times_t() -> None:
    clock = FakeClock()
    bucket = TokenBucket(3.0, 7, clock=clock)
    granted = 0
    for tick in range(1, 36_001):  # an hour, polled every 0.1 s
        while bucket.try_acquire():
            granted += 1
        clock.now = tick * 0.1
    assert abs(granted - (7 + 3.0 * 3600)) <= 1


# ------------------------------------------------------------------ waiting, in virtual time
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tier", [Tier.STANDARD, Tier.PREMIUM])
def test_an_hour_of_waiting_delivers_rate_times_t_plus_burst(backend: str, tier: Tier) -> None:
    limit = RateLimit.for_merchant(merchant(1, tier))

    async def main() -> int:
        bucket = TokenBucket(limit.rate_per_s, limit.burst)
        delivered = 0
        with anyio.move_on_after(3600):
            while True:
                await bucket.acquire()
                delivered += 1
        return delivered

    delivered = run_virtual(main, backend=backend)
    assert abs(delivered - (limit.rate_per_s * 3600 + limit.burst)) <= 1


def test_an_hour_at_the_enterprise_rate() -> None:
    limit = RateLimit.for_merchant(merchant(1, Tier.ENTERPRISE))

    async def main() -> int:
        bucket = TokenBucket(limit.rate_per_s, limit.burst)
        delivered = 0

        async def worker() -> None:  # four workers share the merchant's bucket
            nonlocal delivered
            while True:
                await bucket.acquire()
                delivered += 1

        with anyio.move_on_after(3600):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(worker)
        return delivered

    assert abs(run_virtual(main) - (20.0 * 3600 + 40)) <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_waiters_are_served_first_come_first_served(backend: str) -> None:
    async def main() -> tuple[list[int], list[float], bool]:
        bucket = TokenBucket(2.0, 1)
        assert bucket.try_acquire()
        served: list[int] = []
        times: list[float] = []

        async def waiter(n: int) -> None:
            await bucket.acquire()
            served.append(n)
            times.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(waiter, n)
                await anyio.sleep(0.01)
            newcomer_got_in = bucket.try_acquire()  # waiters hold reservations: no overtaking
        return served, times, newcomer_got_in

    served, times, newcomer = run_virtual(main, backend=backend)
    assert served == [0, 1, 2, 3, 4]
    assert times == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5])
    assert newcomer is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_waiter_gives_its_reservation_back(backend: str) -> None:
    async def main() -> tuple[float, float]:
        bucket = TokenBucket(1.0, 1)
        await bucket.acquire()
        with anyio.move_on_after(0.25):
            await bucket.acquire()  # would have waited until t=1
        after_cancel = bucket.tokens  # the reservation is back: 0.25 refilled, nothing owed
        waited = await bucket.acquire()
        return after_cancel, waited

    after_cancel, waited = run_virtual(main, backend=backend)
    assert after_cancel == pytest.approx(0.25)
    assert waited == pytest.approx(0.75)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_wait_rejects_at_once_without_sleeping(backend: str) -> None:
    async def main() -> tuple[float, float, float]:
        bucket = TokenBucket(0.5, 2, name="mch_00007")
        await bucket.acquire(2)
        start = anyio.current_time()
        with pytest.raises(RateLimited) as caught:
            await bucket.acquire(max_wait=1.0)
        elapsed = anyio.current_time() - start
        waited = await bucket.acquire(max_wait=2.0)
        return caught.value.retry_after, elapsed, waited

    retry_after, elapsed, waited = run_virtual(main, backend=backend)
    assert retry_after == pytest.approx(2.0)
    assert elapsed == 0.0
    assert waited == pytest.approx(2.0)


# ------------------------------------------------------------------ one bucket per merchant
def test_keyed_limiter_gives_each_merchant_its_tier_limits() -> None:
    clock = FakeClock()
    directory = MerchantDirectory([merchant(1, Tier.ENTERPRISE), merchant(2, Tier.STANDARD)])
    limiter = KeyedRateLimiter.for_merchants(directory, clock=clock)
    assert len(limiter) == 0  # buckets are created lazily
    assert sum(limiter.try_acquire("mch_00001") for _ in range(100)) == 40
    assert sum(limiter.try_acquire("mch_00002") for _ in range(100)) == 5
    assert limiter.retry_after("mch_00002") == pytest.approx(0.5)
    assert list(limiter) == ["mch_00001", "mch_00002"]
    with pytest.raises(ValidationError):
        limiter.try_acquire("mch_09999")  # unknown merchant: the directory says so
    clock.now = 1.0
    assert limiter.prune() == 0  # neither bucket is full yet
    clock.now = 10.0
    assert limiter.prune() == 2 and len(limiter) == 0
    assert sum(limiter.try_acquire("mch_00002") for _ in range(100)) == 5  # a fresh bucket is a full one


def test_keyed_limiter_with_one_limit_for_all() -> None:
    clock = FakeClock()
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(RateLimit(1.0, 2), clock=clock)
    assert [limiter.try_acquire(k) for k in "aabab"] == [True, True, True, False, True]
    assert math.isclose(limiter.bucket("a").tokens, 0.0)
