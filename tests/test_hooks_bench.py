"""The "hook bus" benchmark group: its shape and its honesty (speed targets live in ``payflow-lab bench``)."""

from __future__ import annotations

import pytest

from payflow_lab.app.bench import BENCHMARKS
from payflow_lab.hooks.emit_cost import METHODS, bench_emit, measure_emit


def test_the_group_is_registered_with_payflow_lab_bench() -> None:
    assert BENCHMARKS["hook bus"] == "payflow_lab.hooks.emit_cost:bench_emit"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_measure_emit_times_every_method_on_both_backends(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from payflow_lab.hooks import emit_cost as bench

    monkeypatch.setattr(bench.gc, "collect", lambda: 0)  # a full collection of pytest's heap takes ~0.3 s
    results = measure_emit(backend, counts=(1, 3), batch=30, repeats=1)
    assert set(results) == {1, 3}
    for by_method in results.values():
        assert set(by_method) == set(METHODS)
        for method in ("floor", "bus", "tasks"):
            seconds = by_method[method]
            assert seconds is not None and 0 < seconds < 0.1


def test_measure_emit_refuses_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend must be"):
        measure_emit("curio")


def test_rows_carry_name_key_value_unit_and_the_headline_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    from payflow_lab.hooks import emit_cost as bench

    def fake(backend: str, **_: object) -> dict:
        return {
            n: {"floor": 1e-6 * n, "bus": 1.5e-6 * n, "tasks": 5e-5 * n, "pyee": None, "blinker": 3e-6 * n}
            for n in (1, 5, 25)
        }

    monkeypatch.setattr(bench, "measure_emit", fake)
    rows = bench_emit(quick=True)
    assert all({"name", "key", "value", "unit"} <= set(row) for row in rows)
    headline = rows[0]
    assert headline["key"] == "hooks.emit.target" and headline["value"] == 1.5 and headline["met"] is True
    keys = {row["key"] for row in rows}
    assert "hooks.emit.trio.subs25.bus" in keys
    assert not any(".pyee" in key for key in keys)  # not measured: no row, rather than a made-up one
    bus5 = next(row for row in rows if row["key"] == "hooks.emit.asyncio.subs5.bus")
    assert bus5["value"] == 7.5 and bus5["ratio_to_floor"] == 1.5 and "1.5x floor" in bus5["name"]
