"""The simulated world: merchants, calibrated services, faults and the connection pool."""

from __future__ import annotations

import math
import statistics

import anyio
import anyio.lowlevel
import pytest

from payflow_lab.core import calibration as cal
from payflow_lab.core.db import ConnectionPool
from payflow_lab.core.domain import Payment, Tier
from payflow_lab.core.errors import Declined, EndpointError, PoolTimeout, ValidationError
from payflow_lab.core.recorder import Recorder
from payflow_lab.core.vtime import run_virtual
from payflow_lab.core.world import World

START = 14 * 3600.0


def make_world(seed: int = 1, scale: float = 0.1) -> World:
    def clock() -> float:
        try:
            return START + anyio.current_time()
        except Exception:  # outside a loop: building the world
            return START

    return World(seed=seed, scale=scale, clock=clock, recorder=Recorder(clock))


def test_merchants_scale_with_the_knob_and_keep_tier_shares():
    for scale, expected in ((1.0, 5000), (0.1, 500)):
        world = make_world(scale=scale)
        assert len(world.merchants) == expected
        counts = {tier: len(world.merchants_of(tier)) for tier in Tier}
        assert counts[Tier.STANDARD] == round(expected * 0.9)
        assert counts[Tier.ENTERPRISE] == round(expected * 0.01)


def test_the_busiest_merchant_is_the_first_enterprise_one():
    world = make_world()
    assert world.busiest(Tier.ENTERPRISE).id == "mch_00001"
    assert world.busiest(Tier.PREMIUM).tier is Tier.PREMIUM


def test_daily_volume_is_ten_million_dollars_at_scale_one():
    world = make_world(scale=1.0)
    sample = [world.new_payment().dollars for _ in range(40_000)]
    daily = world.base_rate * 86_400 * statistics.fmean(sample)
    assert daily == pytest.approx(cal.DAILY_VOLUME_USD, rel=0.05)


def test_new_payments_are_valid_and_reproducible():
    a, b = make_world(seed=3), make_world(seed=3)
    pa = [a.new_payment() for _ in range(200)]
    pb = [b.new_payment() for _ in range(200)]
    assert pa == pb
    assert len({p.id for p in pa}) == 200
    for payment in pa:
        assert isinstance(payment, Payment)
        a.merchants.validate(payment)
    assert [p.id for p in pa] != [p.id for p in (make_world(seed=4).new_payment() for _ in range(200))]


def test_bad_seed_and_scale_are_refused():
    with pytest.raises(ValidationError, match="seed"):
        World(seed=-1, scale=0.1, clock=lambda: 0.0, recorder=Recorder(lambda: 0.0))
    with pytest.raises(ValidationError, match="scale"):
        World(seed=1, scale=0, clock=lambda: 0.0, recorder=Recorder(lambda: 0.0))


def test_authorization_takes_about_150_ms_and_some_cards_are_declined():
    async def main():
        world = make_world()
        payment = world.new_payment()
        times, declined = [], 0
        for _ in range(3000):
            started = anyio.current_time()
            try:
                await world.authorize(payment)
            except Declined:
                declined += 1
            times.append(anyio.current_time() - started)
        return statistics.fmean(times), declined

    mean, declined = run_virtual(main)
    assert mean == pytest.approx(0.150, rel=0.05)
    assert 0.005 < declined / 3000 < 0.03


def test_side_effect_durations_match_the_story():
    async def main():
        world = make_world()
        payment = world.new_payment()
        out = {}
        for kind in ("analytics", "audit", "risk", "fraud"):
            call = world.service(kind)
            durations = []
            for _ in range(2000):
                started = anyio.current_time()
                await call(payment)
                durations.append(anyio.current_time() - started)
            out[kind] = statistics.median(durations)
        return out

    medians = run_virtual(main)
    for kind, story in (("analytics", 2.0), ("audit", 1.0), ("risk", 3.0), ("fraud", 2.0)):
        assert medians[kind] == pytest.approx(story, rel=0.08), kind


def test_endpoint_modes_behave_as_documented():
    async def main():
        world = make_world()
        payment = next(
            p for p in (world.new_payment() for _ in range(100)) if world.merchants[p.merchant_id].tier is Tier.STANDARD
        )
        results = {}
        world.faults.apply({"tier_modes": {"standard": "down"}})
        started = anyio.current_time()
        with pytest.raises(EndpointError, match="refused"):
            await world.deliver_webhook(payment)
        results["down"] = anyio.current_time() - started
        world.faults.apply({"tier_modes": {"standard": "hang"}})
        started = anyio.current_time()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(1000):
                await world.deliver_webhook(payment)
        results["hang"] = anyio.current_time() - started
        world.faults.apply({"tier_modes": {"standard": "up"}, "webhook_error_rate": 1.0})
        with pytest.raises(EndpointError, match="503"):
            await world.deliver_webhook(payment)
        world.faults.apply({"webhook_error_rate": 0.0, "webhook_latency_multiplier": 3.0})
        started = anyio.current_time()
        await world.deliver_webhook(payment)
        results["slow"] = anyio.current_time() - started
        return results, world.merchants[payment.merchant_id].endpoint.median_latency_s

    results, median = run_virtual(main)
    assert results["down"] < 0.05
    assert results["hang"] == pytest.approx(1000.0)
    assert results["slow"] > median  # three times slower than usual, give or take the noise


def test_unknown_side_effect_is_named():
    with pytest.raises(ValidationError, match="unknown side effect 'email'"):
        make_world().service("email")


