"""The zero-install route: Binder (repo2docker) builds a learner's environment and opens the first lesson.

What can be checked without building an image: the configuration asks for a
Python the package supports, installs the package with the ``lab`` extra and
nothing of the test tools, its ``postBuild`` is a strict, executable script
whose settings JupyterLab accepts, and the README's badge opens a notebook that
exists. One step further, the test runs ``postBuild`` into a temporary home and
starts JupyterLab as Binder would (from the repository, with that home's
configuration), and the badge's ``urlpath`` serves the lesson with a read-only
extension manager.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from packaging.specifiers import SpecifierSet
from packaging.version import Version
from served_lab import Served, isolated_environment, page_config

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The Python versions repo2docker's Python buildpack offers (repo2docker 2026).
REPO2DOCKER_PYTHONS = {"3.10", "3.11", "3.12", "3.13", "3.14"}


def requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def binder_link() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        r"\[!\[[^\]]*Binder[^\]]*\]\(https://mybinder\.org/badge_logo\.svg\)\]\((https://mybinder\.org/"
        r"v2/gh/[^)]+)\)",
        readme,
    )
    assert match, "the README has no Binder badge linking to mybinder.org"
    return match.group(1)


def test_binder_installs_the_package_with_the_lab_extra_only() -> None:
    assert requirement_lines() == [".[lab]"]
    assert set(PYPROJECT["project"]["optional-dependencies"]) >= {"lab", "test"}
    # repo2docker reads only binder/ when it exists: no root-level file may be needed for the build
    assert not (BINDER / "environment.yml").exists(), "environment.yml would turn Binder into a conda build"


def test_binder_asks_for_a_python_the_package_supports() -> None:
    runtime = (BINDER / "runtime.txt").read_text().strip()
    name, _, wanted = runtime.partition("-")
    assert name == "python" and wanted in REPO2DOCKER_PYTHONS
    assert Version(wanted + ".0") in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_post_build_is_strict_and_executable() -> None:
    script = BINDER / "postBuild"
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_badge_opens_the_first_lesson() -> None:
    link = urlparse(binder_link())
    owner_repo = "/".join(link.path.split("/")[3:5])
    assert PYPROJECT["project"]["urls"]["Source"].rstrip("/").endswith(owner_repo)
    (urlpath,) = parse_qs(link.query)["urlpath"]
    assert urlpath.startswith("lab/tree/")
    target = ROOT / urlpath.removeprefix("lab/tree/")
    assert target == ROOT / "lessons" / "00_start_here.ipynb" and target.is_file()


def test_the_readme_says_jupyterlite_cannot_run_the_engine() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = next(p for p in readme.split("\n\n") if "JupyterLite" in p)
    assert "threads" in paragraph and "sockets" in paragraph and "cannot" in paragraph


def test_binder_serves_the_badges_lesson_as_a_learner_sees_it(tmp_path: Path) -> None:
    env = isolated_environment(tmp_path)
    home = Path(env["HOME"])
    subprocess.run(["bash", str(BINDER / "postBuild")], cwd=ROOT, env=env, check=True, timeout=60)
    env["JUPYTER_CONFIG_DIR"] = str(home / ".jupyter")  # where postBuild wrote; on Binder HOME is the repository
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--port=0"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # Binder runs as a normal user; this test may be root
    served = Served(command, ROOT, env, tmp_path / "server.log")
    try:
        (urlpath,) = parse_qs(urlparse(binder_link()).query)["urlpath"]
        status, _, page = served.get(urlpath)
        assert status == 200
        config = page_config(page)
        assert (config["extensionManager"]["name"], config["extensionManager"]["can_install"]) == ("read-only", False)
        lesson = served.get_json(f"api/contents/{urlpath.removeprefix('lab/tree/')}?content=0")
        assert lesson["type"] == "notebook"
    finally:
        served.stop()
