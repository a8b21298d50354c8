"""The no-argument ``payflow-lab``: the Key Metrics table, each measured cell computed from this run's summaries.

The narration's own runs (every phase, three scenarios for Phase 5, default
scale) take minutes; here the table is built from the same scenarios at scale
0.05 with memory measurement off, and :func:`narrate` is driven with those
runs in place of its own.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache

import pytest

import payflow_lab as pf
import payflow_lab.app.narrate as narration
from payflow_lab.app.narrate import RATIO_ROW, RATIO_TARGET, STORY_CLAIMS, key_metrics, latency_ratio, narrate
from payflow_lab.app.report import format_bytes, format_ms
from payflow_lab.core.errors import ValidationError

Results = dict[int, dict[str, pf.RunResult]]


@cache
def results() -> Results:
    def run(scenario: str, phase: int) -> pf.RunResult:
        return pf.run(scenario, phase=phase, seed=7, scale=0.05, memory="off")

    return {
        1: {"normal": run("normal", 1), "blackfriday": run("blackfriday", 1)},
        5: {"normal": run("normal", 5), "blackfriday": run("blackfriday", 5), "recovery": run("recovery", 5)},
    }


def rows_by_metric() -> dict[str, dict[str, str]]:
    return {row["metric"]: row for row in key_metrics(results())}


def test_the_table_has_the_storys_rows_beside_its_claims() -> None:
    rows = key_metrics(results())
    assert [r["metric"] for r in rows] == [*STORY_CLAIMS, RATIO_ROW]
    for row in rows[:-1]:
        assert (row["story_before"], row["story_after"]) == STORY_CLAIMS[row["metric"]]


def test_latency_cells_and_the_ratio_come_from_the_normal_day_runs() -> None:
    r = results()
    rows = rows_by_metric()
    before, after = (r[p]["normal"].summary["latency_ms"]["mean"] for p in (1, 5))
    latency = rows["payment latency (normal day, mean)"]
    assert (latency["measured_before"], latency["measured_after"]) == (format_ms(before), format_ms(after))
    ratio = latency_ratio(r)
    assert ratio == pytest.approx(before / after)
    assert ratio >= RATIO_TARGET
    assert rows[RATIO_ROW]["measured_after"] == f"{ratio:,.0f}x"


def test_webhook_failures_block_before_and_are_isolated_after() -> None:
    r = results()
    rows = rows_by_metric()
    before = r[1]["blackfriday"].summary
    after = r[5]["blackfriday"].summary
    cell = rows["webhook failures"]
    assert before["moments"]["throughput_zero_at"]
    frozen = before["moments"]["throughput_zero_at"]
    assert cell["measured_before"].startswith(f"blocking: payments frozen from {frozen}")
    assert f"{before['payments']['stuck']:,} stuck" in cell["measured_before"]
    webhook = after["side_effects"]["by_kind"]["webhook"]
    assert cell["measured_after"].startswith(
        f"isolated: {webhook['dead_lettered']:,} of {webhook['started']:,} webhooks not delivered"
    )
    assert format_ms(after["latency_ms"]["p50"]) in cell["measured_after"]
    bf = rows["payment latency (Black Friday, p50)"]
    assert bf["measured_before"] == f"frozen at {before['moments']['throughput_zero_at']}"
    assert bf["measured_after"] == format_ms(after["latency_ms"]["p50"])


def test_memory_and_recovery_cells() -> None:
    r = results()
    rows = rows_by_metric()
    for phase, column in ((1, "measured_before"), (5, "measured_after")):
        memory = r[phase]["blackfriday"].summary["memory"]
        expected = f"peak {format_bytes(memory['peak_bytes'] - memory['start_bytes'])} above start"
        assert rows["memory under load"][column] == expected
    seconds = r[5]["recovery"].summary["recovery_seconds"]
    assert isinstance(seconds, float) and seconds > 0
    recovery = rows["recovery time"]
    assert recovery["measured_after"] == (
        f"automatic: {seconds:,.0f} s from endpoint back to breaker closed and backlog delivered"
    )
    assert recovery["measured_before"].startswith("none within the run: frozen from")


def test_recovery_seconds_may_also_be_a_dict_of_merchants() -> None:
    r = results()
    recovery = r[5]["recovery"]
    patched = dataclasses.replace(
        recovery, summary={**recovery.summary, "recovery_seconds": {"mch_00001": 12.0, "mch_00002": 40.4}}
    )
    rows = {row["metric"]: row for row in key_metrics({1: r[1], 5: {**r[5], "recovery": patched}})}
    assert rows["recovery time"]["measured_after"].startswith("automatic: 40 s")


def test_narrate_prints_the_table_and_the_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(narration, "_runs", lambda phases, seed, scale, err: results())
    monkeypatch.setattr(narration, "Console", lambda **kw: pf_console(**kw))
    assert narrate(seed=7, scale=0.05) == 0
    out = capsys.readouterr().out
    assert "Key metrics: the story's claims beside this run's measurements" in out
    ratio = latency_ratio(results())
    assert f"= {ratio:,.0f}x (at least the {RATIO_TARGET:g}x" in out
    assert "Phase 5: production hardening" in out and "Phase 1: the synchronous pipeline" in out
    assert "recovery (one merchant failing 90% of webhooks 14:15-14:30)" in out
    for row in key_metrics(results()):
        assert row["measured_after"].split(" ")[0] in out


def test_narrate_json_carries_the_same_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(narration, "_runs", lambda phases, seed, scale, err: results())
    assert narrate(seed=7, scale=0.05, as_json=True) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["key_metrics"] == key_metrics(results())
    assert payload["latency_ratio"] == round(latency_ratio(results()), 2)
    assert set(payload["runs"]["5"]) == {"normal", "blackfriday", "recovery"}


def test_bad_arguments_are_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:
        raise AssertionError("no run may start with bad arguments")

    monkeypatch.setattr(narration, "_runs", never)
    with pytest.raises(ValidationError) as caught:
        narrate(scale=5.0)
    assert caught.value.field == "scale"


def pf_console(**options: object) -> object:
    """A wide console, so the table's cells are not folded across lines in the captured text."""
    from rich.console import Console

    return Console(width=400, **options)  # type: ignore[arg-type]
