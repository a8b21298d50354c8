"""A latency histogram with constant memory: percentiles without keeping every sample.

A bus that runs for days cannot keep a list of every handler's latency (that
list *is* a memory leak), and a plain average hides exactly what an operator
needs to see: the slow tail. So each subscriber keeps two histograms of the
same observations:

* **fine, log-spaced buckets** (each 8% wider than the one before, from 0.1 ms
  to beyond an hour): percentiles read from them are within 4% of the true
  value, in a few kilobytes, whatever the number of samples. This is the idea
  behind HdrHistogram and DDSketch, reduced to the one thing the bus needs.
* **coarse, Prometheus-style cumulative buckets** (``le`` = "less than or
  equal", seconds): the shape an alerting rule or a Grafana heatmap expects,
  so Phase 5 can export them unchanged.

Why not ``prometheus_client.Histogram``? It records the coarse buckets only
(no percentiles), and takes a lock per observation for thread safety the
event loop does not need. Nothing here reads a clock: the caller passes the
duration it measured with ``anyio.current_time()``, so the histogram is as
correct in virtual time as in real time.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

__all__ = ["COARSE_BOUNDS", "LatencyHistogram"]

#: Upper bounds (seconds) of the coarse cumulative buckets, as Prometheus would export them.
COARSE_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_SMALLEST = 1e-4  # seconds; everything faster lands in bucket 0
_GROWTH = 1.08
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = 240  # 1e-4 * 1.08**240 is about 10 hours; slower still goes in the last bucket


class LatencyHistogram:
    """Counts of durations (seconds) in log-spaced buckets, plus exact count, sum, min and max.

    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.observe(ms / 1000)
    >>> round(h.percentile(50) * 1000)   # within 4% of the true 50 ms
    49
    """

    __slots__ = ("_fine", "_coarse", "count", "total", "minimum", "maximum")

    def __init__(self) -> None:
        self._fine = [0] * (_BUCKETS + 1)
        self._coarse = [0] * (len(COARSE_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration. Negative or non-finite values are a caller's bug and are refused."""
        if not 0.0 <= seconds < math.inf:
            raise ValueError(f"seconds must be a finite, non-negative duration, got {seconds!r}")
        if seconds <= _SMALLEST:
            index = 0
        else:
            index = min(_BUCKETS, 1 + int(math.log(seconds / _SMALLEST) / _LOG_GROWTH))
        self._fine[index] += 1
        self._coarse[bisect.bisect_left(COARSE_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds
        if seconds < self.minimum:
            self.minimum = seconds
        if seconds > self.maximum:
            self.maximum = seconds

    @staticmethod
    def _middle(index: int) -> float:
        """The geometric middle of bucket ``index``: at most 4% from anything in the bucket."""
        return _SMALLEST * _GROWTH ** (index - 0.5) if index else _SMALLEST

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100), nearest rank, to within one bucket (4%); NaN if empty.

        The answer is the geometric middle of the bucket holding that rank,
        clipped to the smallest and largest value actually seen; the first
        and last ranks are the exact minimum and maximum.
        """
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be between 0 and 100, got {q!r}")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.count))
        if rank == self.count:
            return self.maximum
        if rank == 1:
            return self.minimum
        seen = 0
        for index, n in enumerate(self._fine):
            seen += n
            if seen >= rank:
                if index == _BUCKETS:  # the open-ended last bucket has no middle
                    return self.maximum
                return min(max(self._middle(index), self.minimum), self.maximum)
        return self.maximum  # pragma: no cover - the loop always reaches rank

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def cumulative(self) -> dict[str, int]:
        """Prometheus-style cumulative counts: ``{"le_0.005": n, ..., "le_+Inf": count}``."""
        out: dict[str, int] = {}
        running = 0
        for bound, n in zip(COARSE_BOUNDS, self._coarse):
            running += n
            out[f"le_{bound:g}"] = running
        out["le_+Inf"] = running + self._coarse[-1]
        return out

    def summary(self) -> dict[str, Any]:
        """Count and milliseconds (mean, p50, p90, p99, max), rounded for a JSON summary; ``None`` when empty."""
        if self.count == 0:
            return {"count": 0, "mean_ms": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "count": self.count,
            "mean_ms": round(self.mean * 1000, 3),
            "p50_ms": round(self.percentile(50) * 1000, 3),
            "p90_ms": round(self.percentile(90) * 1000, 3),
            "p99_ms": round(self.percentile(99) * 1000, 3),
            "max_ms": round(self.maximum * 1000, 3),
        }
