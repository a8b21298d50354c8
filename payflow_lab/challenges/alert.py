"""Lesson 06's challenge: an alert that pages before the freeze, and only then.

The learner writes one alert rule (a :class:`~payflow_lab.observe.Rule`,
with its query written with ``select``, ``increase`` and ``ratio``). The
judge replays it, the way Prometheus would, against the scrapes of four
afternoons at a twentieth of PayFlow: Phase 1 on Black Friday (it must page,
minutes before payments freeze), Phase 1 on a normal day, and Phase 5 on a
normal day and on Black Friday (it must stay quiet: nothing is wrong for
customers there). The runs are made once per process and shared by every
candidate, so a check takes a moment after the first.
"""

from __future__ import annotations

import threading
from typing import Any

from payflow_lab.challenges.base import Challenge, Verdict
from payflow_lab.core.recorder import hhmmss
from payflow_lab.observe.alerts import Rule, Scraper, evaluate, increase, ratio, select
from payflow_lab.runner import RunConfig, run_config

__all__ = ["CHALLENGE"]

SCALE = 0.05
SEED = 7
#: Black Friday until 14:40, as in lesson 06.
BLACK_FRIDAY_S = 50 * 60
#: How long before the freeze a page must come to be worth waking someone for.
LEAD_S = 3 * 60

STARTER = '''\
from payflow_lab.observe import Rule, increase, ratio, select


def pool_in_use(p, i):
    """The share of the database pool in use at scrape i: {None: share}."""
    return ratio(select(p, i, "payflow_db_pool_connections", state="in_use"),
                 select(p, i, "payflow_db_pool_connections"))


# TODO: page at least three minutes before payments freeze on Black Friday, and never on a normal day.
MY_RULE = Rule("DatabasePoolFull", "page", pool_in_use, lambda v: v > 0.9, 120, None)
'''


def _pool_in_use(p: Scraper, i: int) -> dict[str | None, float]:
    return ratio(
        select(p, i, "payflow_db_pool_connections", state="in_use"), select(p, i, "payflow_db_pool_connections")
    )


def pool_filling(p: Scraper, i: int) -> dict[str | None, float]:
    """The reference's query: the pool's use averaged over the last two minutes (eight scrapes)."""
    window = [_pool_in_use(p, j).get(None) for j in range(max(0, i - 7), i + 1)]
    known = [u for u in window if u is not None]
    return {None: sum(known) / len(known)} if known else {}


#: The reference: the pool *filling*, averaged so that bursts count, with no ``for:`` to wait out.
MY_RULE = Rule("DatabasePoolFilling", "page", pool_filling, lambda v: v > 0.75, 0, None)
#: Wrong: the rule everyone writes first; a pool that fills in bursts is above 90% for two minutes only at the end.
POOL_FULL = Rule("DatabasePoolFull", "page", _pool_in_use, lambda v: v > 0.9, 120, None)


def _completions(p: Scraper, i: int) -> dict[str | None, float]:
    return increase(p, i, "payflow_payments_total", 120, outcome="authorized")


#: Wrong: pages on a symptom that comes too late, once nothing completes (the freeze itself).
NOTHING_COMPLETES = Rule("PaymentsNotCompleting", "page", _completions, lambda v: v == 0, 60, None)
#: Wrong: so eager it fires on an ordinary afternoon: noise that teaches people to ignore pages.
POOL_BUSY = Rule("DatabasePoolBusy", "page", _pool_in_use, lambda v: v > 0.3, 0, None)

AFTERNOONS = (
    ("phase 1, Black Friday", 1, "blackfriday"),
    ("phase 1, normal", 1, "normal"),
    ("phase 5, normal", 5, "normal"),
    ("phase 5, Black Friday", 5, "blackfriday"),
)
_scrapes: dict[tuple[str, str], tuple[Scraper, Any]] = {}
_lock = threading.Lock()


def _afternoon(title: str, phase: int, scenario: str, backend: str) -> tuple[Scraper, Any]:
    with _lock:
        key = (title, backend)
        if key not in _scrapes:
            scraper = Scraper()
            config = RunConfig(
                scenario=scenario,
                phase=phase,
                seed=SEED,
                scale=SCALE,
                memory="off",
                backend=backend,
                duration=BLACK_FRIDAY_S if scenario == "blackfriday" else None,
            )
            result = run_config(config, on_tick=scraper.scrape)
            _scrapes[key] = (scraper, result.summary["moments"]["throughput_zero_at"])
        return _scrapes[key]


