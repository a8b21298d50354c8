"""Phase 4: the hook bus on the critical path of Black Friday.

Runs are small (scale 0.05, memory off) to stay fast; the dynamics are the
same as at the default scale (see ``payflow-lab run --scenario blackfriday
--phase 4`` for the full-size figures).
"""

from __future__ import annotations

import json
import math
from functools import cache

import pytest

import payflow_lab as pf
from payflow_lab.core.recorder import strip_nondeterministic
from payflow_lab.core.world import SIDE_EFFECT_KINDS
from payflow_lab.phases import get_phase
from payflow_lab.phases.hook_bus import CAPACITY, HookBusPipeline

SCALE = 0.05
OVERLOAD = {"traffic_multiplier": 40.0, "webhook_hang_rate": 1.0}


@cache
def blackfriday() -> pf.RunResult:
    return pf.run("blackfriday", phase=4, seed=7, scale=SCALE, memory="off")


@cache
def overloaded() -> pf.RunResult:
    """Forty times the normal traffic and every webhook hanging: far beyond what the queues can hold."""
    return pf.run("normal", phase=4, seed=7, scale=SCALE, duration=600, memory="off", faults=OVERLOAD)


def test_phase_4_is_registered() -> None:
    cls = get_phase(4)
    assert cls is HookBusPipeline
    assert (cls.number, cls.name, cls.title) == (4, "hook_bus", "Phase 4: the hook bus")
    assert 4 in pf.available_phases()


def test_black_friday_payments_take_about_the_authorization_time() -> None:
    s = blackfriday().summary
    assert s["payments"]["stuck"] == 0
    assert s["payments"]["authorized"] > 0.95 * s["payments"]["attempted"]
    p50, auth_p50 = s["latency_ms"]["p50"], s["authorization_ms"]["p50"]
    assert auth_p50 <= p50 <= 1.10 * auth_p50
    assert s["latency_ms"]["max"] < 1000  # no payment ever waited for a webhook


def test_black_friday_hangs_become_timeouts_not_a_freeze() -> None:
    s = blackfriday().summary
    webhook = s["side_effects"]["by_kind"]["webhook"]
    assert s["side_effects"]["reasons"]["webhook.failed"]["timeout (5 s)"] > webhook["delivered"]
    assert s["moments"]["throughput_zero_at"] is None and s["moments"]["pool_exhausted_at"] is None
    assert s["hooks"]["subscribers"]["webhook"]["latency"]["max_ms"] == 5000.0


def test_every_side_effect_is_accounted_for() -> None:
    for result in (blackfriday(), overloaded()):
        fx = result.summary["side_effects"]
        assert fx["pending"] == 0
        for kind in SIDE_EFFECT_KINDS:
            counts = fx["by_kind"][kind]
            assert counts["started"] == result.summary["payments"]["authorized"]
            assert counts["started"] == counts["delivered"] + counts["failed"] + counts["dropped"]
        for key, reasons in fx["reasons"].items():
            kind, outcome = key.split(".")
            if outcome in ("failed", "dropped"):
                assert sum(reasons.values()) == fx["by_kind"][kind][outcome], key  # every one with a reason


def test_overload_rejects_whole_emissions_with_reasons_and_payments_do_not_notice() -> None:
    s = overloaded().summary
    assert s["payments"]["stuck"] == 0
    assert s["latency_ms"]["p50"] <= 1.10 * s["authorization_ms"]["p50"]
    reasons = s["side_effects"]["reasons"]
    hooks = s["hooks"]["subscribers"]
    rejected = {kind: hooks[kind]["rejected"] for kind in SIDE_EFFECT_KINDS}
    assert min(rejected.values()) > 0 and len(set(rejected.values())) == 1  # all-or-nothing: same for all five
    culprits = {kind for kind in SIDE_EFFECT_KINDS if "rejected: queue full" in reasons.get(f"{kind}.dropped", {})}
    assert culprits
    for kind in SIDE_EFFECT_KINDS:
        dropped = reasons[f"{kind}.dropped"]
        assert sum(n for why, n in dropped.items() if why.startswith("rejected: ")) == rejected[kind]
    assert any(e["what"].startswith("hook queue full") for e in s["events"])


