"""The run summary, defined once: the JSON a run prints, the report prints and the docs describe.

:class:`RunSummary` is the whole tree, as ``TypedDict`` classes, so a type
checker sees every key the runner writes and every key a reader takes, and
:func:`check_summary` holds a real summary against it at run time (every
required key there, no key that is not declared, nested blocks the same).
``docs/json-contract.md`` documents these keys; ``tests/test_summary.py``
fails when the page and this module disagree, and checks, over phases,
scenarios and seeds, that the counts in different blocks tell one story.

The keys common to every phase come first; then each phase's own blocks,
present only for that phase (``NotRequired``). :data:`CORE_KEYS` are the
common ones: the text report prints them in their own sections and lists
everything else under the phase.
"""

# No ``from __future__ import annotations`` here: TypedDict must see NotRequired to tell the optional keys.
import types
from typing import Any, NotRequired, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

__all__ = [
    "CORE_KEYS",
    "PHASE_KEYS",
    "DbPool",
    "Event",
    "Latency",
    "LittlesLaw",
    "Memory",
    "Moments",
    "Payments",
    "RunSummary",
    "SideEffectCounts",
    "SideEffects",
    "Tasks",
    "check_summary",
]


class Payments(TypedDict):
    """``attempted == authorized + failed + stuck``, always."""

    attempted: int
    authorized: int
    failed: int
    stuck: int
    stuck_dollars: float
    stuck_authorized: int
    stuck_authorized_dollars: float
    failed_by_reason: dict[str, int]
    stuck_by_reason: dict[str, int]


class Latency(TypedDict):
    """Simulated milliseconds; each ``None`` when nothing completed."""

    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class SideEffectCounts(TypedDict):
    """One kind's side effects: ``pending == started - delivered - failed - dropped - dead_lettered``."""

    started: int
    delivered: int
    failed: int
    dropped: int
    dead_lettered: int
    pending: int


class SideEffects(TypedDict):
    """The totals over every kind, then each kind, then the reasons (``"kind.outcome"`` -> reason -> count)."""

    delivered: int
    failed: int
    dropped: int
    dead_lettered: int
    pending: int
    by_kind: dict[str, SideEffectCounts]
    reasons: dict[str, dict[str, int]]


class Memory(TypedDict):
    """Machine measurements; ``how`` starts with the method (``"tracemalloc: "``, ``"rss: "``, ``"off: "``)."""

    start_bytes: int | None
    peak_bytes: int | None
    end_bytes: int | None
    how: str


class Tasks(TypedDict):
    """Counted tasks; ``end_in_flight``: still in flight when the run ended, or when the process was killed."""

    peak_in_flight: int
    end_in_flight: int


class Event(TypedDict):
    at: str
    what: str
    kind: str


class Moments(TypedDict):
    pool_exhausted_at: str | None
    throughput_zero_at: str | None


class LittlesLaw(TypedDict):
    """Over one window, the whole run: ``predicted_in_flight = arrival_rate_per_s * mean_time_in_system_s``."""

    window_s: float
    arrival_rate_per_s: float
    mean_latency_s: float
    mean_time_in_system_s: float
    predicted_in_flight: float
    measured_mean_in_flight: float


class DbPool(TypedDict):
    size: int
    checkouts: int
    checkout_timeouts: int
    peak_in_use: int


class RunSummary(TypedDict):
    """One run, as ``payflow-lab run --json`` prints it (see ``docs/json-contract.md``)."""

    scenario: str
    phase: int
    phase_name: str
    seed: int
    scale: float
    sim_seconds: float
    wall_seconds: float
    payments_per_wall_second: float | None
    backend: str
    story_window: list[str]
    db_pool_size: int
    payments: Payments
    latency_ms: Latency
    authorization_ms: Latency
    side_effects: SideEffects
    memory: Memory
    tasks: Tasks
    events: list[Event]
    moments: Moments
    littles_law: LittlesLaw
    # ---------------------------------------------------------- each phase's own
    #: Phases 1, 4, 5: the connection pool's use.
    db_pool: NotRequired[DbPool]
    #: Phase 1: webhook calls that timed out on the critical path, and the retries they cost.
    webhook_timeouts: NotRequired[int]
    webhook_retries: NotRequired[int]
    #: Phase 2: tasks, their memory, what a shutdown loses.
    fire_and_forget: NotRequired[dict[str, Any]]
    #: Phase 3: streams, abandoned couriers, leaked tasks, head-of-line blocking.
    channels: NotRequired[dict[str, Any]]
    #: Phases 4, 5: the hook bus's subscribers and its shutdown report.
    hooks: NotRequired[dict[str, Any]]
    #: Phase 5: breakers, dead letters, recovery, webhook latency by tier, the webhook path, timeouts.
    breakers: NotRequired[dict[str, Any]]
    dead_letters: NotRequired[dict[str, Any]]
    recovery_seconds: NotRequired[float | None]
    recovery: NotRequired[dict[str, Any]]
    webhook_latency_ms_by_tier: NotRequired[dict[str, Any]]
    webhooks: NotRequired[dict[str, Any]]
    timeouts: NotRequired[dict[str, Any]]


#: The keys every run has, in the order the contract lists them.
CORE_KEYS: frozenset[str] = RunSummary.__required_keys__
#: The keys only some phases add.
PHASE_KEYS: frozenset[str] = RunSummary.__optional_keys__


def _check(value: Any, hint: Any, path: str, problems: list[str]) -> None:
    if get_origin(hint) is NotRequired:
        hint = get_args(hint)[0]
    if is_typeddict(hint):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        hints = get_type_hints(hint)
        for key in sorted(hint.__required_keys__ - value.keys()):
            problems.append(f"{path}.{key}: missing")
        for key in sorted(value.keys() - hints.keys()):
            problems.append(f"{path}.{key}: not declared in {hint.__name__}")
        for key in sorted(value.keys() & hints.keys()):
            _check(value[key], hints[key], f"{path}.{key}", problems)
        return
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return
        hint = next(o for o in options if o is not type(None))
        origin = get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        inner = get_args(hint)[1]
        for key, item in value.items():
            _check(item, inner, f"{path}.{key}", problems)
    elif origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, get_args(hint)[0], f"{path}[{i}]", problems)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected a number, got {value!r}")
    elif hint is int or hint is str:
        if isinstance(value, bool) or not isinstance(value, hint):
            problems.append(f"{path}: expected {hint.__name__}, got {value!r}")
    elif value is None and hint is not Any:
        problems.append(f"{path}: null where {hint} was declared")


def check_summary(summary: Any) -> list[str]:
    """Every way ``summary`` departs from :class:`RunSummary` (an empty list when it does not), by path."""
    problems: list[str] = []
    _check(summary, RunSummary, "summary", problems)
    return problems
