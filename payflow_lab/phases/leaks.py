"""Measuring leaks from a run: growth rates from its series, and the work a stopping process loses.

Phases 2 and 3 leak in different ways; these helpers measure both the same
way, from what the recorder saw, so that the figures in a summary are
measurements of this run and never constants typed into a phase.

* :func:`endpoints_hanging` is a series gauge: 1 while the fault plan makes
  some webhook endpoints hang, 0 otherwise. It marks the window in which a
  phase without real timeouts piles up work.
* :func:`growth_while_hanging` fits a least-squares line to the in-flight
  tasks and to the memory series inside that window: growth per simulated
  minute.
* :func:`bytes_per_task` fits memory against in-flight tasks: heap bytes per
  task, measured (an upper bound; see there).
* :func:`lose_pending` records every side effect that was started and never
  finished as ``dropped``, by kind, with a reason: what the process loses
  when it stops.
"""

from __future__ import annotations

from typing import Any

from payflow_lab.core.faults import EndpointMode, FaultPlan
from payflow_lab.core.recorder import Recorder

__all__ = ["bytes_per_task", "endpoints_hanging", "growth_while_hanging", "least_squares", "lose_pending"]


def endpoints_hanging(faults: FaultPlan) -> int:
    """1 if any webhook endpoint hangs under ``faults`` (a hang rate, a hanging tier or merchant), else 0."""
    if faults.webhook_hang_rate > 0:
        return 1
    if any(mode is EndpointMode.HANG for mode in faults.tier_modes.values()):
        return 1
    return int(any(f.mode is EndpointMode.HANG for f in faults.merchants.values()))


def least_squares(rows: list[list[float]], ys: list[float]) -> list[float] | None:
    """Coefficients ``b`` minimising ``sum((y - b . row)**2)`` (include a 1 in each row for an intercept).

    Solves the normal equations by Gaussian elimination with partial
    pivoting; ``None`` when the columns are degenerate (too few samples, a
    constant column).
    """
    n = len(rows[0]) if rows else 0
    if n == 0 or len(rows) < n + 1:
        return None
    a = [[sum(r[i] * r[j] for r in rows) for j in range(n)] + [sum(r[i] * y for r, y in zip(rows, ys))]
         for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-9 * max(1.0, max(abs(v) for v in a[pivot][:n])):
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col])]
    return [a[i][n] / a[i][i] for i in range(n)]


def _slope(xs: list[float], ys: list[float]) -> float | None:
    fit = least_squares([[1.0, x] for x in xs], ys)
    return None if fit is None else fit[1]


def growth_while_hanging(series: dict[str, list[Any]]) -> dict[str, Any]:
    """Tasks and memory growth per simulated minute while endpoints hang (``endpoints_hanging`` == 1).

    ``memory_bytes_per_min`` is ``None`` when memory was not measured (a slope of 0 would claim it was flat).
    """
    rows = [i for i, flag in enumerate(series.get("endpoints_hanging", [])) if flag]
    if len(rows) < 3:
        return {"hang_seconds": len(rows), "tasks_per_min": None, "memory_bytes_per_min": None}
    t = [series["t"][i] for i in rows]
    tasks = _slope(t, [series["in_flight_tasks"][i] for i in rows])
    measured = any(series["memory_bytes"])  # all zeros: memory was not measured (--memory off), not flat
    memory = _slope(t, [series["memory_bytes"][i] for i in rows]) if measured else None
    return {
        "hang_seconds": len(rows),
        "tasks_per_min": None if tasks is None else round(tasks * 60, 1),
        "memory_bytes_per_min": None if memory is None else round(memory * 60),
    }


def bytes_per_task(series: dict[str, list[Any]]) -> int | None:
    """Heap bytes per in-flight task: the least-squares slope of memory against in-flight tasks over the run.

    An upper bound: the recorder's own bookkeeping (a few dozen bytes per
    payment) grows alongside the stuck tasks and is charged to them, about a
    tenth of the figure on Black Friday. Fitting payments seen as a second
    regressor would remove it, but not when tasks and payments grow in
    lockstep (an outage from the first second): the two columns are then
    nearly collinear and the split between them is arbitrary.
    """
    tasks, memory = series["in_flight_tasks"], series["memory_bytes"]
    if not any(memory):
        return None  # memory was not measured
    slope = _slope([float(n) for n in tasks], [float(m) for m in memory])
    return None if slope is None else round(slope)


def lose_pending(recorder: Recorder, reason: str) -> dict[str, Any]:
    """Record every started-but-unfinished side effect as ``dropped`` for ``reason``; return the counts."""
    by_kind: dict[str, int] = {}
    for kind, counts in sorted(recorder.side_effects.items()):
        pending = counts["started"] - sum(counts[o] for o in ("delivered", "failed", "dropped", "dead_lettered"))
        for _ in range(pending):
            recorder.side_effect_finished(kind, "dropped", reason=reason)
        if pending:
            by_kind[kind] = pending
    return {"total": sum(by_kind.values()), "by_kind": by_kind}
