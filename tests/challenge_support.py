"""What every challenge's test checks: the reference passes, each wrong solution fails where it should.

One test file per challenge (``test_challenge_*.py``) so that ``make test`` spreads them over the cores.
"""

from __future__ import annotations

import pytest

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


def challenge_tests(name: str) -> dict[str, object]:
    """The tests of one challenge, for its module's globals: ``globals().update(challenge_tests(NAME))``."""
    backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])

    @backends
    def test_the_reference_passes(backend: str) -> None:
        reference_passes(name, backend)

    @backends
    @pytest.mark.parametrize("label", list(get_challenge(name).wrong))
    def test_each_wrong_solution_fails_the_invariant_it_breaks(label: str, backend: str) -> None:
        wrong_fails_where_it_should(name, label, backend)

    def test_the_starter_runs_and_is_judged_red() -> None:
        starter_is_red_not_an_exception(name)

    def test_the_solution_cells_code_passes() -> None:
        solution_text_passes(name)

    return {
        test.__name__: test
        for test in (
            test_the_reference_passes,
            test_each_wrong_solution_fails_the_invariant_it_breaks,
            test_the_starter_runs_and_is_judged_red,
            test_the_solution_cells_code_passes,
        )
    }
