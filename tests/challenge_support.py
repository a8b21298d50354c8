"""What every challenge's test checks: the reference passes, each wrong solution fails where it should.

One test file per challenge (``test_challenge_*.py``) so that ``make test`` spreads them over the cores.
"""

from __future__ import annotations

from payflow_lab.challenges import check, get_challenge


def reference_passes(name: str, backend: str) -> None:
    challenge = get_challenge(name)
    report = check(name, challenge.reference, backend=backend, label="reference")
    assert report.passed, str(report)
    assert [v.invariant for v in report.results[0].verdicts] == list(challenge.invariants)


def wrong_fails_where_it_should(name: str, label: str, backend: str) -> None:
    wrong, breaks = get_challenge(name).wrong[label]
    result = check(name, wrong, backend=backend, label=label).results[0]
    assert not result.passed
    failed = {v.invariant: v for v in result.verdicts if not v.held}
    assert breaks in failed, f"{label} was written to break {breaks!r}; it failed {sorted(failed)}"
    verdict = failed[breaks]
    assert verdict.hint and verdict.why and verdict.measured and verdict.target


def starter_is_red_not_an_exception(name: str) -> None:
    challenge = get_challenge(name)
    namespace: dict[str, object] = {}
    exec(compile(challenge.starter, f"<starter of {name}>", "exec"), namespace)
    result = check(name, namespace[challenge.entry]).results[0]
    assert not result.passed
    assert all(v.invariant in challenge.invariants for v in result.verdicts), "the starter must run, and fail"


def solution_text_passes(name: str) -> None:
    """What the lesson's solution cell holds, run as a learner would run it, passes."""
    challenge = get_challenge(name)
    namespace: dict[str, object] = {}
    exec(compile(challenge.solution(), f"<solution of {name}>", "exec"), namespace)
    report = check(name, namespace[challenge.entry])
    assert report.passed, str(report)
