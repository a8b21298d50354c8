"""Lesson 03's challenge, time-out-the-work: judged on both backends (see challenge_support.py)."""

from __future__ import annotations

import pytest
from challenge_support import (
    reference_passes,
    solution_text_passes,
    starter_is_red_not_an_exception,
    wrong_fails_where_it_should,
)

NAME = "time-out-the-work"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_reference_passes(backend: str) -> None:
    reference_passes(NAME, backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("label", ["closes-the-reply-stream", "calls-without-timeout"])
def test_each_wrong_solution_fails_the_invariant_it_breaks(label: str, backend: str) -> None:
    wrong_fails_where_it_should(NAME, label, backend)


def test_the_starter_runs_and_is_judged_red() -> None:
    starter_is_red_not_an_exception(NAME)


def test_the_solution_cells_code_passes() -> None:
    solution_text_passes(NAME)
