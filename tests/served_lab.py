"""A ``jupyter lab`` started the way a learner starts it, watched through its runtime files and REST API.

Used by the tests of the workshop's front doors (``make lab``, the README's
conda line, Binder). :func:`isolated_environment` points HOME and every Jupyter
directory into a temporary folder; :class:`Served` starts the command in its
own process group, waits until the server's runtime file names a port that
answers, and stops the whole group.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 120.0  # a generous cap for a busy machine; the server is normally up in a few seconds


def isolated_environment(home: Path) -> dict[str, str]:
    """The current environment with HOME and every Jupyter directory inside ``home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "IPYTHON")) and k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    }
    for name, sub in {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
        "IPYTHONDIR": "ipython",
        "XDG_CONFIG_HOME": "xdg-config",
        "XDG_DATA_HOME": "xdg-data",
        "XDG_CACHE_HOME": "cache",
    }.items():
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
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.info = self._wait_for_server()

    def _wait_for_server(self) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{shlex.join(self.command)} exited with status {self.process.returncode} "
                    f"before serving anything:\n{self.tail()}"
                )
            for path in self.runtime.glob("jpserver-[0-9]*.json"):
                try:
                    info = json.loads(path.read_text())
                    self.get("api/status", info=info)
                    return info
                except (ValueError, OSError):
                    pass  # written but not complete, or not answering yet
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{shlex.join(self.command)} did not serve within {STARTUP_TIMEOUT:g} s:\n{self.tail()}"
                )
            time.sleep(0.2)

    def get(self, path: str, *, info: dict[str, Any] | None = None) -> tuple[int, str, str]:
        """GET ``path`` with the server's token: (status, content type, body)."""
        info = info or self.info
        request = urllib.request.Request(
            f"http://127.0.0.1:{info['port']}/{path.lstrip('/')}", headers={"Authorization": f"token {info['token']}"}
        )
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


def page_config(page: str) -> dict[str, Any]:
    """The ``jupyter-config-data`` JupyterLab puts in its HTML page."""
    match = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.DOTALL)
    assert match, "not a JupyterLab page"
    return json.loads(match.group(1))
