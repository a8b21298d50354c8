"""The workshop's front door: ``make lab`` and the README's conda-route line serve the first lesson.

Each test starts the real command, exactly as a learner types it (``make lab``,
or the ``jupyter lab ...`` line read from README.md, so the two cannot drift),
adding only what a test needs: no browser and a free port (``PORT=0``; the
server picks one and writes it to its runtime file). Jupyter's directories and
HOME point into a temporary folder, so the learner's own settings neither help
nor hinder. Then, over HTTP:

* the server's root is ``lessons/`` and the file it opens for the learner is
  ``00_start_here.ipynb`` (the "open this file" page Jupyter writes);
* the contents API serves that notebook, and the lab page for it loads;
* the learner defaults hold: no news prompt, no update check (the
  ``overrides.d`` file the package installs), a read-only extension manager.

The server is stopped at the end (its whole process group), test failing or not.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON = "00_start_here.ipynb"
STARTUP_TIMEOUT = 120.0  # a generous cap for a busy machine; the server is normally up in a few seconds


def isolated_environment(home: Path) -> dict[str, str]:
    """The current environment with HOME and every Jupyter directory inside ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "IPYTHON")) and k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    for name, sub in {"HOME": "home", "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                      "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
                      "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces", "IPYTHONDIR": "ipython",
                      "XDG_CONFIG_HOME": "xdg-config", "XDG_DATA_HOME": "xdg-data",
                      "XDG_CACHE_HOME": "cache"}.items():
        path = home / sub
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env["BROWSER"] = "false"  # belt and braces: nothing may open a browser on the test machine
    return env


class Served:
    """A ``jupyter lab`` started by ``command`` in ``cwd``; what its runtime files and REST API say."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.command, self.log = command, log
        self.runtime = Path(env["JUPYTER_RUNTIME_DIR"])
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.info = self._wait_for_server()

    def _wait_for_server(self) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{shlex.join(self.command)} exited with status {self.process.returncode} "
                                     f"before serving anything:\n{self.tail()}")
            for path in self.runtime.glob("jpserver-[0-9]*.json"):
                try:
                    info = json.loads(path.read_text())
                    self.get("api/status", info=info)
                    return info
                except (ValueError, OSError):
                    pass  # written but not complete, or not answering yet
            if time.monotonic() > deadline:
                raise AssertionError(f"{shlex.join(self.command)} did not serve within {STARTUP_TIMEOUT:g} s:\n"
                                     f"{self.tail()}")
            time.sleep(0.2)

    def get(self, path: str, *, info: dict[str, Any] | None = None) -> tuple[int, str, str]:
        """GET ``path`` with the server's token: (status, content type, body)."""
        info = info or self.info
        request = urllib.request.Request(f"http://127.0.0.1:{info['port']}/{path.lstrip('/')}",
                                         headers={"Authorization": f"token {info['token']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()

    def get_json(self, path: str) -> Any:
        status, kind, body = self.get(path)
        assert status == 200 and "json" in kind, (path, status, kind)
        return json.loads(body)

    def opened_file_url(self) -> str:
        """The URL Jupyter opens in the learner's browser for the file it was given."""
        page = self.runtime / f"jpserver-file-to-run-{self.info['pid']}-open.html"
        assert page.exists(), f"Jupyter was given no file to open (no {page.name}):\n{self.tail()}"
        match = re.search(r'href="([^"]+)"', page.read_text())
        assert match, page.read_text()
        return match.group(1)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)


def check_serves_the_first_lesson(served: Served) -> None:
    assert Path(served.info["root_dir"]).resolve() == (ROOT / "lessons").resolve()
    assert served.opened_file_url().split("?")[0].endswith(f"/lab/tree/{LESSON}")

    model = served.get_json(f"api/contents/{LESSON}?content=1")
    assert (model["type"], model["name"]) == ("notebook", LESSON)
    committed = json.loads((ROOT / "lessons" / LESSON).read_text(encoding="utf-8"))
    assert len(model["content"]["cells"]) == len(committed["cells"])

    status, kind, page = served.get(f"lab/tree/{LESSON}")
    assert status == 200 and kind.startswith("text/html")
    config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                  page, re.S).group(1))
    manager = config["extensionManager"]
    assert (manager["name"], manager["can_install"]) == ("read-only", False), manager

    # The package's overrides.d file changes the schema's defaults; the isolated user has no settings of their own.
    notifications = served.get_json("lab/api/settings/@jupyterlab/apputils-extension:notification")
    defaults = {name: spec.get("default") for name, spec in notifications["schema"]["properties"].items()}
    effective = {**defaults, **notifications["settings"]}
    assert effective["fetchNews"] == "false", "learners would be asked about Jupyter news"
    assert effective["checkForUpdates"] is False, "learners would be told about JupyterLab updates"


@pytest.fixture
def run_lab(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def run(command: list[str], env: dict[str, str] | None = None) -> Served:
        served = Served(command, ROOT, env or isolated_environment(tmp_path), tmp_path / "server.log")
        started.append(served)
        return served

    yield run
    for served in started:
        served.stop()
        assert served.process.poll() is not None


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_serves_the_first_lesson(run_lab: Any, tmp_path: Path) -> None:
    command = ["make", "lab", "PORT=0", "LAB_ARGS=--no-browser"]
    venv = Path(sys.prefix)
    if venv.resolve() != (ROOT / ".venv").resolve():
        # Tests run from another environment (the conda route): the same recipe, with its jupyter, and no
        # attempt to create or update .venv on the way.
        command += [f"VENV={venv}", "-o", f"{venv}/.payflow-lab"]
    served = run_lab(command)
    check_serves_the_first_lesson(served)
    log = served.tail(200)
    assert "Running as root" not in log
    if os.geteuid() == 0:
        assert "--allow-root" in log.splitlines()[0]  # make echoes its recipe first


def readme_conda_route() -> tuple[list[str], str]:
    """The README's conda-route block, and its `jupyter lab` line (without its trailing comment)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The conda route"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1).splitlines()
    line = next(line for line in block if line.startswith("jupyter lab "))
    return block, line


def test_the_readmes_conda_route_line_serves_the_first_lesson(run_lab: Any, tmp_path: Path) -> None:
    block, line = readme_conda_route()
    env_name = re.search(r"^name:\s*(\S+)", (ROOT / "environment.yml").read_text(), re.M).group(1)
    assert f"conda activate {env_name}" in block, "the README activates another environment than environment.yml"
    command, _, comment = line.partition("#")
    argv = shlex.split(command)
    if os.geteuid() == 0:  # what the README's comment tells a root user to add
        assert "--allow-root" in comment, f"the README does not tell root what to add: {line!r}"
        argv.append("--allow-root")
    env = isolated_environment(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # what `conda activate` does
    served = run_lab([*argv, "--no-browser", "--port=0"], env)
    check_serves_the_first_lesson(served)
