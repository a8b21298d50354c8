"""Hatch build hook: the workshop (``lessons/``) travels inside the wheel as ``payflow_lab/_workshop/``.

``force-include`` in pyproject.toml would copy the directory whole, editor
leftovers included (``.ipynb_checkpoints/``, ``__pycache__/``); this hook adds
the lesson files one by one and leaves hidden files and caches behind. In a
source tree :mod:`payflow_lab.app.workshop` reads ``lessons/`` directly, so the
files are not duplicated in git.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "lessons"
TARGET = "payflow_lab/_workshop"


def workshop_files(root: Path) -> list[Path]:
    """Every file under ``lessons/`` that belongs to the workshop, relative to ``lessons/``."""
    base = root / SOURCE
    return sorted(
        path.relative_to(base) for path in base.rglob("*")
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                      for part in path.relative_to(base).parts)
    )


class WorkshopHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        files = workshop_files(root)
        if not any(path.suffix == ".ipynb" for path in files):
            raise RuntimeError(f"no lesson notebooks under {root / SOURCE}: the wheel would carry no workshop")
        for path in files:
            build_data["force_include"][str(root / SOURCE / path)] = f"{TARGET}/{path.as_posix()}"
