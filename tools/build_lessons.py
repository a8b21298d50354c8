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

Then it makes the rebuild *reviewable*: building a lesson twice gives the same
bytes, and a diff shows what changed, not what merely varies between runs.

* The numbers of plotly figures are rounded (:func:`round_figure`: five
  significant digits, never fewer than three decimals, so millisecond
  timestamps stay exact) and trace ``uid``s, random per run, are dropped.
* Consecutive stream outputs of a cell are merged (the kernel splits a cell's
  prints into messages as its timing goes; JupyterLab shows them as one).
* A cell's new outputs that differ from the stored ones only by what varies
  between runs are replaced by the stored ones (:func:`stabilize`). What
  varies: wall-clock figures (the patterns of ``lessons/sanitize.cfg`` that
  nbval ignores too), and memory, which tracemalloc measures a little
  differently each run (measured: up to 2.2% of the peak on Phase 2's leak):
  a memory figure in text, or a memory trace of a figure (its ``meta`` or
  name says memory, or its axis is in MiB), may move by
  :data:`MEMORY_TOLERANCE` of its largest value or one unit of its last
  digit. Every other number must be equal: a simulated figure that changes is
  a change. Cells whose output is declared varying, with nbval's
  ``nbval-ignore-output`` tag or ``# NBVAL_IGNORE_OUTPUT`` comment (real
  HTTP, real time), keep their stored output while its text is the same with
  every number masked.
* Every plotly figure gets a static PNG beside its JSON (:func:`add_static_images`),
  drawn here with kaleido and Debian's Chromium (``$PAYFLOW_CHROMIUM`` or
  ``/usr/bin/chromium``; never a downloaded browser), so GitHub's preview and
  nbviewer, which cannot run plotly, show the plot. JupyterLab still shows the
  interactive figure; nbval ignores images.

The result must pass :func:`problems`: no error outputs, execution counts
1, 2, 3, ... in order, no widget state, no machine paths, at least
:data:`MIN_CHECKED` cells marked ``# NBVAL_CHECK_OUTPUT``, plotly figures
rounded and with their static image. A notebook that fails is not written.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import copy
import json
import math
import os
import re
import struct
import sys
import time
import zlib
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
PLOTLY = "application/vnd.plotly.v1+json"
STATIC = "image/png"
#: Significant digits kept in a figure's numbers (and never fewer than :data:`FIGURE_DECIMALS` decimals).
FIGURE_DIGITS = 5
FIGURE_DECIMALS = 3
#: A memory figure (in text, or a figure's memory trace) is the stored one if it moved by at most this share of
#: its largest value, or one unit of its last digit: tracemalloc's jitter between runs.
MEMORY_TOLERANCE = 0.05
#: Words that make a trace a memory measurement (in its meta or name, or its y axis' title).
MEMORY_WORDS = ("memory", "heap", "mib", "kib", "gib", "bytes")
#: What a cell whose output varies (real time) may change between builds: every number, hex address, port.
VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\d+(?:[.,]\d+)*")
#: Sanitizers of lessons/sanitize.cfg that hide wall-clock figures, which vary with every run.
WALL_CLOCK_SANITIZERS = ("wall_times",)
MEMORY_FIGURE = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)( ?(?:B|KiB|MiB|GiB|bytes)\b)")
#: Width of the static images, in CSS pixels (their height is the figure's own, 450 if it has none).
STATIC_WIDTH = 900
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
    for kind, value in output.get("data", {}).items():
        if kind.startswith("image/"):
            continue  # base64: any "/tmp/" in it would be chance, not a path
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
            figure = output.get("data", {}).get(PLOTLY)
            if figure is not None:
                if STATIC not in output["data"]:
                    found.append(f"cell {number}: a plotly figure without its static image ({STATIC}; make lessons)")
                if round_figure(copy.deepcopy(figure)) != figure:
                    found.append(f"cell {number}: a plotly figure whose numbers are not rounded (make lessons)")
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


