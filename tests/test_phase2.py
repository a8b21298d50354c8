"""Phase 2 (fire-and-forget tasks): its defects pinned, so that a change which removes one fails here.

The quick tests drive a custom fault plan (Black Friday traffic, standard-tier
endpoints hanging) for a few simulated minutes; the ``slow`` ones check the
issue's done-when figures on the full Black Friday scenario.
"""

from __future__ import annotations

import json
import sys

import pytest

import payflow_lab as pf
from payflow_lab.core.recorder import strip_nondeterministic
from payflow_lab.phases.leaks import least_squares

SEED = 7
SCALE = 0.1
DURATION = 600.0
BUSY = {"traffic_multiplier": 10.0}
OUTAGE = {**BUSY, "tier_modes": {"standard": "hang"}}


def _run(faults, **options):
    # the heap, traced: these tests weigh tasks, and a resident size reuses what earlier tests freed
    options = {"seed": SEED, "scale": SCALE, "duration": DURATION, "memory": "tracemalloc", **options}
    return pf.run("normal", phase=2, faults=faults, **options)


@pytest.fixture(scope="module")
def healthy() -> pf.RunResult:
    return _run(BUSY)


@pytest.fixture(scope="module")
def outage() -> pf.RunResult:
    return _run(OUTAGE)


def _minute_ends(series, column):
    """The column's value at the end of each whole minute in which endpoints hung."""
    rows = [i for i, flag in enumerate(series["endpoints_hanging"]) if flag]
    return [series[column][i] for i in rows[59::60]]


def test_the_phase_is_registered():
    cls = pf.get_phase(2)
    assert (cls.number, cls.name, cls.title) == (2, "fire_and_forget", "Phase 2: fire-and-forget tasks")
    doc = sys.modules[cls.__module__].__doc__
    assert "Cured by: Phase 4" in doc and cls.lesson
    assert 2 in pf.available_phases()


def test_tasks_grow_for_as_long_as_endpoints_hang(outage, healthy):
    series = outage.series
    per_minute = _minute_ends(series, "in_flight_tasks")
    assert len(per_minute) >= 9
    assert all(later > earlier for earlier, later in zip(per_minute, per_minute[1:])), per_minute
    growth = outage["fire_and_forget"]["growth_while_endpoints_hang"]
    # about 1.5 payments/s reach a hanging standard-tier endpoint: ~90 stuck tasks a minute
    assert growth["tasks_per_min"] > 50
    assert outage["tasks"]["peak_in_flight"] >= 8 * healthy["tasks"]["peak_in_flight"]
    assert healthy["fire_and_forget"]["growth_while_endpoints_hang"]["tasks_per_min"] is None


def test_memory_grows_with_the_stuck_tasks(outage, healthy):
    per_minute = _minute_ends(outage.series, "memory_bytes")
    assert all(later > earlier for earlier, later in zip(per_minute[::2], per_minute[2::2])), per_minute
    report = outage["fire_and_forget"]
    assert report["bytes_per_in_flight_task"] > 2_000  # a pending task with its frames: kilobytes, measured
    assert report["growth_while_endpoints_hang"]["memory_bytes_per_min"] > 50 * report["bytes_per_in_flight_task"]
    grew = outage["memory"]["peak_bytes"] - outage["memory"]["start_bytes"]
    grew_healthy = healthy["memory"]["peak_bytes"] - healthy["memory"]["start_bytes"]
    assert grew > 4 * grew_healthy


def test_side_effects_in_flight_are_lost_at_shutdown(outage):
    lost = outage["fire_and_forget"]["lost_at_shutdown"]
    fx = outage["side_effects"]
    assert lost["total"] == fx["dropped"] > 500
    assert lost["by_kind"]["webhook"] > 500
    assert lost["by_kind"].get("audit", 0) > 0  # audit-log writes are lost too
    assert fx["pending"] == 0
    assert fx["reasons"]["webhook.dropped"] == {"lost at shutdown": lost["by_kind"]["webhook"]}
    assert any("in flight, all lost" in e["what"] for e in outage["events"])


def test_the_critical_path_stays_fast(outage):
    assert outage["latency_ms"]["p50"] < 300
    assert outage["latency_ms"]["p99"] < 1_000
    assert outage["payments"]["stuck"] == 0


def test_summary_keys_that_measure_memory_are_marked_as_bytes(outage):
    clean = strip_nondeterministic(outage.summary)["fire_and_forget"]
    assert "bytes_per_in_flight_task" not in clean
    assert "memory_bytes_per_min" not in clean["growth_while_endpoints_hang"]
    assert clean["growth_while_endpoints_hang"]["tasks_per_min"] is not None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_same_seed_same_run(backend):
    def once():
        result = _run(OUTAGE, duration=240.0, backend=backend, memory="off")
        return json.dumps(strip_nondeterministic({**result.summary, "series": result.series}), sort_keys=True)

    assert once() == once()


def test_least_squares_recovers_a_known_plane():
    rows = [[1.0, x, y] for x in range(5) for y in range(4)]
    fit = least_squares(rows, [2 + 3 * r[1] - 0.5 * r[2] for r in rows])
    assert fit == pytest.approx([2, 3, -0.5])
    assert least_squares([[1.0, 1.0]] * 5, [1.0] * 5) is None


@pytest.mark.slow
def test_black_friday_done_when(simulate):
    """The issue's figures: Black Friday against a normal day, default scale, seed 7."""
    normal = simulate("normal", 2, seed=SEED)
    friday = simulate("blackfriday", 2, seed=SEED)
    assert friday["tasks"]["peak_in_flight"] >= 10 * normal["tasks"]["peak_in_flight"]
    growth = friday["memory"]["peak_bytes"] - friday["memory"]["start_bytes"]
    normal_growth = normal["memory"]["peak_bytes"] - normal["memory"]["start_bytes"]
    assert growth >= 10 * normal_growth
    assert friday["latency_ms"]["p50"] < 300
    per_minute = _minute_ends(friday.series, "in_flight_tasks")
    assert all(later > earlier for earlier, later in zip(per_minute, per_minute[1:])), per_minute
    assert friday["fire_and_forget"]["lost_at_shutdown"]["total"] > 1_000
