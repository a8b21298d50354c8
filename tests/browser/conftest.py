"""Fixtures for the browser tests: one JupyterLab server and one Chromium per module, a fresh page per test.

Module scope, not session scope, so that the server and its kernels are gone
before the next module (and nbval's notebooks, later in the same ``make
test`` run) starts. When Chromium is missing the tests are skipped, and
:func:`pytest_terminal_summary` ends the run with a loud line saying so (see
:mod:`chromium`; under CI they fail instead).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, NOT_RUN, not_run, require_browser
from labserver import LabServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NOT_RUN in str(r.longrepr)]
    if not skipped and not not_run:
        return
    reason = not_run[0] if not_run else "see the skip reasons above"
    terminalreporter.write_sep("!", f"{NOT_RUN}: {len(skipped)} lesson test(s) skipped", red=True, bold=True)
    terminalreporter.write_line(f"  {reason}", red=True, bold=True)
    terminalreporter.write_line(
        "  The lessons were NOT checked in a browser. Under CI=1 this is a failure.", red=True, bold=True
    )


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """A JupyterLab server on a copy of ``lessons/``, with every Jupyter directory in a temporary place."""
    require_browser()
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"), ROOT / "lessons")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright, with a temporary HOME (its crash reports, dconf)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("chromium-home")
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, env=env)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def notebook(browser, lab_server: LabServer, request: pytest.FixtureRequest):
    """A fresh browser context and page on the server; its kernels are shut down afterwards."""
    from notebook_page import NotebookPage

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = NotebookPage(context.new_page(), lab_server)
    try:
        yield page
    finally:
        context.close()
        lab_server.shutdown_kernels()


@pytest.fixture
def evidence_dir(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/browser/<test name>/``, emptied: where a failing test leaves its screenshot and console."""
    readable = request.node.name.replace("[", "-").rstrip("]")  # test_lesson_in_the_browser-01_synchronous.ipynb
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in readable)
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    return folder
