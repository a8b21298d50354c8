"""Reviewable lessons: ``tools/build_lessons.py`` rebuilds to the same bytes, figures have a static image,
and a one-line prose edit makes a one-line diff.

Most tests work on the committed notebooks' real outputs, with the noise a real
rebuild brings (measured between two builds of lesson 01: memory samples moved
by up to 0.004 MiB, wall-clock figures by a few hundredths of a second), so
they need no kernel. One slow test builds lesson 00 twice for real.
"""

from __future__ import annotations

import base64
import copy
import difflib
import importlib.util
import json
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_lessons", ROOT / "tools" / "build_lessons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _builder()


def committed(name: str) -> Any:
    return nbformat.read(ROOT / "lessons" / name, as_version=4)


def figures(nb: Any) -> list[dict[str, Any]]:
    return [output for cell in nb.cells for output in cell.get("outputs", []) if build.PLOTLY in output.get("data", {})]


def as_rebuilt(nb: Any, seed: int = 1) -> Any:
    """``nb`` as a fresh kernel would give it back: no static images, unrounded numbers, measurement noise."""
    rng = random.Random(seed)
    fresh = copy.deepcopy(nb)
    for output in figures(fresh):
        del output["data"][build.STATIC]
        for trace in output["data"][build.PLOTLY]["data"]:
            noisy = "memory" in str(trace.get("meta", "")) or "memory" in str(trace.get("name", ""))
            values = trace.get("y")
            if isinstance(values, list):
                # tracemalloc's jitter is a share of what it measures (2% here, within the builder's 5%);
                # every other number merely comes back unrounded.
                scale = max((abs(v) for v in values if isinstance(v, float)), default=0.0)
                trace["y"] = [
                    v
                    if not isinstance(v, float)
                    else v * (1 + 1e-9) + (rng.uniform(-0.02, 0.02) * scale if noisy else 0.0)
                    for v in values
                ]
    for cell in fresh.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                text = re.sub(r"in \d[\d,]*(\.\d+)? real seconds", "in 1.23 real seconds", output["text"])
                output["text"] = build.MEMORY_FIGURE.sub(lambda m: _one_more(m.group(1)) + m.group(2), text)
    return fresh


def _one_more(number: str) -> str:
    """``"44.3"`` -> ``"44.4"``: a memory figure as the next run might print it."""
    decimals = len(number.partition(".")[2])
    return f"{float(number.replace(',', '')) + 10.0**-decimals:,.{decimals}f}"


def writes(nb: Any) -> str:
    return nbformat.writes(nb) + "\n"


# --------------------------------------------------------------------------- rounding
@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        (0.2225637435913086, 0.22256),
        (20.21349, 20.213),
        (13512.3456, 13512.346),
        (54005064.921, 54005064.921),  # a millisecond timestamp keeps its milliseconds
        (50400000.0, 50400000.0),
        (1.5e-05, 1.5e-05),
        (0.0, 0.0),
    ],
)
def test_figure_numbers_keep_five_significant_digits_and_milliseconds(value: float, rounded: float) -> None:
    figure = {"data": [{"y": [value], "x": [value], "uid": "3f1c"}], "layout": {}}
    build.round_figure(figure)
    assert figure["data"][0]["y"] == [rounded] and "uid" not in figure["data"][0]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_committed_figure_is_rounded_and_has_a_static_image(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for output in figures(nb):
        figure = output["data"][build.PLOTLY]
        assert build.round_figure(copy.deepcopy(figure)) == figure, "numbers not rounded: make lessons"
        png = base64.b64decode(output["data"].get(build.STATIC, ""))
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), f"a figure of {path.name} has no static PNG: make lessons"
        width, height = struct.unpack(">II", png[16:24])
        assert width == build.STATIC_WIDTH and height == figure["layout"].get("height", 450)
    assert build.problems(json.loads(path.read_text(encoding="utf-8"))) == []


# ---------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ["01_synchronous.ipynb", "05_production_hardening.ipynb"])
def test_a_rebuild_that_only_differs_by_noise_keeps_the_stored_bytes(name: str) -> None:
    stored = committed(name)
    fresh = as_rebuilt(stored)
    assert writes(fresh) != writes(stored)
    assert build.stabilize(fresh, copy.deepcopy(stored)) == sum(c.cell_type == "code" for c in stored.cells)
    assert build.add_static_images(fresh) == 0  # the kept outputs carry their images: nothing to draw
    assert writes(fresh) == (ROOT / "lessons" / name).read_text(encoding="utf-8")


