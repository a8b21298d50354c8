"""The five phases of the PayFlow pipeline, one module each, all driven the same way.

========  ======================  ==============================================
phase     module                  the mistake or the cure
========  ======================  ==============================================
1         :mod:`.sync`            side effects awaited on the critical path
2         :mod:`.fire_and_forget` one unbounded, untimed task per side effect
3         :mod:`.channels`        streams and hand-rolled coordination that leak
4         :mod:`.hook_bus`        the hook bus: bounded, timed, isolated, drained
5         :mod:`.hardened`        breakers, rate limits, lanes, retries, dead letters
========  ======================  ==============================================
"""

from __future__ import annotations

from importlib import import_module

from payflow_lab.core.errors import ValidationError
from payflow_lab.phases.base import Pipeline
from payflow_lab.phases.observation import Observable, Observation

__all__ = ["PHASES", "Observable", "Observation", "Pipeline", "available_phases", "get_phase"]

#: Phase number -> "module:class". A phase is available once its module exists.
PHASES: dict[int, str] = {
    1: "payflow_lab.phases.sync:SynchronousPipeline",
    2: "payflow_lab.phases.fire_and_forget:FireAndForgetPipeline",
    3: "payflow_lab.phases.channels:ChannelPipeline",
    4: "payflow_lab.phases.hook_bus:HookBusPipeline",
    5: "payflow_lab.phases.hardened:HardenedPipeline",
}


def get_phase(number: int) -> type[Pipeline]:
    """The pipeline class of phase ``number``; a clear error if it does not exist (yet)."""
    if isinstance(number, bool) or not isinstance(number, int) or number not in PHASES:
        raise ValidationError("phase", f"must be one of {', '.join(map(str, PHASES))}, got {number!r}")
    module_name, _, class_name = PHASES[number].partition(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ValidationError("phase", f"phase {number} is not built yet") from None
    return getattr(module, class_name)


def available_phases() -> list[int]:
    """The phases whose modules exist in this installation."""
    found = []
    for number in PHASES:
        try:
            get_phase(number)
        except ValidationError:
            continue
        found.append(number)
    return found
