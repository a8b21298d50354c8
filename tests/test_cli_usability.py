"""The command line a person expects: help for every choice, examples that run, "did you mean",
errors that name the option as typed, ``--version``, and progress on stderr for the long commands."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import payflow_lab as pf
import payflow_lab.app.narrate as narration
from payflow_lab.app.cli import build_parser, main
from payflow_lab.core import progress
from payflow_lab.core.scenarios import SCENARIOS
from payflow_lab.phases import PHASES, get_phase


def help_of(*command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return out.getvalue()


def flat(text: str) -> str:
    """Help text with its wrapping undone, to look for whole sentences in it."""
    return " ".join(text.split())


# ------------------------------------------------------------------------------ help
def test_run_help_says_what_every_scenario_and_phase_is() -> None:
    text = flat(help_of("run"))
    for name, scenario in SCENARIOS.items():
        assert f"{name} {scenario.title}" in text, name
        for step in scenario.steps[:3]:
            assert step.what in text
    for number, target in PHASES.items():
        module = target.split(":")[0].rsplit(".", 1)[1]
        assert f"{number} {module} {flat(get_phase(number).lesson)}" in text, number
    for choice in ("asyncio", "trio", "tracemalloc", "rss", "off"):
        assert re.search(rf"\b{choice} [A-Za-z']", text), f"{choice} has no description"


@pytest.mark.parametrize("command", [(), ("run",), ("bench",), ("lessons",)])
def test_every_example_in_the_help_parses(command: tuple[str, ...]) -> None:
    text = help_of(*command)
    examples = text[text.index("examples:") :].splitlines()[1:]
    assert examples, f"no examples in payflow-lab {' '.join(command)} --help"
    parser = build_parser()
    for line in examples:
        shown = re.split(r"\s{2,}|#", line.strip())[0]
        argv = shlex.split(shown)
        argv = argv[: next((i for i, arg in enumerate(argv) if arg[0] in "<>|"), len(argv))]  # shell redirections
        assert argv[0] == "payflow-lab", line
        if "COMMAND" in argv:
            continue
        parser.parse_args(argv[1:])  # raises (UsageError) if an example is wrong


def test_version_is_the_installed_distributions() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert out.getvalue().strip() == f"payflow-lab {version('payflow-lab')}"
    assert pf.__version__ == version("payflow-lab")


def test_phases_can_be_named() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--phase", "hook_bus"]).phase == 4
    assert parser.parse_args(["run", "--phase", "fire-and-forget"]).phase == 2
    assert parser.parse_args(["run", "--phase", "3"]).phase == 3


# -------------------------------------------------------------------- bad arguments
def error_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("payflow-lab: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "meant"),
    [
        (["rn"], "'run'"),
        (["lesson"], "'lessons'"),
        (["run", "--scenario", "blakfriday"], "'blackfriday'"),
        (["run", "--scenario", "Normal"], "'normal'"),
        (["run", "--phase", "hookbus"], "'hook_bus'"),
        (["run", "--phase", "fire_and_foget"], "'fire_and_forget'"),
        (["run", "--sacle", "0.2"], "'--scale'"),
        (["run", "--senario=normal"], "'--scenario'"),
        (["run", "--jsno"], "'--json'"),
        (["--sede", "3"], "'--seed'"),
        (["bench", "--only", "backend"], "'backends'"),
        (["replay", "--db", "x.sqlite", "--merchnt", "m1"], "'--merchant'"),
        (["run", "--memory", "trace"], "'tracemalloc'"),
    ],
)
def test_a_near_miss_gets_a_did_you_mean(args: list[str], meant: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_of(args, capsys)
    assert f"did you mean {meant}?" in line


@pytest.mark.parametrize("args", [["frobnicate"], ["run", "--scenario", "cybermonday"], ["run", "--xyzzy"]])
def test_a_far_miss_lists_the_choices_without_guessing(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    line = error_of(args, capsys)
    assert "did you mean" not in line
    assert args[-1] in line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["run", "--scale", "0"], "--scale"),
        (["run", "--scale", "5"], "--scale"),
        (["run", "--duration", "-5"], "--duration"),
        (["--scale", "9"], "--scale"),
        (["run", "--live", "--pace", "0"], "--pace"),
        (["replay", "--db", "/no/such/outbox.sqlite"], "--db"),
        (["replay", "--db", ":memory:", "--limit", "-1"], "--limit"),
    ],
)
def test_engine_errors_name_the_option_as_typed(args: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The engine raises ValidationError("scale", ...); the user typed --scale, so the error says --scale."""
    line = error_of(args, capsys)
    assert line.startswith(f"payflow-lab: error: {flag}: "), line


# ------------------------------------------------------------------------- progress
@functools.cache
def small_run(scenario: str, phase: int) -> pf.RunResult:
    return pf.run(scenario, phase=phase, seed=7, scale=0.02, memory="off")


class FakeSimulation:
    """What ``on_tick`` reads of a simulation: its config, its scenario's start and the world's clock."""

    def __init__(self, config: Any) -> None:
        from payflow_lab.core.scenarios import get_scenario

        self.config = config
        self.scenario = get_scenario(config.scenario_name)
        self.world = type("W", (), {"clock": lambda _: self.scenario.start + config.sim_duration / 2})()


