"""The fault plan validates everything before applying anything."""

from __future__ import annotations

import pytest

from payflow_lab.core.domain import Tier
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.faults import LIMITS, EndpointMode, FaultPlan


def test_defaults_are_healthy():
    plan = FaultPlan()
    assert plan.traffic_multiplier == 1.0
    assert plan.endpoint_mode("mch_00001", Tier.STANDARD) == (EndpointMode.UP, 0.0)


def test_apply_changes_and_counts_revisions():
    plan = FaultPlan()
    applied = plan.apply({"traffic_multiplier": 10, "tier_modes": {"standard": "hang"}})
    assert applied["traffic_multiplier"] == 10.0
    assert plan.tier_modes[Tier.STANDARD] is EndpointMode.HANG
    assert plan.revision == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"webhook_error_rate": 1.5}, "webhook_error_rate"),
        ({"webhook_error_rate": -0.1}, "webhook_error_rate"),
        ({"traffic_multiplier": float("inf")}, "traffic_multiplier"),
        ({"traffic_multiplier": "lots"}, "traffic_multiplier"),
        ({"webhook_latency_multiplier": 0}, "webhook_latency_multiplier"),
        ({"webhook_hang_rate": True}, "webhook_hang_rate"),
        ({"tier_modes": {"gold": "up"}}, "tier_modes"),
        ({"tier_modes": {"standard": "sideways"}}, "tier_modes.standard"),
        ({"merchants": {"bad-id": {"mode": "down"}}}, "merchants"),
        ({"merchants": {"mch_00001": {"error_rate": 2}}}, "merchants.mch_00001.error_rate"),
        ({"merchants": {"mch_00001": {"colour": "red"}}}, "merchants.mch_00001"),
        ({"volume": 3}, "volume"),
    ],
)
def test_bad_changes_name_the_field(changes, field):
    with pytest.raises(ValidationError) as info:
        FaultPlan().apply(changes)
    assert info.value.field == field


def test_a_bad_value_leaves_the_plan_untouched():
    plan = FaultPlan()
    before = plan.snapshot()
    with pytest.raises(ValidationError):
        plan.apply({"traffic_multiplier": 5.0, "tier_modes": {"premium": "down"}, "webhook_error_rate": 7})
    assert plan.snapshot() == before
    assert plan.revision == 0


def test_extremes_of_every_knob_are_accepted():
    plan = FaultPlan()
    for name, (low, high) in LIMITS.items():
        plan.apply({name: low})
        plan.apply({name: high})
        assert getattr(plan, name) == high


def test_merchant_fault_overrides_and_clears():
    plan = FaultPlan()
    plan.apply({"merchants": {"mch_00002": {"mode": "up", "error_rate": 0.9}}, "webhook_error_rate": 0.1})
    assert plan.endpoint_mode("mch_00002", Tier.PREMIUM) == (EndpointMode.UP, 0.9)
    assert plan.endpoint_mode("mch_00003", Tier.PREMIUM) == (EndpointMode.UP, 0.1)
    plan.apply({"tier_modes": {"premium": "hang"}})
    assert plan.endpoint_mode("mch_00002", Tier.PREMIUM)[0] is EndpointMode.HANG
    plan.apply({"merchants": {"mch_00002": None}})
    assert "mch_00002" not in plan.merchants
    assert plan.snapshot()["tier_modes"]["premium"] == "hang"
