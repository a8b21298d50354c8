"""payflow-lab: the PayFlow Black Friday incident, rebuilt phase by phase on anyio.

The engine is importable on its own::

    import payflow_lab as pf
    result = pf.run("blackfriday", phase=1, seed=7)
    result.summary["payments"]["stuck_dollars"]

See the README for the workshop, and ``payflow-lab --help`` for the CLI.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .domain import CURRENCIES, EndpointProfile, Merchant, MerchantDirectory, Payment, Tier, ValidationError
from .faults import EndpointMode, FaultPlan
from .phases import PHASES, Pipeline, available_phases, get_phase
from .runner import (
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
from .scenarios import SCENARIOS, Scenario, Step, get_scenario
from .world import Declined, EndpointError, World

try:
    __version__ = version("payflow-lab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "CURRENCIES",
    "Controls",
    "DEFAULT_BACKEND",
    "DEFAULT_SCALE",
    "Declined",
    "EndpointError",
    "EndpointMode",
    "EndpointProfile",
    "FaultPlan",
    "LiveRun",
    "Merchant",
    "MerchantDirectory",
    "PHASES",
    "Payment",
    "Pipeline",
    "RunConfig",
    "RunResult",
    "SCENARIOS",
    "Scenario",
    "Simulation",
    "Step",
    "Tier",
    "ValidationError",
    "World",
    "__version__",
    "available_phases",
    "get_phase",
    "get_scenario",
    "run",
    "run_async",
    "run_config",
]
