"""The public API is what ``payflow_lab/__init__.py`` and the public subpackages export, and lessons use only that.

docs/architecture.md says which subpackages are public and why the phase modules
count too (the lessons print and import them: they are the teaching material).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import payflow_lab as pf
from payflow_lab.core import errors

ROOT = Path(__file__).parent.parent
#: Packages whose ``__all__`` is public.
PUBLIC_PACKAGES = {
    "payflow_lab",
    "payflow_lab.challenges",
    "payflow_lab.resilience",
    "payflow_lab.hooks",
    "payflow_lab.durable",
    "payflow_lab.observe",
    "payflow_lab.lab",
    "payflow_lab.phases",
}
#: The five phases and Phase 5's webhook path: the lessons print them, so their ``__all__`` is public too.
PHASE_MODULES = {
    f"payflow_lab.phases.{name}"
    for name in ("sync", "fire_and_forget", "channels", "hook_bus", "hardened", "webhook_lanes")
}


def _allowed(module: str, name: str) -> str | None:
    """Why ``from module import name`` is not public API, or None when it is."""
    if module not in PUBLIC_PACKAGES | PHASE_MODULES:
        return f"{module} is not a public module (import from payflow_lab or a public subpackage)"
    target = importlib.import_module(module)
    if name in getattr(target, "__all__", ()):
        return None
    if module == "payflow_lab.phases" and f"{module}.{name}" in PHASE_MODULES:
        return None
    if module == "payflow_lab" and f"payflow_lab.{name}" in PUBLIC_PACKAGES:
        return None
    return f"{name} is not in {module}.__all__"


def _problems(source: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "payflow_lab":
            for alias in node.names:
                why = _allowed(node.module or "", alias.name)
                if why:
                    problems.append(f"from {node.module} import {alias.name}: {why}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "payflow_lab" and alias.name not in PUBLIC_PACKAGES:
                    problems.append(f"import {alias.name}: not a public module")
    return problems


def _lesson_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines.append("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return "\n".join(lines)


@pytest.mark.parametrize("lesson", sorted((ROOT / "lessons").glob("*.ipynb")), ids=lambda p: p.name)
def test_lessons_import_only_the_public_api(lesson: Path) -> None:
    assert _problems(_lesson_code(lesson)) == []


def test_the_lesson_check_catches_a_deep_import() -> None:
    assert _problems("from payflow_lab.core.vtime import in_virtual_time") == [
        "from payflow_lab.core.vtime import in_virtual_time: payflow_lab.core.vtime is not a public module "
        "(import from payflow_lab or a public subpackage)"
    ]
    assert _problems("from payflow_lab.resilience import _checks") == [
        "from payflow_lab.resilience import _checks: _checks is not in payflow_lab.resilience.__all__"
    ]
    assert _problems("import payflow_lab.core.world") == ["import payflow_lab.core.world: not a public module"]
    assert _problems("import payflow_lab as pf\nfrom payflow_lab import lab, run, HardenedPipeline") == []


@pytest.mark.parametrize("package", sorted(PUBLIC_PACKAGES))
def test_every_exported_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    assert len(set(module.__all__)) == len(module.__all__)


def test_importing_the_engine_leaves_the_notebook_side_and_durable_delivery_unloaded() -> None:
    code = (
        "import sys, payflow_lab as pf; print(sorted(m for m in ('payflow_lab.lab', 'payflow_lab.durable', "
        "'ipywidgets', 'plotly', 'httpx') if m in sys.modules)); "
        "pf.Outbox; print('payflow_lab.durable' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_an_unknown_name_is_an_attribute_error_that_names_it() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Pipelines'"):
        pf.Pipelines  # noqa: B018


def _package_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(pf.__path__, "payflow_lab."):
        if info.name == "payflow_lab.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == info.name:
                found.append(value)
    return found


def test_every_exception_lives_in_the_errors_module_under_one_base() -> None:
    outside = sorted(
        f"{e.__module__}.{e.__qualname__}"
        for e in _package_exceptions()
        if not e.__name__.startswith("_") and e.__module__ != errors.__name__
    )
    assert outside == []
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.PayflowError), name
    assert issubclass(errors.ValidationError, ValueError) and issubclass(errors.PoolTimeout, TimeoutError)


def test_the_modules_that_raise_an_error_name_the_same_class() -> None:
    from payflow_lab.hooks import BusClosed
    from payflow_lab.resilience import BreakerOpen

    assert BreakerOpen is errors.BreakerOpen is pf.BreakerOpen
    assert BusClosed is errors.BusClosed is pf.BusClosed
