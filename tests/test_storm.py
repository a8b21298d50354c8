"""The retry-storm demo shows Brooker's effect: spikes without jitter, spread with it, bounded with a budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.vtime import BACKENDS
from payflow_lab.resilience.storm import POLICIES, StormResult, compare_storm, simulate_storm


@pytest.fixture(scope="module")
def storm() -> dict[str, StormResult]:
    return compare_storm(clients=100, outage_s=10.0, capacity_per_s=20, seed=3)


def test_every_caller_is_accounted_for(storm: dict[str, StormResult]) -> None:
    for result in storm.values():
        assert result.delivered + result.gave_up == result.clients
        assert result.replayed + result.undelivered == result.gave_up
        assert sum(result.load_per_s) == result.total_calls
        assert len(result.load_per_s) == len(result.served_per_s)
        assert all(
            0 <= s <= min(load, result.capacity_per_s)
            for load, s in zip(result.load_per_s, result.served_per_s, strict=True)
        )
        assert sum(result.served_per_s) == result.delivered + result.replayed  # each delivery served once
        assert sum(result.served_per_s[:10]) == 0  # nothing served while down


def test_without_jitter_the_crowd_comes_back_in_synchronized_spikes(storm: dict[str, StormResult]) -> None:
    result = storm["no_jitter"]
    after = result.load_per_s[10:]
    busy = [load for load in after if load]
    assert result.peak_load_after_recovery == result.clients  # everyone, in the same second
    assert len(busy) <= 6  # a few waves, silence between them
    assert sorted(busy, reverse=True) == busy and busy[0] == 100  # each wave the survivors of the last
    assert all(load > result.capacity_per_s for load in busy[:-1])  # each wave but the last overloads it


def test_full_jitter_spreads_the_load_and_finishes_sooner_with_fewer_calls(storm: dict[str, StormResult]) -> None:
    plain, jitter = storm["no_jitter"], storm["full_jitter"]
    assert jitter.delivered == plain.delivered == 100
    assert jitter.peak_load_after_recovery <= plain.peak_load_after_recovery / 4
    assert jitter.completion_s < plain.completion_s / 2
    assert jitter.total_calls < plain.total_calls


def test_a_budget_bounds_the_total_and_dead_letters_deliver_the_rest(storm: dict[str, StormResult]) -> None:
    result = storm["full_jitter_budget"]
    tokens, ratio = 20, 0.1
    retry_calls = result.total_calls - result.replay_calls
    assert retry_calls <= result.clients + tokens + ratio * result.clients
    assert retry_calls < storm["full_jitter"].total_calls / 3
    assert result.undelivered == 0 and result.delivered + result.replayed == result.clients
    # the replayer goes through a token bucket at the endpoint's capacity: it never overloads it
    assert max(result.load_per_s[11:]) <= result.capacity_per_s + 1
    assert result.completion_s < storm["full_jitter"].completion_s


@settings(max_examples=15, deadline=None)
@given(
    clients=st.integers(1, 150),
    outage=st.floats(0.0, 60.0),
    capacity=st.integers(1, 40),
    tokens=st.integers(1, 50),
    seed=st.integers(0, 10_000),
)
def test_the_budget_bound_holds_for_any_storm(
    clients: int, outage: float, capacity: int, tokens: int, seed: int
) -> None:
    result = simulate_storm(
        "full_jitter_budget", clients=clients, outage_s=outage, capacity_per_s=capacity, budget_tokens=tokens, seed=seed
    )
    assert result.total_calls - result.replay_calls <= clients + tokens + 0.1 * clients + 1e-9
    assert result.undelivered == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_storm(backend: str) -> None:
    one = simulate_storm("full_jitter", clients=40, seed=11, backend=backend)
    two = simulate_storm("full_jitter", clients=40, seed=11, backend=backend)
    other = simulate_storm("full_jitter", clients=40, seed=12, backend=backend)
    assert one == two
    assert one.load_per_s != other.load_per_s


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"policy": "exponential"}, "policy"),
        ({"clients": 0}, "clients"),
        ({"capacity_per_s": 0}, "capacity_per_s"),
        ({"outage_s": -1.0}, "outage_s"),
        ({"replay_every_s": 0}, "replay_every_s"),
        ({"budget_tokens": 0.5}, "budget_tokens"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"backend": "curio"}, "backend"),
    ],
)
def test_bad_storms_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        simulate_storm(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_compare_storm_runs_every_policy_and_only_those() -> None:
    results = compare_storm(clients=10, seed=1)
    assert list(results) == list(POLICIES)
    assert [r.policy for r in results.values()] == list(POLICIES)
    with pytest.raises(ValidationError):
        compare_storm(policy="no_jitter")
    assert results["no_jitter"].as_dict()["clients"] == 10