# ------------------------------------------------------------------------ reviewable rebuilds
def _round_number(value: float) -> float:
    if not math.isfinite(value) or value == 0 or value.is_integer():
        return value
    exponent = math.floor(math.log10(abs(value)))
    return round(value, max(FIGURE_DECIMALS, FIGURE_DIGITS - 1 - exponent))


def _round_all(value: Any) -> Any:
    if isinstance(value, float):
        return _round_number(value)
    if isinstance(value, list):
        return [_round_all(item) for item in value]
    if isinstance(value, dict):
        return {key: _round_all(item) for key, item in value.items()}
    return value


def round_figure(figure: dict[str, Any]) -> dict[str, Any]:
    """A plotly figure's JSON with its traces' numbers rounded and their random ``uid`` dropped (in place)."""
    traces = figure.get("data")
    if isinstance(traces, list):
        for index, trace in enumerate(traces):
            if isinstance(trace, dict):
                trace.pop("uid", None)
                traces[index] = _round_all(trace)
    return figure


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def wall_clock_patterns(config: Path = LESSONS / "sanitize.cfg") -> list[tuple[re.Pattern[str], str]]:
    """The wall-clock sanitizers of nbval's ``sanitize.cfg``: the same figures vary between builds."""
    parser = configparser.ConfigParser()
    parser.read(config, encoding="utf-8")
    return [
        (re.compile(parser[name]["regex"]), parser[name]["replace"]) for name in WALL_CLOCK_SANITIZERS if name in parser
    ]


def _memory_close(a: str, b: str) -> bool:
    """Two printed memory figures ("44.3", "44.4") within :data:`MEMORY_TOLERANCE` or one unit of the last digit."""
    x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    decimals = max(len(a.partition(".")[2]), len(b.partition(".")[2]))
    return abs(x - y) <= max(MEMORY_TOLERANCE * max(abs(x), abs(y)), 10.0**-decimals * 1.0001)


def _volatile(cell: dict[str, Any]) -> bool:
    """nbval's own marks for a cell whose output varies between runs."""
    return "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []) or "# NBVAL_IGNORE_OUTPUT" in _text(
        cell.get("source", "")
    )


NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)")


def texts_equivalent(new: str, old: str, patterns: list[tuple[re.Pattern[str], str]]) -> bool:
    """Equal but for wall-clock figures, and memory within its jitter.

    A line that shows a memory figure (``28.3 MiB``) may differ from the stored
    one in its memory figures by :data:`MEMORY_TOLERANCE` or one unit of the
    last digit, and so may the ratios derived from them on that line ("85 times
    as much", "x1.4", "12%"). Every other number, a count on the same line
    included ("8,384 samples"), and every other line must be equal.
    """
    for pattern, replacement in patterns:
        new, old = pattern.sub(replacement, new), pattern.sub(replacement, old)
    new_lines, old_lines = new.split("\n"), old.split("\n")
    if len(new_lines) != len(old_lines):
        return False
    for a, b in zip(new_lines, old_lines, strict=True):
        if a == b:
            continue
        if not (MEMORY_FIGURE.search(a) and MEMORY_FIGURE.search(b)):
            return False
        parts_a, parts_b = NUMBER.split(a), NUMBER.split(b)
        if len(parts_a) != len(parts_b):
            return False
        for index, (x, y) in enumerate(zip(parts_a, parts_b, strict=True)):
            if index % 2 == 0:
                if x != y:
                    return False
            elif x != y and not (_JITTERS.match(parts_a[index + 1]) and _memory_close(x, y)):
                return False
    return True


#: What may follow a number that jitters with memory: a memory unit, or a ratio.
_JITTERS = re.compile(r" ?(?:B|KiB|MiB|GiB|bytes)\b| ?(?:times|x\b|×|%)")


def _is_memory_trace(trace: dict[str, Any], layout: dict[str, Any]) -> bool:
    words = f"{trace.get('meta', '')} {trace.get('name', '')}".lower()
    axis = layout.get("yaxis" + str(trace.get("yaxis", "y"))[1:], {})
    title = axis.get("title") if isinstance(axis, dict) else None
    words += " " + str(title.get("text", "") if isinstance(title, dict) else title or "").lower()
    return any(word in words for word in MEMORY_WORDS)


