"""A throwaway JupyterLab server for the browser tests: its own directories, its own kernel, no trace left.

:class:`LabServer` starts ``python -m jupyter lab`` from *this* interpreter on
127.0.0.1, on a free port, with a token. Everything Jupyter would normally
write under the user's home (config, data, runtime files, lab settings,
workspaces, IPython profile) goes to a temporary directory instead, and the
notebooks it serves are a temporary copy of ``lessons/``, so running a
lesson in the browser never touches the committed notebooks.

Three settings make the browser tests possible at all:

* ``LabApp.expose_app_in_browser``: JupyterLab puts its application object
  on ``window.jupyterapp``, so a test runs "Run All Cells" through the same
  command registry the menu uses, without depending on menu layout;
* the notebook's ``windowingMode`` is ``"none"``: JupyterLab 4 otherwise
  leaves cells that are scrolled out of view out of the page, and a test
  that counts figures or looks for error outputs would count only what is
  on screen;
* no news, no update check: the "Jupyter news" pop-up would cover the
  notebook, and fetching it needs the internet.

The kernel is this interpreter's: a kernelspec named ``python3`` (the name
the lessons' metadata asks for) with ``sys.executable`` spelled out is
written into the temporary data directory, which comes first on Jupyter's
data path, and :meth:`LabServer.start` checks through the REST API that
the server offers exactly that.

:meth:`LabServer.stop` shuts kernels down through the REST API, then ends
the server's process group (SIGTERM, SIGKILL after a timeout), then ends any
kernel process still alive. It is safe to call more than once and from a
fixture's teardown after a failed test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = ["KERNEL_DISPLAY_NAME", "LabServer", "LabServerError"]

#: The kernelspec's display name: a test can tell our kernel from any other ``python3``.
KERNEL_DISPLAY_NAME = "Python 3 (payflow-lab browser tests)"

#: Lab settings the tests need, as plugin defaults (``labconfig/default_setting_overrides.json``).
SETTING_OVERRIDES: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
}


class LabServerError(RuntimeError):
    """The server did not start, or does not look like what the tests need. Carries the log's tail."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabServer:
    """One JupyterLab process serving a copy of ``notebooks`` from under ``workdir``."""

    workdir: Path
    notebooks: Path
    startup_timeout: float = 60.0
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------- layout
    @property
    def root(self) -> Path:
        """The directory the server serves: a copy of the lessons."""
        return self.workdir / "root"

    @property
    def log_path(self) -> Path:
        return self.workdir / "jupyterlab.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """``path`` on this server (no token: the browser logs in once, see :meth:`login_url`)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def login_url(self, path: str) -> str:
        """``path`` with the token attached, which makes the server set its login cookie."""
        sep = "&" if "?" in path else "?"
        return f"{self.url(path)}{sep}token={self.token}"

    def environment(self) -> dict[str, str]:
        """The server's environment: every Jupyter and IPython directory, and HOME, inside ``workdir``."""
        dirs = {
            "HOME": "home",
            "JUPYTER_CONFIG_DIR": "config",
            "JUPYTER_DATA_DIR": "data",
            "JUPYTER_RUNTIME_DIR": "runtime",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython",
            "MPLCONFIGDIR": "matplotlib",
            "XDG_CACHE_HOME": "cache",
            "XDG_CONFIG_HOME": "xdg-config",
            "XDG_DATA_HOME": "xdg-data",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
        for name, sub in dirs.items():
            path = self.workdir / sub
            path.mkdir(parents=True, exist_ok=True)
            env[name] = str(path)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        # In a virtualenv Jupyter puts the environment's directories before the user's (JUPYTER_DATA_DIR)
        # on its search path, and the venv's own python3 kernelspec would win over ours.
        env["JUPYTER_PREFER_ENV_PATH"] = "0"
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # the debugger's "frozen modules" warning on stderr
        env.pop("JUPYTER_TOKEN", None)
        return env

    def _prepare(self) -> dict[str, str]:
        env = self.environment()
        shutil.copytree(self.notebooks, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        kernel_dir = Path(env["JUPYTER_DATA_DIR"]) / "kernels" / "python3"
        kernel_dir.mkdir(parents=True, exist_ok=True)
        (kernel_dir / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": KERNEL_DISPLAY_NAME,
                    "language": "python",
                    "metadata": {"debugger": False},
                },
                indent=1,
            )
        )
        labconfig = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "default_setting_overrides.json").write_text(json.dumps(SETTING_OVERRIDES, indent=1))
        return env

    def command(self) -> list[str]:
        """The server's command line: this interpreter's JupyterLab, on 127.0.0.1, with the token."""
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",  # fail rather than silently serve on another port
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # the default asks PyPI, which is no business of a test
            # If pytest is killed outright (no teardown), the orphans end themselves: kernels without a browser
            # are culled after ten idle minutes, and the server without kernels fifteen minutes later.
            "--MappingKernelManager.cull_idle_timeout=600",
            "--MappingKernelManager.cull_interval=60",
            "--ServerApp.shutdown_no_activity_timeout=900",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root; Jupyter refuses without this
            command.append("--ServerApp.allow_root=True")
        return command

    # ----------------------------------------------------------- lifecycle
    def start(self) -> LabServer:
        """Start the server and wait until its REST API answers with the token; check its kernelspec."""
        env = self._prepare()
        self.port = _free_port()
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise LabServerError(
                    f"JupyterLab exited with status {self.process.returncode} while starting\n{self.log_tail()}"
                )
            try:
                self.api("GET", "api/status", timeout=2.0)
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise LabServerError(
                        f"JupyterLab did not answer on {self.base_url} within "
                        f"{self.startup_timeout:g} s\n{self.log_tail()}"
                    ) from None
                time.sleep(0.2)
        self._check_kernelspec()
        return self

    def _check_kernelspec(self) -> None:
        specs = self.api("GET", "api/kernelspecs")
        python3 = specs.get("kernelspecs", {}).get("python3", {}).get("spec", {})
        argv = python3.get("argv", [])
        if python3.get("display_name") != KERNEL_DISPLAY_NAME or not argv or argv[0] != sys.executable:
            self.stop()
            raise LabServerError(
                f"the server offers the wrong python3 kernel: {python3!r}; expected argv[0] == {sys.executable!r}"
            )

    def api(self, method: str, path: str, *, timeout: float = 10.0) -> Any:
        """Call the REST API with the token; return the decoded JSON (``None`` for an empty body)."""
        request = urllib.request.Request(
            self.url(path), method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> int:
        """Delete every session and kernel through the REST API; return how many kernels there were."""
        if self.process is None or self.process.poll() is not None:
            return 0
        try:
            for session in self.api("GET", "api/sessions"):
                self.api("DELETE", f"api/sessions/{session['id']}", timeout=30.0)
            kernels = self.api("GET", "api/kernels")
            for kernel in kernels:
                self.api("DELETE", f"api/kernels/{kernel['id']}", timeout=30.0)
        except (OSError, urllib.error.URLError):
            return 0
        return len(kernels)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut kernels down, end the server's process group, and any kernel process left. Idempotent."""
        process = self.process
        if process is None:
            return
        children: list[psutil.Process] = []
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            pass
        self.shutdown_kernels()
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout)
        # Kernels run in sessions of their own (jupyter_client starts them so), outside the server's group.
        _gone, alive = psutil.wait_procs(children, timeout=timeout)
        for child in alive:
            try:
                child.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=timeout)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        tail = text.splitlines()[-lines:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(tail)