def _seconds(hms: str) -> float:
    h, m, s = (int(part) for part in hms.split(":"))
    return h * 3600.0 + m * 60 + s


def _judge(rule: Any, backend: str) -> list[Verdict]:
    fired = {
        title: (evaluate(scraper, rule), freeze)
        for title, phase, scenario in AFTERNOONS
        for scraper, freeze in [_afternoon(title, phase, scenario, backend)]
    }
    verdicts = [
        Verdict(
            "is a page",
            rule.severity == "page",
            repr(rule.severity),
            "'page'",
            "a freeze is customers hurting now: someone must be woken"
            if rule.severity == "page"
            else "a rule for a freeze that is not a page wakes nobody",
            hint=None if rule.severity == "page" else "severity decides who is woken: make it 'page'",
        )
    ]
    times, freeze = fired["phase 1, Black Friday"]
    freeze_s = _seconds(freeze)
    first = min(times.values()) if times else None
    if first is None:
        held, measured = False, "never fired"
    else:
        lead = freeze_s - first
        held = lead >= LEAD_S
        side = "before" if lead >= 0 else "after"
        measured = f"fired {hhmmss(first)}, {abs(lead):.0f} s {side} the freeze at {freeze}"
    verdicts.append(
        Verdict(
            "pages before the freeze",
            held,
            measured,
            f"at least {LEAD_S // 60:g} minutes before it",
            "on Black Friday, phase 1, the page comes while there is still time to act"
            if held
            else "by the time this page comes, payments have stopped (or it never comes)",
            None
            if held
            else {
                "afternoon": "phase 1, Black Friday",
                "seed": SEED,
                "scale": SCALE,
                "freeze": freeze,
                "fired": "never" if first is None else hhmmss(first),
            },
            None
            if held
            else "page on what fills up *before* customers feel it (saturation), and make sure a "
            "`for:` does not wait out the very minutes you need; a pool that fills in bursts "
            "is rarely full for long",
        )
    )
    noisy = [
        (title, min(times.values()))
        for title, (times, _) in fired.items()
        if title != "phase 1, Black Friday" and times
    ]
    held = not noisy
    verdicts.append(
        Verdict(
            "quiet when customers are fine",
            held,
            "quiet on all three" if held else f"fired on {len(noisy)} of 3 afternoons",
            "phase 1 normal, phase 5 normal, phase 5 Black Friday: never",
            "no page on an ordinary afternoon, nor when the pipeline holds"
            if held
            else "a page on an afternoon where no customer is hurting is noise; noise teaches people to ignore pages",
            None if held else {"afternoon": noisy[0][0], "seed": SEED, "fired": hhmmss(noisy[0][1])},
            None if held else "replay the rule against a normal day: raise the threshold, or average over a window",
        )
    )
    return verdicts


def _shape(candidate: Any) -> str | None:
    if not isinstance(candidate, Rule):
        return f"must be a Rule (from payflow_lab.observe), got {type(candidate).__name__}"
    if not callable(candidate.expr) or not callable(candidate.fires):
        return "the rule's expr and fires must be functions"
    return None


CHALLENGE = Challenge(
    name="page-before-the-freeze",
    lesson="06",
    title="An alert that pages before the freeze",
    statement=(
        "Write `MY_RULE`: a page that fires at least three minutes before payments freeze on Black Friday "
        "(phase 1), and never on an afternoon where customers are fine (phase 1 on a normal day, phase 5 on "
        "either). The checker replays it against the scrapes of those four afternoons, as Prometheus would."
    ),
    entry="MY_RULE",
    starter=STARTER,
    reference=MY_RULE,
    wrong={
        "pool-full-for-two-minutes": (POOL_FULL, "pages before the freeze"),
        "nothing-completes": (NOTHING_COMPLETES, "pages before the freeze"),
        "pool-busy": (POOL_BUSY, "quiet when customers are fine"),
    },
    shape=_shape,
    run=_judge,
    invariants=("is a page", "pages before the freeze", "quiet when customers are fine"),
    solution_header="from payflow_lab.observe import Rule, Scraper, ratio, select\n\n\n",
    solution_parts=(_pool_in_use, pool_filling),
    solution_footer="\n\n#: The pool *filling*, averaged so that bursts count, with no `for:` to wait out.\n"
    'MY_RULE = Rule("DatabasePoolFilling", "page", pool_filling, lambda v: v > 0.75, 0, None)\n',
)