def _numbers(values: Any) -> list[float | None] | None:
    if not isinstance(values, list) or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
    ):
        return None
    return values


def _memory_series_close(new: list[float | None], old: list[float | None]) -> bool:
    if len(new) != len(old):
        return False
    scale = max((abs(v) for v in (*new, *old) if v is not None and math.isfinite(v)), default=0.0)
    return all(
        (a is None) == (b is None) and (a is None or a == b or abs(a - b) <= MEMORY_TOLERANCE * scale)
        for a, b in zip(new, old, strict=True)
    )


def figures_equivalent(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Equal figures, but for memory traces within :data:`MEMORY_TOLERANCE` of their largest value."""
    if {k: v for k, v in new.items() if k != "data"} != {k: v for k, v in old.items() if k != "data"}:
        return False
    traces_new, traces_old = new.get("data", []), old.get("data", [])
    if len(traces_new) != len(traces_old):
        return False
    layout = new.get("layout", {})
    for a, b in zip(traces_new, traces_old, strict=True):
        if a.keys() != b.keys():
            return False
        memory = _is_memory_trace(a, layout)
        for key in a:
            series_a, series_b = _numbers(a[key]), _numbers(b[key])
            if memory and series_a is not None and series_b is not None:
                if not _memory_series_close(series_a, series_b):
                    return False
            elif a[key] != b[key]:
                return False
    return True


def outputs_equivalent(
    new: list[dict[str, Any]],
    old: list[dict[str, Any]],
    patterns: list[tuple[re.Pattern[str], str]],
    *,
    volatile: bool = False,
) -> bool:
    """Whether a cell's fresh outputs say what its stored outputs say (see the module's docstring)."""
    if len(new) != len(old):
        return False
    if volatile:
        patterns = [*patterns, (VOLATILE, "N")]
    for a, b in zip(new, old, strict=True):
        if a.get("output_type") != b.get("output_type") or a.get("name") != b.get("name"):
            return False
        if "text" in a or "text" in b:
            if not texts_equivalent(_text(a.get("text", "")), _text(b.get("text", "")), patterns):
                return False
        data_a = {k: v for k, v in a.get("data", {}).items() if k != STATIC}
        data_b = {k: v for k, v in b.get("data", {}).items() if k != STATIC}
        if data_a.keys() != data_b.keys():
            return False
        for kind, value in data_a.items():
            if kind == PLOTLY:
                if not figures_equivalent(value, data_b[kind]):
                    return False
            elif isinstance(value, (str, list)):
                if not texts_equivalent(_text(value), _text(data_b[kind]), patterns):
                    return False
            elif value != data_b[kind]:
                return False
        if a.get("execution_count") != b.get("execution_count"):
            return False
    return True


def coalesce_streams(outputs: list[Any]) -> list[Any]:
    """Consecutive stream outputs of the same name merged into one, as JupyterLab shows them."""
    merged: list[Any] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.get("output_type") == "stream" == previous.get("output_type")
            and output.get("name") == previous.get("name")
        ):
            previous["text"] = _text(previous["text"]) + _text(output["text"])
        else:
            merged.append(output)
    return merged


def normalize(nb: Any) -> Any:
    """Round every plotly figure of ``nb`` and merge split streams (in place; idempotent)."""
    for cell in nb["cells"]:
        if "outputs" in cell:
            cell["outputs"] = coalesce_streams(cell["outputs"])
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY)
            if figure is not None:
                round_figure(figure)
    return nb


def stabilize(nb: Any, stored: Any, patterns: list[tuple[re.Pattern[str], str]] | None = None) -> int:
    """Keep ``stored``'s outputs for each code cell (matched by id) whose new outputs are equivalent.

    Both notebooks are normalized first. Returns how many cells kept their stored outputs.
    """
    patterns = wall_clock_patterns() if patterns is None else patterns
    normalize(stored)
    normalize(nb)
    previous = {cell.get("id"): cell for cell in stored["cells"] if cell.get("cell_type") == "code" and cell.get("id")}
    kept = 0
    for cell in nb["cells"]:
        old = previous.get(cell.get("id")) if cell.get("cell_type") == "code" else None
        if old is not None and outputs_equivalent(
            cell["outputs"], old.get("outputs", []), patterns, volatile=_volatile(cell)
        ):
            cell["outputs"] = copy.deepcopy(old["outputs"])
            kept += 1
    return kept


def chromium() -> str:
    """The Chromium kaleido drives: ``$PAYFLOW_CHROMIUM``, ``$BROWSER_PATH`` or Debian's; never a download."""
    for candidate in (os.environ.get("PAYFLOW_CHROMIUM"), os.environ.get("BROWSER_PATH"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(
        "the static images of the lessons' figures are drawn by Chromium, and none was found: "
        "install Debian's chromium (make chromium, as root) or set PAYFLOW_CHROMIUM"
    )


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at < len(png):
        (size,) = struct.unpack(">I", png[at : at + 4])
        chunks.append((png[at + 4 : at + 8], png[at + 8 : at + 8 + size]))
        at += 12 + size
    return chunks


def recompress_png(png: bytes) -> bytes:
    """The same image with its pixel data deflated at zlib's best level (Chromium's is fast, not small: -23%)."""
    chunks = _png_chunks(png)
    pixels = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9)
    idat = packer.compress(pixels) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = [chunk(kind, data) for kind, data in chunks if kind not in (b"IDAT", b"IEND")]
    return png[:8] + b"".join(head) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def render_png(figures: list[dict[str, Any]]) -> list[bytes]:
    """PNG images of plotly figures (JSON), drawn by kaleido in one Chromium, with no network access."""
    if not figures:
        return []
    import kaleido

    os.environ["BROWSER_PATH"] = chromium()  # choreographer's way of being told which browser to drive

    def draw() -> list[bytes]:
        kaleido.start_sync_server(mathjax=False, silence_warnings=True)  # no MathJax: it would come from a CDN
        try:
            return [
                recompress_png(
                    kaleido.calc_fig_sync(
                        figure,
                        opts={
                            "format": "png",
                            "width": STATIC_WIDTH,
                            "scale": 1,
                            "height": figure.get("layout", {}).get("height", 450),
                        },
                    )
                )
                for figure in figures
            ]
        finally:
            kaleido.stop_sync_server(silence_warnings=True)

    try:
        return draw()
    except Exception as exc:  # kaleido's tab sometimes runs before its script loaded, on a busy machine: once more
        if "kaleido_scopes is not defined" not in str(exc):
            raise
        return draw()


def add_static_images(nb: Any, *, redraw: bool = False) -> int:
    """Give every plotly output that has none (every one, with ``redraw``) a PNG beside its JSON; return how many."""
    missing = [
        output
        for cell in nb["cells"]
        for output in cell.get("outputs", [])
        if PLOTLY in output.get("data", {}) and (redraw or STATIC not in output["data"])
    ]
    images = render_png([output["data"][PLOTLY] for output in missing])
    for output, image in zip(missing, images, strict=True):
        output["data"][STATIC] = base64.b64encode(image).decode("ascii")
    return len(missing)


def _kernel_manager() -> Any:
    """A kernel of the interpreter running this script, whatever kernelspecs the machine has."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (ipykernel)",
                language="python",
                resource_dir=str(LESSONS),
            )

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def build(path: Path, *, redraw: bool = False) -> float:
    """Execute ``path`` in a fresh kernel, clean it and write it back; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    stored = copy.deepcopy(nb)
    kernelspec = dict(nb.metadata.get("kernelspec", {}))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    started = time.perf_counter()
    client = NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=CELL_TIMEOUT,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    seconds = time.perf_counter() - started
    clean(nb)
    stabilize(nb, stored)
    add_static_images(nb, redraw=redraw)
    nb.metadata["kernelspec"] = kernelspec or {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
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
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="draw every figure's static image anew (after changing how they are drawn)",
    )
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
            seconds = build(path, redraw=args.redraw)
            print(f"{path.name}: built in {seconds:.1f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
