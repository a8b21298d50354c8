"""Which Chromium the browser tests drive, and what happens when there is none.

Debian's Chromium (``/usr/bin/chromium``, or ``$PAYFLOW_CHROMIUM``) through
Playwright's sync API; ``playwright install`` is never needed and does not
work on this project's machines. Without Chromium or Playwright the browser
tests are skipped with the reason, and the terminal summary says loudly that
they did not run (see ``conftest.pytest_terminal_summary``). Under CI
(``CI=1`` or ``CI=true``) they fail instead: a CI run that did not test the
lessons in a browser is not green.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "NOT_RUN", "browser_missing", "in_ci", "not_run", "require_browser"]

CHROMIUM = Path(os.environ.get("PAYFLOW_CHROMIUM", "/usr/bin/chromium"))
#: As root, on this project's machines (closed network), Chromium needs all of these to reach 127.0.0.1.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The words that mark a skipped browser test, in its reason and in the terminal summary.
NOT_RUN = "BROWSER TESTS NOT RUN"

#: Reasons the browser tests were skipped in this session (for the terminal summary).
not_run: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return (
            f"Chromium not found at {CHROMIUM} (install it: apt-get install chromium, or run `make test` "
            "as root; or point PAYFLOW_CHROMIUM at one)"
        )
    return None


def require_browser() -> None:
    """Return if the browser tests can run; otherwise skip (locally, loudly) or fail (under CI)."""
    reason = browser_missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{NOT_RUN} under CI: {reason}", pytrace=False)
    not_run.append(reason)
    pytest.skip(f"{NOT_RUN}: {reason}")
