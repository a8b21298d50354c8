"""The challenge framework: whatever a candidate does, a verdict comes back; the command line's contract."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from payflow_lab.app.cli import main
from payflow_lab.challenges import CHALLENGES, check, get_challenge, load_candidate, solution, starter
from payflow_lab.challenges.receiver import Receiver
from payflow_lab.core.errors import ValidationError

LESSONS = {f"{n:02d}" for n in range(1, 8)}


def test_every_lesson_from_01_to_07_has_a_challenge_with_two_wrong_solutions() -> None:
    assert {c.lesson for c in CHALLENGES.values()} == LESSONS
    for challenge in CHALLENGES.values():
        assert len(challenge.wrong) >= 2, challenge.name
        assert {breaks for _, breaks in challenge.wrong.values()} <= set(challenge.invariants), challenge.name
        assert challenge.entry in challenge.starter, challenge.name


def _breaker_that(allow):  # a Breaker whose allow() does something else
    return type("Breaker", (get_challenge("circuit-breaker").reference,), {"allow": allow})


def test_a_candidate_that_raises_gets_a_verdict_naming_the_error() -> None:
    def allow(self):
        return 1 / 0

    result = check("circuit-breaker", _breaker_that(allow)).results[0]
    assert not result.passed
    (verdict,) = result.verdicts
    assert verdict.invariant == "runs without raising" and verdict.measured.startswith("ZeroDivisionError")
    assert "test_challenges.py" in verdict.why


def test_a_candidate_that_blocks_the_event_loop_is_stopped_at_the_deadline() -> None:
    release = threading.Event()

    def allow(self):
        release.wait()  # a blocking call: virtual time cannot skip it
        return True

    try:
        result = check("circuit-breaker", _breaker_that(allow), deadline=1.0).results[0]
    finally:
        release.set()
    (verdict,) = result.verdicts
    assert verdict.invariant == "finishes in time" and not verdict.held
    assert "time.sleep" in verdict.why and verdict.hint


@pytest.mark.parametrize(
    ("name", "candidate", "words"),
    [
        ("circuit-breaker", 42, "must be a class"),
        ("circuit-breaker", type("Breaker", (), {}), "no allow()"),
        ("subscriber-timeout", object, "must be a function"),
        ("page-before-the-freeze", "DatabasePoolFull", "must be a Rule"),
        ("release-the-connection", Receiver, "must be a class MyPipeline(SynchronousPipeline)"),
    ],
)
def test_a_candidate_of_the_wrong_shape_is_told_so(name: str, candidate: object, words: str) -> None:
    (verdict,) = check(name, candidate).results[0].verdicts
    assert verdict.invariant == "has the right shape" and not verdict.held and words in verdict.why


def test_a_handler_factory_that_returns_nothing_is_a_verdict() -> None:
    (verdict,) = check("subscriber-timeout", lambda call: None).results[0].verdicts
    assert verdict.invariant == "runs without raising" and "not a handler" in verdict.measured


def test_an_unknown_challenge_names_the_ones_there_are() -> None:
    with pytest.raises(ValidationError, match="no challenge called 'breaker'; there are: release-the-connection"):
        check("breaker", object)


def test_the_report_reads_as_text_and_as_html() -> None:
    report = check("idempotent-receiver", Receiver)
    assert str(report).startswith("idempotent-receiver · Receiver: PASSED")
    assert "&#10004;" in report._repr_html_() and "not yet" not in report._repr_html_()
    data = report.as_dict()
    assert data["name"] == "idempotent-receiver" and data["results"][0]["passed"] is True
    assert set(data["results"][0]["verdicts"][0]) >= {"invariant", "held", "measured", "target", "why"}


# ------------------------------------------------------------------ files and the command line
def _reference_file(tmp_path: Path) -> Path:
    path = tmp_path / "receiver.py"
    path.write_text(solution("idempotent-receiver"))
    return path


def test_a_learners_file_is_loaded_by_its_entry(tmp_path: Path) -> None:
    assert load_candidate("idempotent-receiver", _reference_file(tmp_path)).__name__ == "MyReceiver"
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValidationError, match="defines no 'MyReceiver'"):
        load_candidate("idempotent-receiver", empty)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValidationError, match="running it raised RuntimeError: boom"):
        load_candidate("idempotent-receiver", broken)


def test_check_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["lesson"] for row in rows] == sorted(LESSONS)
    assert all({"name", "lesson", "title"} <= set(row) for row in rows)


def test_check_a_passing_and_a_failing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "idempotent-receiver", str(_reference_file(tmp_path)), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["results"][0]["passed"] is True and data["results"][0]["candidate"].endswith("receiver.py")
    mine = tmp_path / "mine.py"
    mine.write_text(starter("idempotent-receiver"))
    assert main(["check", "idempotent-receiver", str(mine)]) == 1
    out = capsys.readouterr().out
    assert "NOT YET" in out and "hint:" in out and "first counter-example:" in out


def test_check_demo_json_judges_the_reference_and_every_wrong_solution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "idempotent-receiver", "--demo", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["candidate"] for r in results] == ["reference", "wrong:remembers-in-memory", "wrong:dedupes-by-payment"]
    assert [r["passed"] for r in results] == [True, False, False]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["check"], "name a challenge"),
        (["check", "circuit-breaker"], "exactly one of FILE.py, --demo or --starter"),
        (["check", "circuit-breaker", "x.py", "--demo"], "got FILE.py and --demo"),
        (["check", "--list", "circuit-breaker"], "--list takes no challenge"),
        (["check", "nope", "--demo"], "no challenge called 'nope'"),
        (["check", "circuit-breaker", "/no/such/file.py"], "no such file"),
    ],
)
def test_bad_command_lines_are_usage_errors(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_the_starter_prints_as_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "circuit-breaker", "--starter"]) == 0
    assert capsys.readouterr().out == starter("circuit-breaker")


def test_the_bench_times_every_challenge() -> None:
    from importlib import import_module

    from payflow_lab.app.bench import BENCHMARKS

    module, _, function = BENCHMARKS["challenges"].partition(":")
    assert callable(getattr(import_module(module), function))


def test_a_breaker_that_never_opens_is_shown_as_a_trace() -> None:
    namespace: dict[str, object] = {}
    exec(starter("circuit-breaker"), namespace)
    report = check("circuit-breaker", namespace["Breaker"])
    html = report._repr_html_()
    assert html.count("<svg") == 1 and "calls per second (outage, seed 1" in html
    assert "svg" not in str(report) and "figure" not in json.dumps(report.as_dict())
