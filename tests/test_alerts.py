"""PayFlow's alert rules: the rule file and its Python twins agree; replayed on the story, they fire on time."""

from __future__ import annotations

import re

import pytest
import yaml

import payflow_lab as pf
from payflow_lab.observe import RULES, RULES_YAML, Rule, Scraper, evaluate, verdict
from payflow_lab.observe.alerts import ratio


def _duration(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+)([smh])", text).groups()  # type: ignore[union-attr]
    return int(value) * {"s": 1, "m": 60, "h": 3600}[unit]


def test_the_rule_file_and_the_python_rules_are_the_same_rules() -> None:
    groups = yaml.safe_load(RULES_YAML)["groups"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}
    assert list(alerts) == [rule.name for rule in RULES]
    for rule in RULES:
        written = alerts[rule.name]
        assert written["labels"]["severity"] == rule.severity, rule.name
        assert _duration(written.get("for", "0s")) == rule.for_s, rule.name
        by = re.search(r"by \((\w+)\)", written["expr"])
        assert (by.group(1) if by else None) == rule.by, rule.name


def _scraped(phase: int, scenario: str) -> Scraper:
    scraper = Scraper()
    config = pf.RunConfig(
        scenario=scenario,
        phase=phase,
        seed=7,
        scale=0.05,
        memory="off",
        duration=50 * 60 if scenario == "blackfriday" else None,
    )
    pf.run_config(config, on_tick=scraper.scrape)
    return scraper


@pytest.fixture(scope="module")
def black_friday_phase_1() -> Scraper:
    return _scraped(1, "blackfriday")


def test_on_black_friday_phase_1_pages_before_the_freeze(black_friday_phase_1: Scraper) -> None:
    fired = {rule.name: evaluate(black_friday_phase_1, rule) for rule in RULES}
    # The story's afternoon (scale 0.05, seed 7): the pool filling pages at 14:20:30, minutes before the
    # freeze at 14:26:02; "no payment completes" fires three minutes after it.
    assert verdict(fired["DatabasePoolFilling"]) == "14:20:30"
    assert verdict(fired["PaymentsNotCompleting"]) == "14:29:15"
    assert verdict(fired["DatabasePoolFull"]) == "14:27:30"
    # Phase 1 exports no hook queues and no webhook counters by tier: those rules cannot see anything.
    assert fired["HookQueueSaturated"] is None and fired["DeadLettersRising"] is None


def test_phase_5_on_a_normal_afternoon_is_quiet() -> None:
    scraper = _scraped(5, "normal")
    assert {rule.name: verdict(evaluate(scraper, rule), rule.by) for rule in RULES} == {
        rule.name: "quiet" for rule in RULES
    }


def _series(values: list[float]) -> Scraper:
    scraper = Scraper(every=15.0)
    scraper.times = [i * 15.0 for i in range(len(values))]
    scraper.series = {("x", ()): dict(enumerate(values))}
    return scraper


def _rule(for_s: float) -> Rule:
    return Rule("X", "page", lambda p, i: {None: p.series[("x", ())][i]}, lambda v: v > 1, for_s, None)


def test_a_rule_fires_only_after_its_condition_held_for_its_for_clause() -> None:
    assert evaluate(_series([0, 2, 2, 2, 0]), _rule(30)) == {None: 45.0}  # pending at 15 s, fires at 45 s
    assert evaluate(_series([0, 2, 2, 0, 2, 2]), _rule(30)) == {}  # a dip starts it over
    assert evaluate(_series([2]), _rule(0)) == {None: 0.0}
    assert verdict(None) == "no data" and verdict({}) == "quiet"


def test_a_zero_denominator_is_no_data_not_a_value() -> None:
    assert ratio({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 4.0}) == {"b": 0.5}


def test_a_scrape_interval_out_of_range_is_refused() -> None:
    with pytest.raises(pf.ValidationError, match="every: must be between 1 and 3600 simulated seconds"):
        Scraper(every=0)