def fake_run_config(config: Any, on_tick: Any = None) -> pf.RunResult:
    """The narration's runs, from small cached ones; the progress callback is called as the runner would."""
    if on_tick is not None:
        on_tick(FakeSimulation(config))
    return small_run(config.scenario_name, config.phase)


def test_the_story_prints_one_line_per_step_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(narration, "run_config", fake_run_config)
    assert main(["--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout is the JSON object alone
    expected = [
        f"phase {p}, {s}"
        for p in pf.available_phases()
        for s in (("normal", "blackfriday", "recovery") if p == 5 else ("normal", "blackfriday"))
    ]
    lines = captured.err.splitlines()
    assert lines == [f"payflow-lab: [{i}/{len(expected)}] {what}" for i, what in enumerate(expected, start=1)]


def test_the_story_shows_a_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(narration, "run_config", fake_run_config)
    monkeypatch.setattr(narration, "Steps", functools.partial(progress.Steps, stream=terminal, terminal=True))
    assert main(["--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert captured.err == ""
    shown = terminal.getvalue()
    assert "━" in shown  # the bar
    for phase in pf.available_phases():
        assert f"payflow-lab: phase {phase}, blackfriday" in shown
    assert "story clock" in shown and "11/11" in shown


def run_with_stderr_on_a_terminal(args: list[str]) -> tuple[subprocess.CompletedProcess[bytes], str]:
    import pty
    import threading

    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # a terminal must be read while the program writes, or it blocks
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    done = subprocess.run(
        [sys.executable, "-m", "payflow_lab", *args], stdout=subprocess.PIPE, stderr=follower, env=env, timeout=300
    )
    os.close(follower)
    reader.join(10)
    os.close(leader)
    return done, b"".join(chunks).decode(errors="replace")


def test_bench_shows_its_steps_on_a_terminal_and_keeps_stdout_pure_json() -> None:
    done, err = run_with_stderr_on_a_terminal(["bench", "--only", "backends", "--quick", "--json"])
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert list(report["results"]) == ["backends"]
    assert "payflow-lab bench: backends" in err and "━" in err
    assert "phase 1 on trio" in err  # the status inside the step, from the benchmark's own repetitions


def test_bench_prints_one_line_per_step_when_stderr_is_not_a_terminal() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "payflow_lab", "bench", "--only", "backends", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0
    assert list(json.loads(done.stdout)["results"]) == ["backends"]
    assert done.stderr.splitlines() == [
        "payflow-lab bench: [1/1] backends",
        "  phase 1 on asyncio, memory off, run 1/1",  # each status note, indented under its step
        "  phase 1 on trio, memory off, run 1/1",
    ]


def test_a_plain_log_gets_the_story_clock_of_a_long_step_every_heartbeat() -> None:
    class Simulation:  # what on_tick reads of a running simulation
        class world:
            @staticmethod
            def clock() -> float:
                return 14 * 3600 + 30 * 60

        class scenario:
            start = 13 * 3600 + 50 * 60

        class config:
            sim_duration = 4800.0

    stream = io.StringIO()
    with progress.Steps("job", total=1, stream=stream, terminal=False, heartbeat=0.0) as steps:
        with steps.step("phase 5, blackfriday") as on_tick:
            on_tick(Simulation)
            on_tick(Simulation)
    assert (
        stream.getvalue().splitlines()
        == ["job: [1/1] phase 5, blackfriday"] + ["  phase 5, blackfriday: story clock 14:30:00 (50% of the run)"] * 2
    )
    quiet = io.StringIO()
    with progress.Steps("job", total=1, stream=quiet, terminal=False) as steps, steps.step("short") as on_tick:
        on_tick(Simulation)  # within the first ten seconds: nothing to add
    assert quiet.getvalue().splitlines() == ["job: [1/1] short"]


def test_steps_count_only_finished_steps() -> None:
    stream = io.StringIO()
    with progress.Steps("job", total=2, stream=stream, terminal=False) as steps:
        with steps.step("first"):
            pass
        with pytest.raises(RuntimeError), steps.step("second"):
            raise RuntimeError("boom")
    assert steps.done == 1
    assert stream.getvalue().splitlines() == ["job: [1/2] first", "job: [2/2] second"]


def test_note_reaches_the_running_steps_and_nothing_else() -> None:
    progress.note("nobody is listening")  # no Steps: nothing happens, nothing fails
    terminal = io.StringIO()
    with progress.Steps("job", total=1, stream=terminal, terminal=True) as steps, steps.step("only"):
        progress.note("halfway there")
        steps._progress.refresh()
    assert "halfway there" in terminal.getvalue()


def test_readme_mentions_every_command() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for command in ("run", "bench", "lessons", "realtime", "replay"):
        assert f"payflow-lab {command}" in readme


def test_a_note_is_an_indented_line_in_a_plain_log() -> None:
    log = io.StringIO()
    with progress.Steps("job", total=1, stream=log, terminal=False) as steps, steps.step("only"):
        progress.note("halfway there")
    assert log.getvalue().splitlines() == ["job: [1/1] only", "  halfway there"]
