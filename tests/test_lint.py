"""The code is kept clean by tools, with the settings pyproject.toml gives them.

* ruff finds nothing in the engine, the tools or the tests (``ruff check``);
* their layout is ruff's (``ruff format --check``): nobody argues about commas;
* mypy finds nothing in the package (``[tool.mypy]``): the public API's types hold.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PATHS = ["payflow_lab", "tools", "tests"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is part of the test extra: pip install -e '.[test]'"
    return found


def _run(*command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def test_ruff_finds_nothing() -> None:
    done = _run(_tool("ruff"), "check", "--no-cache", *PATHS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_formatted() -> None:
    done = _run(_tool("ruff"), "format", "--check", "--no-cache", *PATHS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    # A cache of its own: two test runs at once must not share one (mypy's cache is not made for that).
    done = _run(sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
