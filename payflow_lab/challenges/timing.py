"""``payflow-lab bench``, group "challenges": how long a check takes, per challenge, on this machine.

Each reference is checked in a fresh process (so the first check of the alert challenge pays for its four
scraped afternoons, as a learner's first check does), and the row gives the real seconds it took. Target:
every check within 30 real seconds on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from payflow_lab.core.progress import note

__all__ = ["TARGET_S", "bench_checks"]

TARGET_S = 30.0


def bench_checks(quick: bool) -> list[dict[str, Any]]:
    """One row per challenge (its reference, checked in a fresh process), then the slowest against the target."""
    from payflow_lab.challenges import CHALLENGES

    rows: list[dict[str, Any]] = []
    for name in CHALLENGES:
        note(f"checking the reference of {name} in a fresh process")
        code = (
            f"from payflow_lab.challenges import check, get_challenge\n"
            f"assert check({name!r}, get_challenge({name!r}).reference).passed"
        )
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        rows.append(
            {
                "name": f"{name}: one check, in a fresh process (the interpreter's start included)",
                "key": f"challenges.{name}_s",
                "value": round(time.perf_counter() - started, 1),
                "unit": "s",
            }
        )
    slowest = max(row["value"] for row in rows)
    rows.append(
        {
            "name": f"the slowest check (target <= {TARGET_S:g} s)",
            "key": "challenges.slowest_s",
            "value": slowest,
            "unit": "s",
            "met": slowest <= TARGET_S,
        }
    )
    return rows
