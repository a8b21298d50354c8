"""A lesson as a learner sees it: a JupyterLab page in Chromium, read and driven through Playwright.

:class:`NotebookPage` opens a notebook, runs it, and reads what the page
shows: error outputs, widgets, figures, the browser console.
:class:`SessionView` is one live session on that page (control panel plus
dashboard): it presses buttons, moves widgets the way a person does (typing
into a slider's readout, clicking a toggle), and reads the dashboard's
numbers from the DOM: plotly keeps a figure's data on its graph div
(``.data``, one object per trace, ``meta`` = the series column), and the
readout carries each number in ``data-value``.

JupyterLab is driven through its command registry (``window.jupyterapp``,
exposed by the server's ``expose_app_in_browser``), the same commands the
*Run* menu calls, so a test does not depend on menu positions or shortcuts.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labserver import KERNEL_DISPLAY_NAME, LabServer
from lessons_spec import Action, Sample, SetSlider, SetTier, Trace
from playwright.sync_api import ConsoleMessage, Error, Locator, Page

__all__ = ["CONSOLE_ALLOWED", "NotebookPage", "SessionView"]

#: Console errors that are understood and harmless, as (pattern, why). Anything else fails the test.
#: Empty on purpose: JupyterLab 4.6 with these lessons logs no error at all (only "debug" lines, and plotly's
#: "trace" warning about the "%H:%M" tick format, which are not errors). Add an entry only with its reason.
CONSOLE_ALLOWED: tuple[tuple[re.Pattern[str], str], ...] = ()

_STATUS_JS = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  const sc = w && w.sessionContext;
  const k = sc && sc.session && sc.session.kernel;
  return k ? {status: k.status, connection: k.connectionStatus, name: sc.kernelDisplayName,
              path: w.context.path} : null;
}"""

