"""Shared fixtures: cached simulation runs (a run is deterministic, so tests may share one)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest

import payflow_lab as pf


@lru_cache(maxsize=64)
def _cached(
    scenario: str, phase: int, seed: int, scale: float, duration: float | None, backend: str, memory: str
) -> pf.RunResult:
    return pf.run(scenario, phase=phase, seed=seed, scale=scale, duration=duration, backend=backend, memory=memory)


@pytest.fixture(scope="session")
def simulate():
    """``simulate(scenario, phase, seed=7, scale=0.1, duration=None, backend="asyncio", memory="tracemalloc")``.

    Runs are cached for the session: treat the result as read-only.
    """

    def run(
        scenario: str = "normal",
        phase: int = 1,
        *,
        seed: int = 7,
        scale: float = 0.1,
        duration: float | None = None,
        backend: str = "asyncio",
        memory: str = "tracemalloc",
    ) -> Any:
        return _cached(scenario, phase, seed, scale, duration, backend, memory)

    return run
