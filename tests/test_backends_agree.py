"""asyncio and trio tell the same story from the same seed, byte for byte.

Each run's JSON (summary and per-second series, without the wall-clock and
memory measurements and the backend's own name) must be identical on both
backends, for every phase and scenario. This holds because nothing in the
engine depends on the order in which a scheduler runs tasks that are ready at
the same instant: a service call's random draws are keyed by the payment and
the call (:meth:`payflow_lab.core.world.World.dice`), both virtual clocks land
exactly on timer deadlines, and timers due at the same instant fire in the
order they were set on both backends (:mod:`payflow_lab.core.vtime`).
"""

from __future__ import annotations

import json

import pytest

import payflow_lab as pf
from payflow_lab.core.recorder import strip_nondeterministic

SCENARIOS = ("normal", "blackfriday", "recovery")


def _story(result: pf.RunResult) -> str:
    story = strip_nondeterministic({**result.summary, "series": result.series})
    assert story.pop("backend") in ("asyncio", "trio")
    return json.dumps(story, sort_keys=True)


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at character {i}: ...{a[max(0, i - 120) : i + 60]}... vs ...{b[max(0, i - 120) : i + 60]}..."


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("phase", [1, 2, 3, 4, 5])
def test_asyncio_and_trio_give_identical_json(phase, scenario, seed):
    # Scale 0.02 keeps the 45 pairs of runs affordable; the ties that used to split the backends
    # (timeouts due with the pump's tick, workers woken together) happen at every scale.
    runs = [
        pf.run(scenario, phase=phase, seed=seed, scale=0.02, backend=backend, memory="off")
        for backend in ("asyncio", "trio")
    ]
    a, b = (_story(r) for r in runs)
    assert a == b, _first_difference(a, b)


@pytest.mark.parametrize("phase", [1, 2, 3, 4, 5])
def test_identical_at_the_default_scale_too(phase):
    runs = [pf.run("normal", phase=phase, seed=7, backend=backend, memory="off") for backend in ("asyncio", "trio")]
    a, b = (_story(r) for r in runs)
    assert a == b, _first_difference(a, b)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_timers_due_together_fire_in_the_order_they_were_set(backend):
    import anyio

    from payflow_lab.core.vtime import run_virtual

    async def main() -> list[str]:
        order: list[str] = []

        async def sleeper(name: str, delay: float) -> None:
            await anyio.sleep(delay)
            order.append(name)

        async with anyio.create_task_group() as tg:
            # Set at different times, all due at t = 10 exactly.
            for i, delay in enumerate((10.0, 9.0, 8.0, 7.0, 6.0)):
                tg.start_soon(sleeper, f"timer{i}", delay)
                await anyio.sleep(1.0)
        return order

    assert run_virtual(main, backend=backend) == [f"timer{i}" for i in range(5)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_virtual_clock_lands_exactly_on_a_deadline(backend):
    import anyio

    from payflow_lab.core.vtime import run_virtual

    async def main() -> list[float]:
        seen = []
        for delay in (0.1, 0.2, 1e-7, 1234.5678, 0.3):
            deadline = anyio.current_time() + delay
            await anyio.sleep_until(deadline)
            seen.append(anyio.current_time() - deadline)
        return seen

    assert run_virtual(main, backend=backend) == [0.0] * 5
