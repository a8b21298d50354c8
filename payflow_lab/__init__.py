"""payflow-lab: the PayFlow Black Friday incident, rebuilt phase by phase on anyio.

The engine is importable on its own::

    import payflow_lab as pf
    result = pf.run("blackfriday", phase=1, seed=7)
    result.summary["payments"]["stuck_dollars"]

This module is the public API: what a lesson or a user needs, by name. Six
subpackages are public too, each with its own ``__all__``: :mod:`payflow_lab.resilience`
(breakers, rate limits, retries, dead letters), :mod:`payflow_lab.hooks` (the hook
bus), :mod:`payflow_lab.durable` (the outbox and real delivery),
:mod:`payflow_lab.observe` (Prometheus, alert rules, the terminal dashboard),
:mod:`payflow_lab.lab` (the notebook widgets; needs the ``lab`` extra) and
:mod:`payflow_lab.challenges` (the learners' exercises and their checker). Anything
else is internal and may move: ``docs/architecture.md`` says where it lives.

The names of the notebook side, durable delivery and the five pipeline classes are
imported on first use, so ``import payflow_lab`` stays quick and works without the
``lab`` extra.

See the README for the workshop, and ``payflow-lab --help`` for the CLI.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from payflow_lab.core import calibration, errors
from payflow_lab.core.domain import CURRENCIES, EndpointProfile, Merchant, MerchantDirectory, Payment, Tier
from payflow_lab.core.errors import (
    BreakerOpen,
    BusClosed,
    Declined,
    EndpointError,
    PayflowError,
    RateLimited,
    Rejected,
    RetryExhausted,
    ValidationError,
)
from payflow_lab.core.faults import EndpointMode, FaultPlan
from payflow_lab.core.recorder import hhmmss, percentile, strip_nondeterministic
from payflow_lab.core.scenarios import SCENARIOS, Scenario, Step, get_scenario
from payflow_lab.core.vtime import in_virtual_time, in_worker_thread, run_virtual
from payflow_lab.core.world import World
from payflow_lab.phases import PHASES, Pipeline, available_phases, get_phase
from payflow_lab.phases.observation import Observation
from payflow_lab.resilience import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    FullJitter,
    InMemoryDeadLetters,
    KeyedCircuitBreaker,
    RateLimit,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
)
from payflow_lab.runner import (
    DEFAULT_BACKEND,
    DEFAULT_SCALE,
    Controls,
    LiveRun,
    RunConfig,
    RunResult,
    Simulation,
    run,
    run_async,
    run_config,
)
from payflow_lab.summary import RunSummary

try:
    __version__ = version("payflow-lab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

#: Names imported on first use: name -> the module that defines it.
_LAZY = {
    "SynchronousPipeline": "payflow_lab.phases.sync",
    "FireAndForgetPipeline": "payflow_lab.phases.fire_and_forget",
    "ChannelPipeline": "payflow_lab.phases.channels",
    "HookBusPipeline": "payflow_lab.phases.hook_bus",
    "HardenedPipeline": "payflow_lab.phases.hardened",
    "HookBus": "payflow_lab.hooks",
    "Outbox": "payflow_lab.durable",
    "LiveSession": "payflow_lab.lab",
    "ControlPanel": "payflow_lab.lab",
    "key_metrics": "payflow_lab.app.narrate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'payflow_lab' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CURRENCIES",
    "DEFAULT_BACKEND",
    "DEFAULT_SCALE",
    "PHASES",
    "SCENARIOS",
    "BreakerConfig",
    "BreakerOpen",
    "BreakerState",
    "BusClosed",
    "ChannelPipeline",
    "CircuitBreaker",
    "ControlPanel",
    "Controls",
    "Declined",
    "EndpointError",
    "EndpointMode",
    "EndpointProfile",
    "FaultPlan",
    "FireAndForgetPipeline",
    "FullJitter",
    "HardenedPipeline",
    "HookBus",
    "HookBusPipeline",
    "InMemoryDeadLetters",
    "KeyedCircuitBreaker",
    "LiveRun",
    "LiveSession",
    "Merchant",
    "MerchantDirectory",
    "Observation",
    "Outbox",
    "Payment",
    "PayflowError",
    "Pipeline",
    "RateLimit",
    "RateLimited",
    "Rejected",
    "RetryBudget",
    "RetryExhausted",
    "RetryPolicy",
    "RunConfig",
    "RunResult",
    "RunSummary",
    "Scenario",
    "Simulation",
    "Step",
    "SynchronousPipeline",
    "Tier",
    "TokenBucket",
    "ValidationError",
    "World",
    "__version__",
    "available_phases",
    "calibration",
    "errors",
    "get_phase",
    "get_scenario",
    "hhmmss",
    "in_virtual_time",
    "in_worker_thread",
    "key_metrics",
    "percentile",
    "run",
    "run_async",
    "run_config",
    "run_virtual",
    "strip_nondeterministic",
]