class TestConnectionPool:
    def test_connections_are_handed_out_first_come_first_served(self):
        async def main():
            pool = ConnectionPool(1)
            order = []

            async def user(name, delay):
                await anyio.sleep(delay)
                async with pool.connection():
                    order.append(name)
                    await anyio.sleep(1)

            async with anyio.create_task_group() as tg:
                for i, name in enumerate("abcd"):
                    tg.start_soon(user, name, i * 0.01)
            return order, pool.peak_in_use, anyio.current_time()

        order, peak, elapsed = run_virtual(main)
        assert order == list("abcd")
        assert peak == 1
        assert elapsed == pytest.approx(4.0)  # back to back: no connection ever idles

    def test_checkout_timeout_raises_and_counts(self):
        async def main():
            pool = ConnectionPool(1, checkout_timeout=2.0)
            exhausted = []
            pool._on_exhausted = lambda: exhausted.append(anyio.current_time())
            async with pool.connection():
                with pytest.raises(PoolTimeout, match="2 s"):
                    async with pool.connection():
                        pass
            return pool.timeouts, exhausted, pool.in_use, anyio.current_time()

        timeouts, exhausted, in_use, now = run_virtual(main)
        assert timeouts == 1 and in_use == 0
        assert exhausted == [0.0]
        assert now == pytest.approx(2.0)

    def test_a_nested_checkout_on_a_full_pool_waits_for_ever_by_default(self):
        """The mechanism of the freeze: holding one connection while waiting for a second."""

        async def main():
            pool = ConnectionPool(2)
            stuck = 0

            async def request():
                nonlocal stuck
                async with pool.connection():
                    await anyio.sleep(0.1)
                    stuck += 1
                    async with pool.connection():  # the analytics write
                        stuck -= 1

            with anyio.move_on_after(3600):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(request)
                    tg.start_soon(request)
            return stuck, pool.in_use, anyio.current_time()

        stuck, in_use, now = run_virtual(main, backend="trio")
        assert stuck == 2  # both requests hold one and wait for another
        assert now == pytest.approx(3600.0)

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_a_request_that_gives_up_leaves_the_line_and_the_next_one_is_served(self, backend):
        async def main():
            pool = ConnectionPool(1)
            served = []

            async def impatient():
                with pytest.raises(PoolTimeout):
                    async with pool.connection(timeout=1.0):
                        served.append("impatient")

            async def patient():
                await anyio.sleep(0.5)  # queued behind the impatient one
                async with pool.connection():
                    served.append(("patient", anyio.current_time()))

            async with anyio.create_task_group() as tg:
                async with pool.connection():
                    tg.start_soon(impatient)
                    tg.start_soon(patient)
                    await anyio.sleep(3)
                    assert (pool.waiting, pool.in_use) == (1, 1)  # the impatient one left the line
            return served, pool.in_use, pool.waiting, pool.timeouts

        served, in_use, waiting, timeouts = run_virtual(main, backend=backend)
        assert served == [("patient", 3.0)]
        assert (in_use, waiting, timeouts) == (0, 0, 1)

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_a_connection_handed_to_a_request_that_timed_out_that_instant_goes_to_the_next(self, backend):
        async def main():
            pool = ConnectionPool(1)
            served = []

            async def holder():
                async with pool.connection():
                    # due at 1.0 like the deadline below, and set before it: the deadline cancels the waiting
                    # request, then the connection comes back, before that request has run again
                    await anyio.sleep(1.0)

            async def first_in_line():
                with pytest.raises(PoolTimeout):
                    async with pool.connection(timeout=1.0):
                        served.append("timed out, yet served")

            async def next_in_line():
                async with pool.connection(timeout=10.0):  # a lost connection would time this out
                    served.append(("next", anyio.current_time()))

            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await anyio.lowlevel.checkpoint()
                tg.start_soon(first_in_line)
                tg.start_soon(next_in_line)
            return served, pool.in_use, pool.waiting, pool.timeouts

        served, in_use, waiting, timeouts = run_virtual(main, backend=backend)
        assert served == [("next", 1.0)]  # the connection handed to the request that gave up was passed on
        assert (in_use, waiting, timeouts) == (0, 0, 1)

    def test_a_request_already_cancelled_never_queues(self):
        async def main():
            pool = ConnectionPool(1)
            async with pool.connection():
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    async with pool.connection():
                        raise AssertionError("a cancelled request got a connection")
                return pool.waiting, len(pool._line), pool.in_use

        assert run_virtual(main) == (0, 0, 1)

    @pytest.mark.parametrize("size", [0, -1, 1.5, True])
    def test_bad_size(self, size):
        with pytest.raises(ValueError, match="pool size"):
            ConnectionPool(size)

    def test_bad_timeout(self):
        with pytest.raises(ValueError, match="checkout_timeout"):
            ConnectionPool(3, checkout_timeout=0)


def test_lognormal_calibration_mean_formula():
    # The documentation's claim: a log-normal with median m and sigma s has mean m * exp(s^2 / 2).
    dist = cal.SIDE_EFFECTS["risk"]
    assert dist.median * math.exp(dist.sigma**2 / 2) == pytest.approx(3.0 * 1.2352, rel=1e-3)


def test_no_traffic_means_no_payments():
    from payflow_lab import run

    s = run("normal", phase=1, seed=1, duration=300, memory="off", faults={"traffic_multiplier": 0}).summary
    assert s["payments"]["attempted"] == 0
    assert s["sim_seconds"] >= 300
