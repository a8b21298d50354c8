"""Same seed, same inputs: byte-identical results apart from wall-clock and memory measurements."""

from __future__ import annotations

import json

import pytest

import payflow_lab as pf
from payflow_lab.core.recorder import strip_nondeterministic


def _fingerprint(result: pf.RunResult) -> str:
    return json.dumps(strip_nondeterministic({**result.summary, "series": result.series}), sort_keys=True)


@pytest.mark.parametrize("phase", pf.available_phases())
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_same_seed_same_result(phase, backend):
    a = pf.run("blackfriday", phase=phase, seed=5, duration=2100, backend=backend, scale=0.05)
    b = pf.run("blackfriday", phase=phase, seed=5, duration=2100, backend=backend, scale=0.05)
    assert _fingerprint(a) == _fingerprint(b)


def test_different_seeds_differ():
    a = pf.run("normal", phase=1, seed=1, duration=600, memory="off")
    b = pf.run("normal", phase=1, seed=2, duration=600, memory="off")
    assert _fingerprint(a) != _fingerprint(b)


def test_only_machine_measurements_are_stripped():
    result = pf.run("normal", phase=1, seed=1, duration=300)
    clean = strip_nondeterministic({**result.summary, "series": result.series})
    assert "wall_seconds" not in clean and "memory" not in clean
    assert "memory_bytes" not in clean["series"]
    assert clean["payments"] == result.summary["payments"]
    assert clean["series"]["p50_ms"] == result.series["p50_ms"]
