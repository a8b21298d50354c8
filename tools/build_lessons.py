"""Regenerate the committed lesson notebooks from a clean kernel, or check that they are clean.

    python tools/build_lessons.py                 # every lessons/NN_*.ipynb
    python tools/build_lessons.py lessons/01_synchronous.ipynb
    python tools/build_lessons.py --check         # no kernel: report what is not clean

Building a notebook means: clear its outputs, run it top to bottom in a fresh
kernel of *this* interpreter (as "Restart & Run All" would), then remove what
must not be committed:

* saved widget state (``metadata.widgets``): it is stale the moment the kernel
  stops, and JupyterLab would try to revive it;
* widget views in outputs (their model ids point at that discarded state);
  they become a one-line note saying the widget appears when the cell runs;
* per-cell execution timestamps.

The result must pass :func:`problems`: no error outputs, execution counts
1, 2, 3, ... in order, no widget state, no machine paths, at least
:data:`MIN_CHECKED` cells marked ``# NBVAL_CHECK_OUTPUT``. A notebook that
fails is not written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
#: Each lesson checks at least this many deterministic cells with nbval.
MIN_CHECKED = 3
#: Seconds one cell may take while building.
CELL_TIMEOUT = 120
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "A live widget appears here when the cell runs."
#: Paths that betray the machine a notebook was built on.
MACHINE_PATHS = re.compile(r"(/home/[^/\s]+|/root/|/Users/[^/\s]+|C:\\\\Users|/tmp/[^\s]+|/work/[^\s]+)")


def lesson_paths() -> list[Path]:
    return sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _text_of(output: dict[str, Any]) -> str:
    parts: list[str] = []
    if "text" in output:
        parts.append("".join(output["text"]) if isinstance(output["text"], list) else output["text"])
    for value in output.get("data", {}).values():
        parts.append(json.dumps(value) if not isinstance(value, str) else value)
    return "\n".join(parts)


def problems(nb: dict[str, Any]) -> list[str]:
    """Everything that makes a committed notebook unclean (an empty list when it is clean)."""
    found: list[str] = []
    if "widgets" in nb.get("metadata", {}):
        found.append("notebook metadata holds saved widget state (metadata.widgets)")
    expected = 1
    checked = 0
    for number, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        if "# NBVAL_CHECK_OUTPUT" in source:
            checked += 1
        if not source.strip():
            continue
        count = cell.get("execution_count")
        if count != expected:
            found.append(f"cell {number}: execution count {count}, expected {expected}")
        expected = (count or expected) + 1
        if "execution" in cell.get("metadata", {}):
            found.append(f"cell {number}: execution timestamps in its metadata")
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append(f"cell {number}: error output {output.get('ename')}: {output.get('evalue')}")
            if output.get("name") == "stderr":
                found.append(f"cell {number}: output on stderr: {_text_of(output)[:120]!r}")
            if WIDGET_VIEW in output.get("data", {}):
                found.append(f"cell {number}: a widget view (model id) in its outputs")
            match = MACHINE_PATHS.search(_text_of(output))
            if match:
                found.append(f"cell {number}: a machine path in its output: {match.group(0)!r}")
    if checked < MIN_CHECKED:
        found.append(f"only {checked} cells marked # NBVAL_CHECK_OUTPUT (at least {MIN_CHECKED} wanted)")
    return found


def clean(nb: Any) -> Any:
    """Remove widget state, widget views and timing metadata from an executed notebook (in place)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and WIDGET_VIEW in data:
                output["data"] = {"text/plain": WIDGET_NOTE}
                output["metadata"] = {}
    return nb


def _kernel_manager() -> Any:
    """A kernel of the interpreter running this script, whatever kernelspecs the machine has."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python 3 (ipykernel)", language="python", resource_dir=str(LESSONS))

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def build(path: Path) -> float:
    """Execute ``path`` in a fresh kernel, clean it and write it back; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    kernelspec = dict(nb.metadata.get("kernelspec", {}))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    started = time.perf_counter()
    client = NotebookClient(nb, km=_kernel_manager(), timeout=CELL_TIMEOUT, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    seconds = time.perf_counter() - started
    clean(nb)
    nb.metadata["kernelspec"] = kernelspec or {"display_name": "Python 3 (ipykernel)", "language": "python",
                                               "name": "python3"}
    trouble = problems(nb)
    if trouble:
        raise SystemExit(f"{path.name} is not clean after building:\n  " + "\n  ".join(trouble))
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="lessons to build (default: all of them)")
    parser.add_argument("--check", action="store_true", help="only report problems; do not execute")
    args = parser.parse_args(argv)
    paths = args.notebooks or lesson_paths()
    status = 0
    for path in paths:
        if not path.exists():
            print(f"{path}: no such notebook", file=sys.stderr)
            return 2
        if args.check:
            trouble = problems(json.loads(path.read_text(encoding="utf-8")))
            for line in trouble:
                print(f"{path.name}: {line}")
            status |= bool(trouble)
        else:
            seconds = build(path)
            print(f"{path.name}: built in {seconds:.1f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