_CELLS_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  return Array.from(w.content.model.cells).filter(c => c.type === 'code')
    .map(c => ({source: c.sharedModel.getSource().trim().length > 0, count: c.executionCount}));
}"""

_ERRORS_JS = """() => Array.from(document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"],' +
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
  .map(e => ({mime: e.getAttribute('data-mime-type'), text: e.innerText}))"""

# x values are story-time date strings ("2026-11-27 14:15:00"); the tests read them as story milliseconds
# since the story day's midnight, the unit lessons_spec works in.
#: Console lines of any level that are failures: plotly warns (not errors) when an axis format does not fit
#: its type, as it did when the story-time axis was drawn as raw milliseconds.
CONSOLE_FORBIDDEN = re.compile(r"encountered bad format")

_TRACES_JS = """(root) => {
  const g = root.querySelector('.payflow-dashboard');
  if (!g || !g.data) return null;
  const day = Date.parse('2026-11-27T00:00:00Z');
  const ms = (x) => typeof x === 'string' ? Date.parse(x.replace(' ', 'T') + 'Z') - day : x;
  const out = {};
  for (const t of g.data) {
    if (t.meta && !String(t.meta).startsWith('event:')) {
      out[t.meta] = [Array.from(t.x || []).map(ms), Array.from(t.y || [])];
    }
  }
  return out;
}"""

_READOUT_JS = """(root) => Object.fromEntries(Array.from(root.querySelectorAll('.payflow-readout [data-metric]'))
  .map(e => [e.dataset.metric, e.dataset.value]))"""

_STATUS_LINE_JS = """(root) => {
  const s = root.querySelector('.payflow-status-line');
  return s ? {state: s.dataset.state, error: s.dataset.error, text: s.innerText} : null;
}"""

_VIEW_JS = f"""(root) => ({{status: ({_STATUS_LINE_JS})(root), readout: ({_READOUT_JS})(root),
                            traces: ({_TRACES_JS})(root)}})"""

_FIGURE_JS = """(root) => { const g = root.matches('.js-plotly-plot') ? root : root.querySelector('.js-plotly-plot');
  return g && g.data ? g.data.map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}))
                     : null; }"""

_RENDERING_JS = """() => {
  const problems = [];
  const size = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  document.querySelectorAll('.js-plotly-plot').forEach((g, i) => {
    if (!g.querySelector('.main-svg') || !g._fullLayout) problems.push(`plotly figure #${i + 1} was not drawn`);
    else if (!size(g)) problems.push(`plotly figure #${i + 1} has no size`);
    else if (g.closest('.payflow-dashboard-box') && g._fullLayout.xaxis && g._fullLayout.xaxis.type !== 'date')
      problems.push(`plotly figure #${i + 1}: the story-time axis is ${g._fullLayout.xaxis.type}, not date ` +
        `(its layout says ${JSON.stringify((g.layout.xaxis || {}).type)}; ${(g.data || []).length} traces)`);
  });
  document.querySelectorAll('.payflow-panel').forEach((p, i) => {
    if (!size(p)) problems.push(`control panel #${i + 1} has no size`);
    if (!p.querySelector('.payflow-start')) problems.push(`control panel #${i + 1} has no Start button`);
  });
  document.querySelectorAll('.jp-OutputArea-output').forEach((o) => {
    const text = o.innerText || '';
    if (/Error displaying widget|Failed to (load|create) (model|view)|model not found/i.test(text))
      problems.push(`a widget failed to display: ${text.slice(0, 200)}`);
  });
  return problems;
}"""


@dataclass(frozen=True)
class ConsoleEntry:
    kind: str
    text: str
    location: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text}" + (f"  ({self.location})" if self.location else "")


class NotebookPage:
    """One Chromium page on the test server, with its console recorded from the start."""

    def __init__(self, page: Page, server: LabServer) -> None:
        self.page = page
        self.server = server
        self.console: list[ConsoleEntry] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.console.append(ConsoleEntry("pageerror", str(error))))
        page.on("crash", lambda _page: self.console.append(ConsoleEntry("pageerror", "the page crashed")))

    def _on_console(self, message: ConsoleMessage) -> None:
        location = message.location or {}
        where = f"{location.get('url', '')}:{location.get('lineNumber', '')}" if location.get("url") else ""
        self.console.append(ConsoleEntry(message.type, message.text, where))

    # ---------------------------------------------------------------- open, run
    def open(self, name: str, timeout_s: float = 90.0) -> None:
        """Open ``name`` in a fresh workspace and wait until its kernel (this venv's) is idle."""
        self.page.goto(self.server.login_url(f"lab/tree/{name}?reset"))
        self.page.wait_for_function(
            f"(name) => {{ const s = ({_STATUS_JS})(); return s && s.path === name && s.status === 'idle' "
            "&& s.connection === 'connected'; }",
            arg=name,
            timeout=timeout_s * 1000,
            polling=200,
        )
        kernel = self.page.evaluate(_STATUS_JS)
        assert kernel["name"] == KERNEL_DISPLAY_NAME, (
            f"the notebook runs on kernel {kernel['name']!r}, not this venv's ({KERNEL_DISPLAY_NAME!r})"
        )

    def command(self, command: str) -> None:
        """Execute a JupyterLab command, without waiting for what it starts (Run All resolves late)."""
        self.page.evaluate("(c) => { window.jupyterapp.commands.execute(c); }", command)

    def run_all(self, timeout_s: float) -> None:
        """Clear every output, Run All Cells, and wait until the kernel is idle with every code cell run.

        Clearing first makes "every cell has an execution count" mean "every
        cell ran now": the committed notebook carries counts of its own.
        Waiting stops early when a cell shows an error (Run All stops there).
        """
        self.command("notebook:clear-all-cell-outputs")
        self.page.wait_for_function(f"() => ({_CELLS_JS})().every(c => c.count === null)", timeout=10_000)
        self.command("notebook:run-all-cells")
        deadline = time.monotonic() + timeout_s
        while True:
            cells = self.page.evaluate(_CELLS_JS)
            kernel = self.page.evaluate(_STATUS_JS)
            pending = [i for i, c in enumerate(cells, start=1) if c["source"] and c["count"] is None]
            if kernel and kernel["status"] == "idle" and (not pending or self.error_outputs()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Run All did not finish within {timeout_s:g} s: kernel "
                    f"{kernel and kernel['status']}, code cells not run: {pending}"
                )
            time.sleep(0.25)
        # The kernel is idle between two cells too: make sure it stays idle with nothing pending.
        time.sleep(0.5)
        cells = self.page.evaluate(_CELLS_JS)
        counts = [c["count"] for c in cells if c["source"]]
        errors = self.error_outputs()
        assert not errors, "a cell shows an error after Run All:\n" + "\n---\n".join(e["text"] for e in errors)
        assert counts == list(range(1, len(counts) + 1)), (
            f"execution counts after Run All are {counts}, expected 1..{len(counts)} in order"
        )

    # ------------------------------------------------------------------ reading
    def error_outputs(self) -> list[dict[str, str]]:
        """Error and stderr outputs on the page (``mime``, ``text``)."""
        return self.page.evaluate(_ERRORS_JS)

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def console_errors(self) -> list[ConsoleEntry]:
        """Console errors and uncaught page errors, minus :data:`CONSOLE_ALLOWED`."""
        return [
            entry
            for entry in self.console
            if (entry.kind in ("error", "pageerror") or CONSOLE_FORBIDDEN.search(entry.text))
            and not any(pattern.search(entry.text) for pattern, _why in CONSOLE_ALLOWED)
        ]

    def session(self, index: int) -> SessionView:
        sessions = self.page.locator(".payflow-session")
        assert sessions.count() > index, f"the page shows {sessions.count()} live sessions, expected #{index}"
        return SessionView(self, sessions.nth(index))

    def figure_data(self, selector: str) -> list[dict[str, Any]] | None:
        """The traces (``name``, ``x``, ``y``) of the plotly figure ``selector`` (or the one inside it)."""
        return self.page.locator(selector).first.evaluate(_FIGURE_JS)

    def rendering_problems(self) -> list[str]:
        """Figures not drawn, panels without size, widgets that failed to display (empty when all is well)."""
        return self.page.evaluate(_RENDERING_JS)

    def set_slider(self, root: Locator, value: float) -> None:
        """Type ``value`` into an ipywidgets slider's readout and press Enter; check the slider took it."""
        readout = root.locator(".widget-readout").first
        readout.scroll_into_view_if_needed()
        readout.click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(f"{value:g}")
        self.page.keyboard.press("Enter")
        shown = readout.inner_text().strip()
        try:
            ok = abs(float(shown.replace(",", "")) - value) <= 1e-6 * max(1.0, abs(value))
        except ValueError:
            ok = False
        assert ok, f"the slider shows {shown!r} after typing {value:g}"

    # ---------------------------------------------------------------- evidence
    def save_evidence(self, folder: Path, extra: dict[str, Any] | None = None) -> Path:
        """Screenshot, console, visible errors, widget states and the server log, into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        try:
            self.page.screenshot(path=str(folder / "screenshot.png"), full_page=True, timeout=15_000)
        except Error as exc:
            notes.append(f"no screenshot: {exc}")
        sessions = self.page.locator(".payflow-session")
        for index in range(sessions.count()):  # JupyterLab scrolls inside the notebook: the page shot may miss them
            try:
                sessions.nth(index).screenshot(path=str(folder / f"session-{index}.png"), timeout=15_000)
            except Error as exc:
                notes.append(f"no screenshot of session {index}: {exc}")
        (folder / "console.txt").write_text("\n".join(map(str, self.console)) + "\n")
        try:
            errors = self.error_outputs()
            views = [SessionView(self, sessions.nth(i)).snapshot() for i in range(sessions.count())]
        except Error as exc:
            errors, views = [], []
            notes.append(f"could not read the page: {exc}")
        (folder / "notebook-errors.txt").write_text(
            "\n---\n".join(f"[{e['mime']}]\n{e['text']}" for e in errors) or "(no error outputs on the page)\n"
        )
        (folder / "sessions.json").write_text(json.dumps({"sessions": views, **(extra or {})}, indent=1, default=str))
        if self.server.log_path.exists():
            shutil.copy(self.server.log_path, folder / "jupyterlab.log")
        if notes:
            (folder / "notes.txt").write_text("\n".join(notes) + "\n")
        return folder


class SessionView:
    """One ``.payflow-session`` on the page: its buttons, widgets, status line, readout and dashboard."""

    def __init__(self, notebook: NotebookPage, root: Locator) -> None:
        self.notebook = notebook
        self.root = root

    def status(self) -> dict[str, str]:
        """``state``, ``error`` ("true"/"false") and ``text`` of the status line."""
        line = self.root.evaluate(_STATUS_LINE_JS)
        assert line is not None, "the session shows no status line (.payflow-status-line)"
        return line

    def readout(self) -> Sample:
        return self._sample(self.root.evaluate(_READOUT_JS))

    @staticmethod
    def _sample(raw: dict[str, str]) -> Sample:
        metrics = {key: (float(value) if value not in ("", None) else None) for key, value in raw.items()}
        clock = metrics.get("clock")
        return Sample(clock if clock is not None else float("nan"), metrics)

    def read(self) -> tuple[dict[str, str], Sample, dict[str, Trace]]:
        """Status line, readout and traces in one round trip (the page is busy while a run is live)."""
        view = self.root.evaluate(_VIEW_JS)
        assert view["status"] is not None, "the session shows no status line (.payflow-status-line)"
        assert view["traces"] is not None, "the session has no plotly dashboard (.payflow-dashboard with data)"
        traces = {column: (x, y) for column, (x, y) in view["traces"].items()}
        return view["status"], self._sample(view["readout"]), traces

    def traces(self) -> dict[str, Trace]:
        traces = self.root.evaluate(_TRACES_JS)
        assert traces is not None, "the session has no plotly dashboard (.payflow-dashboard with data)"
        return {column: (x, y) for column, (x, y) in traces.items()}

    def snapshot(self) -> dict[str, Any]:
        """Status, readout and the last points of each trace, for failure evidence."""
        traces = self.root.evaluate(_TRACES_JS) or {}
        return {
            "status": self.root.evaluate(_STATUS_LINE_JS),
            "readout": self.root.evaluate(_READOUT_JS),
            "traces": {k: {"points": len(x), "last_x": x[-5:], "last_y": y[-5:]} for k, (x, y) in traces.items()},
        }

    def wait_clock(self, timeout_s: float = 15.0) -> Sample:
        """The first readout that shows a story time (a new run's readout is blank for a moment)."""
        deadline = time.monotonic() + timeout_s
        while True:
            sample = self.readout()
            if math.isfinite(sample.clock):
                return sample
            assert time.monotonic() < deadline, f"the readout showed no story time within {timeout_s:g} s"
            time.sleep(0.05)

    def wait_state(self, states: tuple[str, ...], timeout_s: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status["state"] in states:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the session stayed {status['state']!r} ({status['text']}), "
                    f"expected one of {states} within {timeout_s:g} s"
                )
            time.sleep(0.1)

    def press(self, button: str) -> None:
        """Click ``.payflow-<button>`` (start, pause, stop, reset); it must be enabled."""
        target = self.root.locator(f".payflow-{button}")
        target.scroll_into_view_if_needed()
        assert target.is_enabled(), f"the {button} button is disabled (status: {self.status()})"
        target.click()

    def perform(self, action: Action, timeout_s: float = 15.0) -> None:
        """Do ``action`` with the widget and wait until the status line shows the kernel applied it."""
        if isinstance(action, SetSlider):
            slider = self.root.locator(f".payflow-{action.control}")
            assert slider.count() == 1, f"no single slider .payflow-{action.control} in the session"
            self.notebook.set_slider(slider, action.value)
        elif isinstance(action, SetTier):
            toggle = self.root.locator(f".payflow-tier-{action.tier}")
            assert toggle.count() == 1, f"no single toggle .payflow-tier-{action.tier} in the session"
            button = toggle.locator("button", has_text=re.compile(rf"^\s*{re.escape(action.mode)}\s*$"))
            button.scroll_into_view_if_needed()
            button.click()
        else:  # pragma: no cover - the spec's types are closed
            raise TypeError(f"unknown action {action!r}")
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            assert status["error"] != "true", f"{action.describe()}: the panel refused it: {status['text']}"
            if action.acknowledged(status["text"]):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{action.describe()}: the status line never acknowledged it (it says {status['text']!r})"
                )
            time.sleep(0.05)
