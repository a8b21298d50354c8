"""The engine's import structure stays what docs/architecture.md draws: layers, no cycles.

Every ``import`` in ``payflow_lab`` counts, those inside functions included
(a deferred import is still a dependency). A module may import its own
layer or a lower one, never a higher one; no two modules may import each
other, directly or round a longer circle.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "payflow_lab"

#: The layers, lowest first, as docs/architecture.md lists them (by top-level module or subpackage).
LAYERS: list[set[str]] = [
    {"core"},  # domain, virtual time, the world, scenarios, the recorder
    {"resilience", "hooks"},  # the reusable parts: they know no payments
    {"phases"},  # the five pipelines
    {"runner", "summary"},  # running a phase through a scenario
    {"observe"},  # watching a run: Prometheus, alerts, the terminal dashboard
    {"durable", "lab", "challenges"},  # durable delivery; the notebook side
    {"app", "__init__", "__main__"},  # the front doors
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level else []
                module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                # "from . import world" names a module; "from .world import World" names a thing in one.
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name:
                    edges[name].add(target)
    return edges


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    for rank, layer in enumerate(LAYERS):
        if top in layer:
            return rank
    raise AssertionError(f"{module} is in no layer: add {top!r} to LAYERS and to docs/architecture.md")


MODULES = _modules()
EDGES = _imports(MODULES)


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def _upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets if _layer(b) > _layer(a))


def test_no_module_imports_a_higher_layer():
    assert _upward(EDGES) == []


#: Imports between packages of the same layer that docs/architecture.md allows: the runner builds the
#: summary the summary module defines; lesson 08's fleet view (lab) drives durable delivery's processes.
#: Nothing else in a layer imports a neighbour.
SIDEWAYS_ALLOWED = {("runner", "summary"), ("lab", "durable")}


def test_packages_of_one_layer_import_each_other_only_where_the_architecture_says():
    sideways = sorted(
        {
            (_top(a), _top(b))
            for a, targets in EDGES.items()
            for b in targets
            if _top(a) != _top(b) and _layer(a) == _layer(b) and _top(a) not in ("__init__", "__main__", "app")
        }
    )
    assert [edge for edge in sideways if edge not in SIDEWAYS_ALLOWED] == []


def test_no_import_cycles():
    assert _circles(EDGES) == []


def test_the_checks_see_an_upward_import_and_a_circle():
    # The two checks above on a made-up graph: the core importing the runner is upward, and a pair of
    # modules that import each other is a circle.
    edges = {
        "payflow_lab.core.world": {"payflow_lab.runner"},
        "payflow_lab.hooks.bus": {"payflow_lab.hooks.stats"},
        "payflow_lab.hooks.stats": {"payflow_lab.hooks.bus"},
    }
    assert _upward(edges) == [("payflow_lab.core.world", "payflow_lab.runner")]
    assert _circles(edges) == [["payflow_lab.hooks.bus", "payflow_lab.hooks.stats"]]


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(edges.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if module not in index:
            visit(module)
    return circles