def test_a_real_change_in_a_figure_is_not_hidden() -> None:
    stored = committed("01_synchronous.ipynb")
    fresh = as_rebuilt(stored)
    trace = next(
        t for output in figures(fresh) for t in output["data"][build.PLOTLY]["data"] if t.get("meta") == "p99_ms"
    )
    trace["y"] = [v * 1.05 if isinstance(v, float) else v for v in trace["y"]]  # p99 latency 5% worse
    kept = build.stabilize(fresh, copy.deepcopy(stored))
    assert kept == sum(c.cell_type == "code" for c in stored.cells) - 1
    (changed,) = [o for o in figures(fresh) if build.STATIC not in o["data"]]  # to be drawn anew
    p99 = next(t for t in changed["data"][build.PLOTLY]["data"] if t.get("meta") == "p99_ms")
    assert p99["y"] == build.round_figure({"data": [dict(trace)]})["data"][0]["y"]


@pytest.mark.parametrize(
    ("new", "old", "same"),
    [
        ("1,812 simulated seconds in 0.86 real seconds\n", "1,812 simulated seconds in 0.89 real seconds\n", True),
        ("3,600 s simulated in 0.024 s", "3,600 s simulated in 0.025 s", True),
        ("peak 44.4 MiB above start", "peak 44.3 MiB above start", True),
        ("peak 0.21 MiB", "peak 0.22 MiB", True),  # one unit of the last digit
        ("peak 30.0 MiB above start", "peak 44.3 MiB above start", False),
        ("mean latency 13.6 s", "mean latency 13.5 s", False),  # simulated time is deterministic: a change
        ("1,813 simulated seconds in 0.86 real seconds\n", "1,812 simulated seconds in 0.89 real seconds\n", False),
        ("stuck: $2,000,000", "stuck: $2,000,001", False),
        ("Black Friday: 28.0 MiB (85 times as much)", "Black Friday: 28.3 MiB (86 times as much)", True),
        ("Black Friday: 28.0 MiB (85 times as much)", "Black Friday: 28.3 MiB (95 times as much)", False),
        ("Black Friday: 28.0 MiB\n1,812 payments", "Black Friday: 28.3 MiB\n1,813 payments", False),
        # a count on a line that also shows a size is a count: it must not drift with memory
        (
            "by tier: 31 KiB; per merchant: 607 KiB, 8,398 samples",
            "by tier: 31 KiB; per merchant: 605 KiB, 8,384 samples",
            False,
        ),
        (
            "by tier: 31 KiB; per merchant: 607 KiB, 8,384 samples",
            "by tier: 31 KiB; per merchant: 605 KiB, 8,384 samples",
            True,
        ),
    ],
)
def test_what_counts_as_noise_in_text(new: str, old: str, same: bool) -> None:
    assert build.texts_equivalent(new, old, build.wall_clock_patterns()) is same


