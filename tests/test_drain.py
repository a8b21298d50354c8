"""The end of a run: a slow payment is waited for, a stuck one is reported stuck."""

from __future__ import annotations

import pytest

import payflow_lab as pf
from payflow_lab.core.scenarios import get_scenario
from payflow_lab.runner import DRAIN_SECONDS, RunConfig, run_config


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_healthy_afternoon_leaves_nothing_stuck(seed):
    # Phase 1's tail is long (a webhook's three tries and four side effects, one after the other): with a
    # 30 s drain, healthy runs used to report a payment that was merely slow as "stuck in limbo".
    result = pf.run("normal", phase=1, seed=seed, memory="off")
    payments = result.summary["payments"]
    assert payments["stuck"] == 0, payments["stuck_by_reason"]
    assert payments["attempted"] == payments["authorized"] + payments["failed"]
    assert not any("stuck in limbo" in e["what"] for e in result.summary["events"])


def test_the_drain_ends_as_soon_as_nothing_is_in_flight():
    result = pf.run("normal", phase=2, seed=1, memory="off")
    # Phase 2's payments take a fraction of a second: the run is over within a second of the traffic's end.
    assert get_scenario("normal").duration <= result.summary["sim_seconds"] < get_scenario("normal").duration + 1.0


def test_payments_of_a_frozen_pipeline_are_stuck_after_the_drain():
    result = pf.run("blackfriday", phase=1, seed=7, memory="off")
    payments = result.summary["payments"]
    assert payments["stuck"] > 1000
    assert sum(payments["stuck_by_reason"].values()) == payments["stuck"]
    assert set(payments["stuck_by_reason"]) <= {
        "authorized, never finished (still in flight when the run ended)",
        "never authorized (still waiting when the run ended)",
    }
    # The drain waited its full length for them, and no longer.
    scenario = get_scenario("blackfriday")
    assert result.summary["sim_seconds"] == pytest.approx(scenario.duration + DRAIN_SECONDS, abs=1.0)


def test_a_shorter_drain_cuts_a_payment_off_and_says_so():
    result = run_config(RunConfig(scenario="normal", phase=1, seed=1, memory="off", drain_seconds=0.0))
    payments = result.summary["payments"]
    assert payments["stuck"] > 0
    assert payments["attempted"] == payments["authorized"] + payments["failed"] + payments["stuck"]
