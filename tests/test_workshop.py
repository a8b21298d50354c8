"""``payflow-lab lessons [DIR]``: the workshop copied out for a learner, whose edits are never overwritten silently."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from payflow_lab.app import workshop
from payflow_lab.app.cli import main
from payflow_lab.app.workshop import FIRST_LESSON, MANIFEST, copy_lessons, plan_copy, shipped_files
from payflow_lab.core.errors import EditedLessons

ROOT = Path(__file__).resolve().parents[1]


def lessons_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["lessons", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_shipped_files_are_the_repositorys_lessons() -> None:
    files = shipped_files()
    assert FIRST_LESSON in files and "FACILITATOR.md" in files and "sanitize.cfg" in files
    assert sum(name.endswith(".ipynb") for name in files) == len(list((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")))
    for name, data in files.items():
        assert (ROOT / "lessons" / name).read_bytes() == data
    # What the wheel carries is checked against the same list in tests/test_packaging.py.


def test_copy_into_a_new_folder_and_print_how_to_open_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "my lessons"  # a space: the printed command must quote it
    status, out, err = lessons_cli(capsys, str(dest))
    assert (status, err) == (0, "")
    for name, data in shipped_files().items():
        assert (dest / name).read_bytes() == data
    manifest = json.loads((dest / MANIFEST).read_text())
    assert set(manifest["files"]) == set(shipped_files())
    command = shlex.split(out[out.index("Open it with:") :].splitlines()[2])
    assert command[1:3] == ["lab", f"--notebook-dir={dest}"]
    assert command[-1] == str(dest / FIRST_LESSON)
    assert "--LabApp.extension_manager=readonly" in command


def test_a_second_copy_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy_lessons(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    status, out, _ = lessons_cli(capsys, str(tmp_path))
    assert status == 0 and f"{len(shipped_files())} already up to date" in out
    assert "copied" not in out
    plan = plan_copy(tmp_path)
    assert plan.up_to_date == list(shipped_files()) and not (plan.new or plan.untouched or plan.edited)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != MANIFEST} == {
        p: t for p, t in before.items() if p.name != MANIFEST
    }


def test_an_edited_lesson_stops_the_copy_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_lessons(tmp_path)
    edited = tmp_path / "01_synchronous.ipynb"
    edited.write_text(edited.read_text() + "\n")  # the learner's work
    (tmp_path / "FACILITATOR.md").unlink()  # would be copied again, were anything written
    status, out, err = lessons_cli(capsys, str(tmp_path))
    assert status == 1 and out == ""
    assert "01_synchronous.ipynb" in err and "--force" in err and "Nothing was written" in err
    assert not (tmp_path / "FACILITATOR.md").exists()
    assert edited.read_text().endswith("\n\n") or edited.read_bytes() != shipped_files()["01_synchronous.ipynb"]

    status, out, err = lessons_cli(capsys, str(tmp_path), "--force")
    assert status == 0 and "overwrote 1 you had edited (01_synchronous.ipynb)" in out
    assert edited.read_bytes() == shipped_files()["01_synchronous.ipynb"]
    assert (tmp_path / "FACILITATOR.md").exists()


def test_an_untouched_copy_of_an_older_version_is_refreshed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy_lessons(tmp_path)
    old = tmp_path / "02_fire_and_forget.ipynb"
    old.write_bytes(b'{"an": "older version of the lesson"}')
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["files"]["02_fire_and_forget.ipynb"] = workshop._digest(old.read_bytes())  # as that version copied it
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert plan_copy(tmp_path).untouched == ["02_fire_and_forget.ipynb"]
    status, out, _ = lessons_cli(capsys, str(tmp_path))
    assert status == 0 and "updated 1 you had not changed (02_fire_and_forget.ipynb)" in out
    assert old.read_bytes() == shipped_files()["02_fire_and_forget.ipynb"]


def test_without_a_manifest_a_differing_file_counts_as_edited(tmp_path: Path) -> None:
    copy_lessons(tmp_path)
    (tmp_path / MANIFEST).unlink()
    (tmp_path / "sanitize.cfg").write_text("# mine\n")
    with pytest.raises(EditedLessons) as refused:
        copy_lessons(tmp_path)
    assert refused.value.plan.edited == ["sanitize.cfg"]


def test_the_learners_own_files_are_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / "my_notes.ipynb"
    mine.write_text("{}")
    copy_lessons(tmp_path)
    copy_lessons(tmp_path, force=True)
    assert mine.read_text() == "{}"


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "lessons"
    target.write_text("not a folder")
    status, out, err = lessons_cli(capsys, str(target))
    assert status == 1 and out == ""
    assert err.strip() == f"payflow-lab: error: {target} exists and is not a folder"


def test_json_says_what_was_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = lessons_cli(capsys, str(tmp_path), "--json")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert report["new"] == list(shipped_files()) and report["edited"] == []
    assert report["open_command"][-1] == str(tmp_path / FIRST_LESSON)
    assert report["jupyterlab_installed"] is True