def test_memory_is_bounded_by_the_queues() -> None:
    result = overloaded()
    hooks = result.summary["hooks"]["subscribers"]
    workers = sum(h["workers"] for h in hooks.values())
    for kind in SIDE_EFFECT_KINDS:
        column = result.series[f"queue_{kind}"]
        assert len(column) == len(result.series["t"]) and None not in column
        assert max(column) <= hooks[kind]["queue_size"]
        assert hooks[kind]["queue_size"] == max(10, math.ceil(CAPACITY[kind][1] * SCALE))
    in_flight = result.series["in_flight_tasks"]
    payments = result.series["in_flight_payments"]
    assert all(t <= p + workers for t, p in zip(in_flight, payments))  # tasks bounded by the worker pools
    assert result.summary["tasks"]["end_in_flight"] == 0


def test_shutdown_drains_with_a_deadline_and_reports_what_it_cut() -> None:
    s = overloaded().summary
    shutdown = s["hooks"]["shutdown"]
    assert shutdown["deadline_s"] == 10.0 and shutdown["totals"]["abandoned"] == 0
    cut = shutdown["totals"]["cancelled"] + shutdown["totals"]["never_started"]
    dropped_at_shutdown = sum(
        n
        for key, reasons in s["side_effects"]["reasons"].items()
        for why, n in reasons.items()
        if key.endswith(".dropped") and not why.startswith("rejected")
    )
    assert cut == dropped_at_shutdown > 0
    assert any(e["what"].startswith("hook bus shut down") for e in s["events"])
    for stats in s["hooks"]["subscribers"].values():
        assert stats["queued"] == stats["running"] == 0
        assert stats["admitted"] == stats["completed"] + stats["failed"] + stats["timed_out"] + stats["cancelled"]


def test_the_summary_is_json_and_deterministic_on_trio() -> None:
    runs = [
        pf.run("blackfriday", phase=4, seed=11, scale=0.02, duration=2100, backend="trio", memory="off")
        for _ in range(2)
    ]
    a, b = (json.dumps(strip_nondeterministic(r.summary), sort_keys=True) for r in runs)
    assert a == b
    assert runs[0].summary["side_effects"]["pending"] == 0
    assert set(runs[0].summary["hooks"]["subscribers"]) == set(SIDE_EFFECT_KINDS)


def test_cli_json_carries_the_hooks_section(capsys: pytest.CaptureFixture[str]) -> None:
    from payflow_lab.app.cli import main

    assert main(["run", "--scenario", "normal", "--phase", "4", "--duration", "120", "--memory", "off", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["phase"] == 4 and data["phase_name"] == "hook_bus"
    assert set(data["hooks"]["subscribers"]) == set(SIDE_EFFECT_KINDS)
    assert data["hooks"]["shutdown"]["drained"] in (True, False)


@pytest.mark.slow
def test_black_friday_memory_stays_within_twice_a_normal_day(simulate) -> None:
    """Peak traced memory above the start, Black Friday against a normal afternoon of the same length.

    Same length, because the recorder's per-second series (part of the measured heap) grows with
    the length of a run whatever the traffic; equal windows leave the load as the only difference.
    """
    bf = simulate("blackfriday", 4).summary
    normal = simulate("normal", 4, duration=70 * 60).summary
    growth = {
        name: s["memory"]["peak_bytes"] - s["memory"]["start_bytes"]
        for name, s in (("blackfriday", bf), ("normal", normal))
    }
    assert bf["memory"]["how"].startswith("tracemalloc")
    assert 0 < growth["blackfriday"] <= 2 * growth["normal"], growth
    assert bf["latency_ms"]["p50"] <= 1.10 * bf["authorization_ms"]["p50"]
    assert bf["side_effects"]["pending"] == 0
