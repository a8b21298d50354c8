"""Customer traffic: seeded arrivals that follow the shape of a shopping day.

Arrivals are a Poisson process whose rate is

    base rate x scale x day profile(story time) x fault plan's traffic multiplier

The rate is re-read at least once per simulated second, so a multiplier
changed by a scenario or a widget takes effect within a second. Gaps longer
than a second are drawn again from the new rate, which is exact for a Poisson
process (it has no memory).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from payflow_lab.core.domain import Payment
from payflow_lab.core.world import World

__all__ = ["DAY_PROFILE", "arrivals", "day_profile", "rate_at"]

#: Relative traffic in each hour of a normal day (mean 1.0): quiet nights, a lunch
#: bump, the afternoon and evening peak of online shopping.
DAY_PROFILE = (
    0.35,
    0.25,
    0.20,
    0.18,
    0.20,
    0.30,
    0.50,
    0.75,
    1.00,
    1.20,
    1.30,
    1.40,
    1.45,
    1.40,
    1.40,
    1.45,
    1.50,
    1.55,
    1.60,
    1.65,
    1.55,
    1.30,
    0.95,
    0.60,
)
_MEAN = sum(DAY_PROFILE) / len(DAY_PROFILE)


def day_profile(story_seconds: float) -> float:
    """Traffic relative to the daily mean at ``story_seconds`` after midnight (linear between hours)."""
    hours = (story_seconds / 3600.0) % 24.0
    index = int(hours)
    frac = hours - index
    a = DAY_PROFILE[index]
    b = DAY_PROFILE[(index + 1) % 24]
    return (a + (b - a) * frac) / _MEAN


def rate_at(world: World, story_seconds: float) -> float:
    """Payments per second arriving at ``story_seconds`` in ``world``."""
    return world.base_rate * day_profile(story_seconds) * world.faults.traffic_multiplier


async def arrivals(world: World, until: float, submit: Callable[[Payment], Awaitable[None] | None]) -> None:
    """Generate payments until story time ``until``, handing each to ``submit`` (not awaited if it returns None)."""
    rng = world.traffic_rng
    clock = world.clock
    while True:
        now = clock()
        if now >= until:
            return
        rate = rate_at(world, now)
        if rate <= 0:  # no customers at all: look again in a second
            await world.sleep(min(1.0, until - now))
            continue
        gap = rng.expovariate(rate)
        if gap > 1.0 or now + gap >= until:
            await world.sleep(min(1.0, max(0.0, until - now)))
            continue
        await world.sleep(gap)
        result = submit(world.new_payment())
        if result is not None:
            await result
