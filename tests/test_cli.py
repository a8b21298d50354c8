"""The command line: the JSON contract, narration, bad arguments."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import pytest

from payflow_lab.app.cli import main
from payflow_lab.core.recorder import strip_nondeterministic

CONTRACT = {
    "scenario": str,
    "phase": int,
    "seed": int,
    "scale": float,
    "sim_seconds": float,
    "wall_seconds": float,
    "payments": {"attempted": int, "authorized": int, "failed": int, "stuck": int, "stuck_dollars": float},
    "latency_ms": {"mean": float, "p50": float, "p95": float, "p99": float, "max": float},
    "side_effects": {"delivered": int, "failed": int, "dropped": int, "pending": int, "dead_lettered": int},
    "memory": {"start_bytes": int, "peak_bytes": int, "end_bytes": int, "how": str},
    "tasks": {"peak_in_flight": int, "end_in_flight": int},
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    return subprocess.run(
        [sys.executable, "-m", "payflow_lab", *args], capture_output=True, text=True, env=env, timeout=300
    )


def check_contract(data, shape, path="") -> None:
    for key, kind in shape.items():
        assert key in data, f"missing {path}{key}"
        if isinstance(kind, dict):
            check_contract(data[key], kind, f"{path}{key}.")
        elif kind is float:
            assert isinstance(data[key], (int, float)) and not isinstance(data[key], bool), f"{path}{key}"
        else:
            assert isinstance(data[key], kind), f"{path}{key} is {type(data[key]).__name__}"


@pytest.fixture(scope="module")
def blackfriday_json():
    done = cli("run", "--scenario", "blackfriday", "--phase", "1", "--seed", "7", "--json")
    assert done.returncode == 0, done.stderr
    return done


def test_json_contract(blackfriday_json):
    data = json.loads(blackfriday_json.stdout)  # exactly one object: json.loads refuses trailing text
    check_contract(data, CONTRACT)
    assert data["scenario"] == "blackfriday" and data["phase"] == 1 and data["seed"] == 7
    for event in data["events"]:
        assert set(event) >= {"at", "what"}
        assert len(event["at"]) == 8 and event["at"][2] == ":" and event["at"][5] == ":"
    assert data["moments"]["throughput_zero_at"] is not None
    assert data["payments"]["stuck_dollars"] > 0
    assert blackfriday_json.stderr == ""  # not a terminal: no progress bar


def test_same_seed_prints_the_same_json(blackfriday_json):
    again = cli("run", "--scenario", "blackfriday", "--phase", "1", "--seed", "7", "--json")
    a, b = json.loads(blackfriday_json.stdout), json.loads(again.stdout)
    assert strip_nondeterministic(a) == strip_nondeterministic(b)
    assert a["wall_seconds"] > 0


def test_series_can_be_included():
    done = cli("run", "--phase", "1", "--duration", "120", "--json", "--series")
    data = json.loads(done.stdout)
    lengths = {len(column) for column in data["series"].values()}
    assert len(lengths) == 1 and lengths.pop() >= 120


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--phase", "9"], "--phase"),
        (["run", "--scenario", "cybermonday"], "--scenario"),
        (["run", "--scale", "0"], "scale"),
        (["run", "--scale", "lots"], "--scale"),
        (["run", "--seed", "-1"], "--seed"),
        (["run", "--duration", "-5"], "duration"),
        (["frobnicate"], "frobnicate"),
        (["run", "--nonsense"], "--nonsense"),
        (["run", "--duration", "60", "--series"], "--json"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args, words, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("payflow-lab: error:") and words in lines[0]


def test_the_console_script_is_the_same_program():
    import shutil

    script = shutil.which("payflow-lab", path=os.path.dirname(sys.executable))
    assert script, "payflow-lab console script is not installed next to this Python"
    done = subprocess.run([script, "run", "--duration", "60", "--json"], capture_output=True, text=True, timeout=120)
    module = cli("run", "--duration", "60", "--json")
    assert strip_nondeterministic(json.loads(done.stdout)) == strip_nondeterministic(json.loads(module.stdout))


def test_human_output_has_the_tables():
    done = cli("run", "--duration", "300")
    assert done.returncode == 0
    for words in ("Payments", "Side effects", "Timeline", "Little's law"):
        assert words in done.stdout


def test_headline_numbers_are_whole_in_80_columns():
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "payflow_lab",
            "run",
            "--scenario",
            "blackfriday",
            "--phase",
            "1",
            "--memory",
            "off",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    payments = json.loads(done.stdout)["payments"]
    text = subprocess.run(
        [sys.executable, "-m", "payflow_lab", "run", "--scenario", "blackfriday", "--phase", "1", "--memory", "off"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    ).stdout
    headline = text[: text.index("Side effects")]
    assert "…" not in headline
    for key in ("attempted", "authorized", "stuck"):
        assert f"{payments[key]:,}" in headline
    assert f"{payments['stuck_dollars']:,.0f}" in headline


def test_options_before_the_command_are_kept(capsys):
    assert main(["--seed", "3", "--scale", "0.05", "--json", "run", "--duration", "30", "--memory", "off"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["seed"], data["scale"]) == (3, 0.05)
    assert main(["--seed", "3", "run", "--seed", "4", "--duration", "30", "--memory", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 4  # the command's own option wins


def test_bench_reports_backends_in_json():
    from payflow_lab.app.bench import run_benchmarks

    report = run_benchmarks(quick=True, only=["backends"])
    rows = {row["key"]: row for row in report["results"]["backends"]}
    assert rows["backends.asyncio"]["value"] > 0 and rows["backends.trio"]["value"] > 0
    assert rows["backends.ratio"]["value"] == pytest.approx(
        rows["backends.asyncio"]["value"] / rows["backends.trio"]["value"], rel=0.02
    )


def test_phase5_over_phase4_is_the_median_of_back_to_back_pairs(monkeypatch):
    """Each pair times Phase 4 then Phase 5 at once, so one slow minute moves one pair, not the row."""
    from payflow_lab.app import bench

    calls: list[int] = []
    speeds = iter([4000.0, 3000.0, 2000.0, 1000.0, 4200.0, 3000.0])  # the second pair ran in a slow minute

    def fake_rate(phase: int, **kwargs: Any) -> tuple[float, int]:
        assert kwargs == {"repeats": 1}, kwargs
        calls.append(phase)
        return next(speeds), 4299

    monkeypatch.setattr(bench, "simulated_rate", fake_rate)
    pairs = bench.phase5_over_phase4_pairs(3)
    assert calls == [4, 5, 4, 5, 4, 5]
    assert pairs == pytest.approx([4000 / 3000, 2.0, 1.4])
    assert statistics.median(pairs) == pytest.approx(1.4)


def test_a_long_run_shows_a_progress_bar_on_a_terminal():
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
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    done = subprocess.run(
        # Phase 5 through Black Friday: seconds long, so the bar (shown after 1.5 s) has time to appear
        [sys.executable, "-m", "payflow_lab", "run", "--scenario", "blackfriday", "--phase", "5", "--json"],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        timeout=300,
    )
    os.close(follower)
    reader.join(10)
    os.close(leader)
    err = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0
    json.loads(done.stdout)  # stdout stays pure JSON
    assert "blackfriday, phase 5" in err and "━" in err


def test_a_benchmark_whose_bench_only_dependency_is_missing_is_skipped_with_the_reason(monkeypatch, tmp_path):
    from payflow_lab.app import bench

    (tmp_path / "needs_a_missing_package.py").write_text("import not_a_real_package_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(bench.BENCHMARKS, "missing", "needs_a_missing_package:bench")
    report = bench.run_benchmarks(quick=True, only=["missing"])
    assert report["results"] == {}
    assert "not_a_real_package_xyz" in report["skipped"]["missing"]
