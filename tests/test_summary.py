"""The run summary is defined once (payflow_lab/summary.py); every run matches it, and its blocks agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import payflow_lab as pf
from payflow_lab.app.report import CORE_KEYS as REPORT_CORE_KEYS
from payflow_lab.summary import CORE_KEYS, PHASE_KEYS, RunSummary, check_summary

CONTRACT = Path(__file__).parent.parent / "docs" / "json-contract.md"
OUTCOMES = ("delivered", "failed", "dropped", "dead_lettered")


def _run(phase: int, scenario: str, seed: int) -> pf.RunResult:
    return pf.run(scenario, phase=phase, seed=seed, scale=0.02, duration=90, memory="off")


def _agreements(s: RunSummary) -> list[str]:
    """Every place where two blocks of one summary tell different stories."""
    broken = []
    pay = s["payments"]
    if pay["attempted"] != pay["authorized"] + pay["failed"] + pay["stuck"]:
        broken.append("payments: attempted != authorized + failed + stuck")
    if sum(pay["failed_by_reason"].values()) != pay["failed"]:
        broken.append("payments: failed_by_reason does not add up to failed")
    if sum(pay["stuck_by_reason"].values()) != pay["stuck"]:
        broken.append("payments: stuck_by_reason does not add up to stuck")
    if pay["stuck_authorized"] > pay["stuck"]:
        broken.append("payments: more stuck_authorized than stuck")
    fx = s["side_effects"]
    for outcome in (*OUTCOMES, "pending"):
        if fx[outcome] != sum(kind[outcome] for kind in fx["by_kind"].values()):
            broken.append(f"side_effects.{outcome} != the sum over by_kind")
    for name, kind in fx["by_kind"].items():
        if kind["pending"] != kind["started"] - sum(kind[o] for o in OUTCOMES) or kind["pending"] < 0:
            broken.append(f"side_effects.by_kind.{name}: pending is not started minus the outcomes")
    for key, reasons in fx["reasons"].items():
        kind, outcome = key.split(".")
        if sum(reasons.values()) != fx["by_kind"][kind][outcome]:
            broken.append(f"side_effects.reasons.{key} does not add up to by_kind.{kind}.{outcome}")
    tasks = s["tasks"]
    if tasks["end_in_flight"] > tasks["peak_in_flight"]:
        broken.append("tasks: more at the end than at the peak")
    if "channels" in s and s["channels"]["leaked_tasks"]["at_end"] != tasks["end_in_flight"]:
        broken.append("channels.leaked_tasks.at_end != tasks.end_in_flight")
    if "fire_and_forget" in s and s["fire_and_forget"]["peak_in_flight_tasks"] != tasks["peak_in_flight"]:
        broken.append("fire_and_forget.peak_in_flight_tasks != tasks.peak_in_flight")
    if "db_pool" in s and s["db_pool"]["size"] != s["db_pool_size"]:
        broken.append("db_pool.size != db_pool_size")
    if "dead_letters" in s and s["dead_letters"]["total"] < fx["by_kind"]["webhook"]["dead_lettered"]:
        broken.append("dead_letters.total is below the webhooks counted as dead-lettered")
    return broken


@pytest.mark.parametrize("phase", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("scenario", ["normal", "blackfriday", "recovery"])
def test_every_phase_and_scenario_matches_the_declared_tree(phase: int, scenario: str) -> None:
    summary = _run(phase, scenario, seed=1).summary
    assert check_summary(summary) == []
    assert _agreements(summary) == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    phase=st.integers(1, 5),
    scenario=st.sampled_from(["normal", "blackfriday", "recovery"]),
    seed=st.integers(0, 2**16),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_the_blocks_of_a_summary_agree(phase: int, scenario: str, seed: int, backend: str) -> None:
    summary = pf.run(scenario, phase=phase, seed=seed, scale=0.02, duration=60, memory="off", backend=backend).summary
    assert check_summary(summary) == []
    assert _agreements(summary) == []


def test_the_checks_name_what_is_wrong() -> None:
    summary = dict(_run(3, "blackfriday", seed=2).summary)
    del summary["moments"]
    summary["surprise"] = 1
    summary["payments"] = {**summary["payments"], "stuck": "many"}
    assert check_summary(summary) == [
        "summary.moments: missing",
        "summary.surprise: not declared in RunSummary",
        "summary.payments.stuck: expected int, got 'many'",
    ]
    broken = dict(_run(3, "blackfriday", seed=2).summary)
    leaked = broken["channels"]["leaked_tasks"]["at_end"]  # type: ignore[typeddict-item]
    broken["tasks"] = {"peak_in_flight": leaked + 9, "end_in_flight": leaked + 3}
    assert "channels.leaked_tasks.at_end != tasks.end_in_flight" in _agreements(broken)  # type: ignore[arg-type]


def test_the_report_prints_the_declared_core_keys() -> None:
    assert REPORT_CORE_KEYS == CORE_KEYS
    assert CORE_KEYS.isdisjoint(PHASE_KEYS)


def _contract_block() -> str:
    return re.search(r"```text\n(.*?)```", CONTRACT.read_text(), re.S).group(1)  # type: ignore[union-attr]


def test_the_contract_page_lists_exactly_the_declared_keys() -> None:
    top = set(re.findall(r'^  "(\w+)":', _contract_block(), re.M))
    assert top == set(CORE_KEYS)
    listed = re.search(r"Phase keys: (.*?)\.\n", CONTRACT.read_text(), re.S).group(1)  # type: ignore[union-attr]
    assert set(re.findall(r"`(\w+)`", listed)) == set(PHASE_KEYS)


def test_the_contract_page_names_every_nested_key() -> None:
    from typing import get_type_hints

    from payflow_lab import summary as types

    block = _contract_block()
    for tree in (
        types.Payments,
        types.Latency,
        types.SideEffectCounts,
        types.SideEffects,
        types.Memory,
        types.Tasks,
        types.Event,
        types.Moments,
        types.LittlesLaw,
    ):
        for key in get_type_hints(tree):
            assert f'"{key}"' in block, f"{tree.__name__}.{key} is not on docs/json-contract.md"