def test_a_one_line_prose_edit_is_a_one_line_diff() -> None:
    """The issue's case: a sentence of lesson 01 edited, the lesson rebuilt: the diff is that sentence."""
    path = ROOT / "lessons" / "01_synchronous.ipynb"
    stored = committed(path.name)
    edited = as_rebuilt(stored, seed=2)
    cell = next(c for c in edited.cells if c.cell_type == "markdown" and len(c.source.splitlines()) > 2)
    lines = cell.source.splitlines()
    lines[1] = lines[1] + " (edited)"
    cell.source = "\n".join(lines)
    build.stabilize(edited, copy.deepcopy(stored))
    diff = [
        line
        for line in difflib.unified_diff(
            path.read_text(encoding="utf-8").splitlines(), writes(edited).splitlines(), lineterm="", n=0
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert len(diff) == 2 and diff[1].endswith(' (edited)\\n",'), diff

    from nbdime import diff_notebooks
    from nbdime.prettyprint import PrettyPrintConfig, pretty_print_diff

    out: list[str] = []

    class Collect:
        def write(self, text: str) -> None:
            out.append(text)

    pretty_print_diff(stored, diff_notebooks(stored, edited), "notebook", PrettyPrintConfig(out=Collect()))
    shown = "".join(out)
    assert "(edited)" in shown and "outputs" not in shown


def test_git_diffs_lessons_through_nbdime_once_enabled() -> None:
    attributes = (ROOT / ".gitattributes").read_text().splitlines()
    assert "*.ipynb diff=jupyternotebook merge=jupyternotebook" in attributes
    if (ROOT / ".git").exists() and shutil.which("git"):
        done = subprocess.run(
            ["git", "-C", str(ROOT), "check-attr", "diff", "--", "lessons/01_synchronous.ipynb"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip().endswith("diff: jupyternotebook")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "nbdime config-git --enable" in readme


# ------------------------------------------------------------------- a real rebuild
def _chromium_or_skip() -> None:
    try:
        build.chromium()
    except SystemExit as missing:
        if os.environ.get("CI") in {"1", "true"}:
            pytest.fail(f"CI must draw the lessons' static figures: {missing}")
        pytest.skip(f"STATIC FIGURES NOT TESTED: {missing}")


@pytest.mark.slow
def test_building_a_lesson_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    _chromium_or_skip()
    path = tmp_path / "00_start_here.ipynb"
    nb = committed(path.name)
    for output in figures(nb):
        del output["data"][build.STATIC]  # so that the first build draws it
    path.write_text(writes(nb), encoding="utf-8")
    build.build(path)
    first = path.read_bytes()
    build.build(path)
    assert path.read_bytes() == first
    rebuilt = json.loads(first)
    assert build.problems(rebuilt) == []
    assert all(build.STATIC in output["data"] for output in figures(nbformat.reads(first.decode(), as_version=4)))


@pytest.mark.slow
def test_the_static_image_is_drawn_offline_by_debians_chromium() -> None:
    _chromium_or_skip()
    figure = {"data": [{"type": "scatter", "x": [1, 2, 3], "y": [2, 1, 3], "name": "p50"}], "layout": {"height": 300}}
    first, again = build.render_png([figure, copy.deepcopy(figure)])
    assert first.startswith(b"\x89PNG") and struct.unpack(">II", first[16:24]) == (build.STATIC_WIDTH, 300)
    assert first == again  # same figure, same pixels


def test_split_streams_are_merged_as_jupyterlab_shows_them() -> None:
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "a\n"},
        {"output_type": "stream", "name": "stdout", "text": ["b\n", "c\n"]},
        {"output_type": "stream", "name": "stderr", "text": "careful\n"},
        {"output_type": "stream", "name": "stdout", "text": "d\n"},
    ]
    merged = build.coalesce_streams(copy.deepcopy(outputs))
    assert [(o["name"], o["text"]) for o in merged] == [
        ("stdout", "a\nb\nc\n"),
        ("stderr", "careful\n"),
        ("stdout", "d\n"),
    ]


def _cell(text: str, tags: list[str] | None = None) -> Any:
    cell = nbformat.v4.new_code_cell(
        "print(deliver_for_real())",
        id="c1",
        execution_count=1,
        outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)],
    )
    if tags:
        cell.metadata["tags"] = tags
    return cell


@pytest.mark.parametrize(
    ("tags", "new_text", "kept"),
    [
        (["nbval-ignore-output"], "55 payments authorized in 3.1 s; port 49801\n", True),
        (["nbval-ignore-output"], "55 payments refused\n", False),  # words changed: a change
        (None, "55 payments authorized in 3.1 s; port 49801\n", False),  # not declared varying: numbers count
    ],
)
def test_cells_declared_varying_keep_their_output_while_only_numbers_change(
    tags: list[str] | None, new_text: str, kept: bool
) -> None:
    stored = nbformat.v4.new_notebook(cells=[_cell("52 payments authorized in 3.2 s; port 49797\n", tags)])
    fresh = nbformat.v4.new_notebook(cells=[_cell(new_text, tags)])
    assert build.stabilize(fresh, stored) == int(kept)
    assert (fresh.cells[0].outputs[0]["text"] == stored.cells[0].outputs[0]["text"]) is kept


def test_recompressed_pngs_hold_the_same_pixels() -> None:
    import zlib

    nb = committed("01_synchronous.ipynb")
    png = base64.b64decode(figures(nb)[0]["data"][build.STATIC])
    again = build.recompress_png(png)

    def pixels(image: bytes) -> bytes:
        return zlib.decompress(b"".join(data for kind, data in build._png_chunks(image) if kind == b"IDAT"))

    assert pixels(again) == pixels(png) and len(again) <= len(png)
    assert [kind for kind, _ in build._png_chunks(again)][0] == b"IHDR"
