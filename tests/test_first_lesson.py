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
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served_lab import Served, isolated_environment, page_config

ROOT = Path(__file__).resolve().parents[1]
LESSON = "00_start_here.ipynb"


def check_serves_the_first_lesson(served: Served) -> None:
    assert Path(served.info["root_dir"]).resolve() == (ROOT / "lessons").resolve()
    assert served.opened_file_url().split("?")[0].endswith(f"/lab/tree/{LESSON}")

    model = served.get_json(f"api/contents/{LESSON}?content=1")
    assert (model["type"], model["name"]) == ("notebook", LESSON)
    committed = json.loads((ROOT / "lessons" / LESSON).read_text(encoding="utf-8"))
    assert len(model["content"]["cells"]) == len(committed["cells"])

    status, kind, page = served.get(f"lab/tree/{LESSON}")
    assert status == 200 and kind.startswith("text/html")
    manager = page_config(page)["extensionManager"]
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
        recipe = next(line for line in log.splitlines() if "jupyter lab" in line)  # make echoes its recipe
        assert "--allow-root" in recipe


def readme_conda_route() -> tuple[list[str], str]:
    """The README's conda-route block, and its `jupyter lab` line (without its trailing comment)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The conda route") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1).splitlines()
    line = next(line for line in block if line.startswith("jupyter lab "))
    return block, line


def test_the_readmes_conda_route_line_serves_the_first_lesson(run_lab: Any, tmp_path: Path) -> None:
    block, line = readme_conda_route()
    env_name = re.search(r"^name:\s*(\S+)", (ROOT / "environment.yml").read_text(), re.MULTILINE).group(1)
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
