"""Your turn: challenges where you write the resilience code, and a checker judges it.

Each lesson from 01 to 07 ends its story with one: a starter (the code you
fill in, with the engine's real interfaces), and a checker that runs your code
inside the engine, in virtual time, over several seeds and fault schedules,
and judges named invariants. A verdict says what held, with the measured
figure beside its target; for what did not, the first counter-example and a
hint that points at the idea, not the answer::

    from payflow_lab.challenges import check, starter
    print(starter("circuit-breaker"))      # the code to start from
    check("circuit-breaker", Breaker)      # in a notebook: a table, green or red

From a terminal, ``payflow-lab check --list``, ``payflow-lab check NAME
FILE.py`` and ``payflow-lab check NAME --demo`` (the reference and every
shipped wrong solution). ``docs/challenges.md`` lists them all.

=======  ===========================  ============================================
lesson   name                         you write
=======  ===========================  ============================================
01       release-the-connection       Phase 1's critical path, holding the pool less
02       bounded-fire-and-forget      Phase 2 with a bound and a timeout
03       time-out-the-work            Phase 3's webhook worker, without a courier
04       subscriber-timeout           a hook handler that lets go by cancellation
05       circuit-breaker              the circuit breaker
06       page-before-the-freeze       an alert rule that pages in time, and only then
07       idempotent-receiver          a receiver that applies each event once
=======  ===========================  ============================================
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

from payflow_lab.challenges.alert import CHALLENGE as _ALERT
from payflow_lab.challenges.base import DEADLINE_S, CandidateResult, Challenge, CheckReport, Verdict, judge
from payflow_lab.challenges.breaker import CHALLENGE as _BREAKER
from payflow_lab.challenges.pipelines import CHANNELS as _CHANNELS
from payflow_lab.challenges.pipelines import CRITICAL_PATH as _CRITICAL_PATH
from payflow_lab.challenges.pipelines import FIRE_AND_FORGET as _FIRE_AND_FORGET
from payflow_lab.challenges.receiver import CHALLENGE as _RECEIVER
from payflow_lab.challenges.subscriber import CHALLENGE as _SUBSCRIBER
from payflow_lab.core.errors import ValidationError

__all__ = [
    "CHALLENGES",
    "DEADLINE_S",
    "CandidateResult",
    "Challenge",
    "CheckReport",
    "Verdict",
    "check",
    "demo",
    "get_challenge",
    "load_candidate",
    "solution",
    "starter",
]

#: Every challenge by name, in lesson order.
CHALLENGES: dict[str, Challenge] = {
    c.name: c for c in (_CRITICAL_PATH, _FIRE_AND_FORGET, _CHANNELS, _SUBSCRIBER, _BREAKER, _ALERT, _RECEIVER)
}


def get_challenge(name: str) -> Challenge:
    """The challenge called ``name``; a clear error listing them all if there is none."""
    challenge = CHALLENGES.get(name) if isinstance(name, str) else None
    if challenge is None:
        raise ValidationError("name", f"no challenge called {name!r}; there are: {', '.join(CHALLENGES)}")
    return challenge


def starter(name: str) -> str:
    """The code to start ``name`` from, as text (paste it into a cell or a file)."""
    return get_challenge(name).starter


def check(
    name: str, candidate: Any, *, backend: str = "asyncio", label: str | None = None, deadline: float = DEADLINE_S
) -> CheckReport:
    """Judge ``candidate`` (the class, function or rule the starter defines) on challenge ``name``.

    Never raises because of the candidate: an error, a hang or a wrong shape is a verdict.
    """
    challenge = get_challenge(name)
    result = judge(challenge, candidate, label or _label(candidate), backend=backend, deadline=deadline)
    return CheckReport(challenge.name, (result,))


def demo(name: str, *, backend: str = "asyncio") -> CheckReport:
    """The reference and every shipped wrong solution of ``name``, judged: what passing and failing look like."""
    challenge = get_challenge(name)
    results = [judge(challenge, challenge.reference, "reference", backend=backend)]
    results += [
        judge(challenge, wrong, f"wrong:{label}", backend=backend) for label, (wrong, _) in challenge.wrong.items()
    ]
    return CheckReport(challenge.name, tuple(results))


def solution(name: str) -> str:
    """The reference solution of ``name`` as source text, in the starter's names."""
    return get_challenge(name).solution()


def load_candidate(name: str, path: str | Path) -> Any:
    """The object a learner's file defines for challenge ``name`` (its ``entry``: ``Breaker``, ``MY_RULE``, ...).

    The file is run as a script would be. A missing file, a file that does not run and a file without the
    entry each raise :class:`~payflow_lab.core.errors.ValidationError` naming the file and what is wrong.
    """
    challenge = get_challenge(name)
    path = Path(path)
    if not path.is_file():
        raise ValidationError("file", f"{path}: no such file")
    try:
        namespace = runpy.run_path(str(path), run_name="__candidate__")
    except SyntaxError as exc:
        raise ValidationError("file", f"{path}, line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise ValidationError("file", f"{path}: running it raised {type(exc).__name__}: {exc}") from None
    if challenge.entry not in namespace:
        raise ValidationError(
            "file",
            f"{path} defines no {challenge.entry!r}: start from the starter (payflow-lab check {name} --starter)",
        )
    return namespace[challenge.entry]


def _label(candidate: Any) -> str:
    name = getattr(candidate, "__name__", None) or getattr(candidate, "name", None)
    return str(name) if name else type(candidate).__name__
