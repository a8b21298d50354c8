"""Is this kernel ready for the workshop? The checks Lesson 00 runs first.

Each check says what it looked for, what it found and whether that is enough.
Versions are compared with :mod:`packaging` (a dependency of Jupyter itself),
the minimums are those of ``pyproject.toml``. Three checks go beyond version
numbers because a version can be right while the thing still does not work:

* ``anywidget`` must be importable, because plotly 7's ``FigureWidget`` is
  built on it but does not install it;
* a ``FigureWidget`` must actually construct;
* virtual time must be virtual: an hour of ``anyio.sleep`` must take
  (almost) no real time.
"""

from __future__ import annotations

import html
import platform
import sys
import threading
import time
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

__all__ = ["REQUIREMENTS", "Check", "check_environment", "environment_html", "environment_ok"]

#: Distribution -> minimum version, as in pyproject.toml (engine, then notebook extras).
REQUIREMENTS: dict[str, str] = {
    "anyio": "4.16",
    "trio": "0.35",
    "tenacity": "9.2",
    "prometheus_client": "0.26",
    "rich": "15.0",
    "psutil": "7.2",
    "ipykernel": "7.4",
    "ipywidgets": "8.1.9",
    "plotly": "7.1",
    "anywidget": "0.11",
}


@dataclass(frozen=True)
class Check:
    """One line of the environment report."""

    name: str
    wanted: str
    found: str
    ok: bool


def _package(name: str, minimum: str) -> Check:
    try:
        found = version(name)
    except PackageNotFoundError:
        return Check(name, f">= {minimum}", "not installed", False)
    return Check(name, f">= {minimum}", found, Version(found) >= Version(minimum))


def _figure_widget() -> Check:
    try:
        import plotly.graph_objects as go

        go.FigureWidget()
    except Exception as exc:  # ImportError without anywidget, or anything else plotly raises
        return Check("plotly FigureWidget", "constructs", f"{type(exc).__name__}: {exc}", False)
    return Check("plotly FigureWidget", "constructs", "constructs", True)


def _virtual_time() -> Check:
    import anyio

    from payflow_lab.core.vtime import run_virtual

    async def an_hour() -> float:
        start = anyio.current_time()
        await anyio.sleep(3600)
        return anyio.current_time() - start

    box: dict[str, object] = {}

    def measure() -> None:  # in a thread of its own: a kernel's thread already runs an event loop
        wall = time.perf_counter()
        try:
            box["simulated"] = run_virtual(an_hour)
        except Exception as exc:
            box["error"] = exc
        box["wall"] = time.perf_counter() - wall

    thread = threading.Thread(target=measure, name="payflow-envcheck")
    thread.start()
    thread.join()
    if "error" in box:
        error = box["error"]
        return Check("virtual time", "1 h simulated in < 1 s", f"{type(error).__name__}: {error}", False)
    simulated, wall = float(box["simulated"]), float(box["wall"])  # type: ignore[arg-type]
    ok = abs(simulated - 3600) < 1e-6 and wall < 1.0
    return Check("virtual time", "1 h simulated in < 1 s", f"{simulated:,.0f} s simulated in {wall:.3f} s", ok)


def _phases() -> Check:
    from payflow_lab.phases import available_phases

    found = available_phases()
    return Check("payflow_lab phases", "1 at least", ", ".join(map(str, found)) or "none", 1 in found)


def check_environment() -> list[Check]:
    """Run every check; never raises (a failed check is a line with ``ok=False``)."""
    python = platform.python_version()
    checks = [Check("python", ">= 3.11", python, sys.version_info >= (3, 11))]
    checks += [_package(name, minimum) for name, minimum in REQUIREMENTS.items()]
    try:
        import_module("anywidget")
        checks.append(Check("anywidget importable", "yes", "yes", True))
    except ImportError as exc:
        checks.append(Check("anywidget importable", "yes", f"no ({exc})", False))
    checks += [_figure_widget(), _virtual_time(), _phases()]
    return checks


def environment_ok(checks: list[Check]) -> bool:
    """True if every check passed."""
    return all(check.ok for check in checks)


def environment_html(checks: list[Check]) -> str:
    """The checks as a small HTML table (green tick, red cross)."""
    rows = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(c.wanted)}</td><td>{html.escape(c.found)}</td>"
        f"<td style='color:{'#2e7d32' if c.ok else '#c62828'}'>{'✔' if c.ok else '✘'}</td></tr>"
        for c in checks
    )
    return (
        "<table class='payflow-env'><thead><tr><th>check</th><th>wanted</th><th>found</th><th></th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )
