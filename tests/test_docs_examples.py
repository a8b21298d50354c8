"""Every documentation page's example prints exactly what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs" / "resilience"


def run_documented_example(page: str) -> tuple[str, str]:
    """The first Python block of ``docs/resilience/<page>`` run as a script, and the output the page shows after it."""
    text = (DOCS / page).read_text()
    match = re.search(r"```python\n(.*?)```\s*prints\s*```\n(.*?)```", text, re.S)
    assert match, f"{page} has no ```python block followed by 'prints' and its output"
    code, shown = match.groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, page, "exec"), {"__name__": "__doc_example__"})
    return out.getvalue(), shown


@pytest.mark.parametrize("page", ["circuit-breaker.md", "rate-limiter.md", "retry.md", "dead-letters.md"])
def test_the_documentation_example_prints_what_the_page_says(page: str) -> None:
    printed, shown = run_documented_example(page)
    assert printed == shown
