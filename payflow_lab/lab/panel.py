"""The control panel: what a learner can change, as ipywidgets, with nothing unbounded.

The panel only *collects* settings and reports them; it runs nothing. A
:class:`~payflow_lab.lab.LiveSession` listens to it and turns a moved slider
into ``LiveRun.set_faults(...)`` (applied at the next simulated second) and a
pressed button into start, pause, stop or reset.

Every knob is bounded twice. The widgets carry the bounds of
:data:`payflow_lab.core.faults.LIMITS` (a slider clamps ``1e9`` to its maximum), and
every value is validated by the same rules as :class:`~payflow_lab.FaultPlan`
before anyone hears about it, because some values slip past a slider (``nan``
set from code, a hand-typed number). A rejected value is named in the status
line, the widget goes back to its last good value, and nothing is half-applied.
No callback ever shows a traceback: errors become a red status line.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from typing import Any

import ipywidgets as widgets

from payflow_lab.core.domain import Tier
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.faults import LIMITS, EndpointMode, FaultPlan
from payflow_lab.core.scenarios import SCENARIOS, get_scenario
from payflow_lab.core.validation import number
from payflow_lab.phases import available_phases, get_phase
from payflow_lab.runner import DEFAULT_SEED

__all__ = ["BUTTON_STATES", "PACE_LIMITS", "SEED_LIMITS", "ControlPanel", "STATES"]

#: The states a live session moves through (see :class:`~payflow_lab.lab.LiveSession`).
STATES = ("idle", "running", "paused", "stopping", "finished", "stopped", "failed")

#: Which buttons are enabled in each state: start, pause, stop, reset; and whether the
#: run's setup (scenario, phase, seed) may change.
BUTTON_STATES: dict[str, dict[str, bool]] = {
    "idle": {"start": True, "pause": False, "stop": False, "reset": True, "setup": True},
    "running": {"start": False, "pause": True, "stop": True, "reset": False, "setup": False},
    "paused": {"start": False, "pause": True, "stop": True, "reset": False, "setup": False},
    "stopping": {"start": False, "pause": False, "stop": False, "reset": False, "setup": False},
    "finished": {"start": True, "pause": False, "stop": False, "reset": True, "setup": True},
    "stopped": {"start": True, "pause": False, "stop": False, "reset": True, "setup": True},
    "failed": {"start": True, "pause": False, "stop": False, "reset": True, "setup": True},
}

#: Pacing, in simulated seconds per real second, as the panel offers it (the runner accepts 0.1-10,000).
PACE_LIMITS = (1.0, 1000.0)
#: Seeds the panel accepts.
SEED_LIMITS = (0, 2**31 - 1)

#: The fault knobs the panel shows, in order: key, label, slider step.
_SLIDERS = (
    ("traffic_multiplier", "traffic ×", 0.5),
    ("webhook_error_rate", "webhook errors", 0.01),
    ("webhook_hang_rate", "webhooks hang", 0.01),
)

_Callback = Callable[..., None]


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Run a widget callback; turn any error into the status line instead of a traceback in the log."""

    @wraps(method)
    def wrapper(self: ControlPanel, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # a widget callback must never leave a traceback in the page
            self.set_status(_describe(exc), error=True)

    return wrapper


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"


def _log_slider(limits: tuple[float, float], description: str, readout: str, **options: Any) -> Any:
    """A slider whose steps are ratios (x1.12 each), for a knob that spans orders of magnitude."""
    low, high = limits
    return widgets.FloatLogSlider(
        base=10,
        min=math.log10(low),
        max=math.log10(high),
        step=0.05,
        description=description,
        continuous_update=False,
        readout_format=readout,
        **options,
    )


class ControlPanel:
    """Scenario, phase, seed, faults, pacing and the Start / Pause / Stop / Reset buttons.

    ``phases`` limits the phase menu (a lesson about Phase 1 passes ``[1]``,
    which also locks the menu); by default every phase that exists is offered.
    ``faults`` are the initial fault settings (validated like
    :meth:`FaultPlan.apply`); :meth:`reset` returns to them.

    Listen with :meth:`on_faults` (called with the validated changes, e.g.
    ``{"webhook_error_rate": 0.3}``), :meth:`on_pace`, and :meth:`on_button`.
    ``widget`` is what to display; it has the CSS class ``payflow-panel`` and
    each control its own (``payflow-start``, ``payflow-tier-standard``, ...).
    """

    def __init__(
        self,
        *,
        scenario: str = "normal",
        phase: int = 1,
        phases: Iterable[int] | None = None,
        scenarios: Iterable[str] | None = None,
        seed: int = DEFAULT_SEED,
        pace: float = 30.0,
        faults: Mapping[str, Any] | None = None,
    ) -> None:
        self._phases = self._check_phases(phases, phase)
        self._scenarios = self._check_scenarios(scenarios, scenario)
        if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_LIMITS[0] <= seed <= SEED_LIMITS[1]:
            raise ValidationError(
                "seed", f"must be an integer between {SEED_LIMITS[0]} and {SEED_LIMITS[1]}, got {seed!r}"
            )
        self._initial_pace = self._check_pace(pace)
        plan = FaultPlan()
        plan.apply(dict(faults or {}))
        self._initial: dict[str, Any] = {
            "scenario": scenario,
            "phase": phase,
            "seed": seed,
            "pace": self._initial_pace,
            "plan": plan.snapshot(),
            "faults": dict(faults or {}),
        }
        # The faults chosen by the learner (or given here), as opposed to a scenario's scripted
        # changes, which the widgets also show while a run is live. A new run starts from these.
        self._own: dict[str, Any] = {}
        self._remember(self._initial["faults"])
        self._listeners: dict[str, list[_Callback]] = {"faults": [], "pace": [], "button": []}
        self._quiet = 0  # > 0 while the panel sets its own widgets (no callbacks then)
        self.state = "idle"
        self.status_text = ""
        self.status_error = False
        self._build()
        self._show_snapshot(self._initial["plan"])
        self.set_status("ready: press Start")

    # ------------------------------------------------------------ validation
    @staticmethod
    def _check_phases(phases: Iterable[int] | None, phase: int) -> list[int]:
        offered = available_phases() if phases is None else list(phases)
        if not offered:
            raise ValidationError("phases", "must name at least one phase")
        for n in offered:
            get_phase(n)  # a clear error for a phase that does not exist (yet)
        get_phase(phase)
        if phase not in offered:
            raise ValidationError("phase", f"phase {phase} is not among the offered phases {offered}")
        return offered

    @staticmethod
    def _check_scenarios(scenarios: Iterable[str] | None, scenario: str) -> list[str]:
        offered = list(SCENARIOS) if scenarios is None else list(scenarios)
        if not offered:
            raise ValidationError("scenarios", "must name at least one scenario")
        for name in (*offered, scenario):
            get_scenario(name)
        if scenario not in offered:
            raise ValidationError("scenario", f"{scenario!r} is not among the offered scenarios {offered}")
        return offered

    @staticmethod
    def _check_pace(pace: Any) -> float:
        return number(
            "pace", pace, minimum=PACE_LIMITS[0], maximum=PACE_LIMITS[1], unit=" simulated seconds per second"
        )

    # ----------------------------------------------------------------- build
    def _build(self) -> None:
        style = {"description_width": "130px"}
        wide = widgets.Layout(width="370px")
        self.scenario = widgets.Dropdown(
            options=[(f"{name}: {SCENARIOS[name].title}", name) for name in self._scenarios],
            value=self._initial["scenario"],
            description="scenario",
            style=style,
            layout=widgets.Layout(width="460px"),
        )
        self.phase = widgets.Dropdown(
            options=[(f"{n}: {get_phase(n).name}", n) for n in self._phases],
            value=self._initial["phase"],
            description="phase",
            style=style,
            layout=wide,
        )
        self.seed = widgets.BoundedIntText(
            value=self._initial["seed"],
            min=SEED_LIMITS[0],
            max=SEED_LIMITS[1],
            description="seed",
            style=style,
            layout=widgets.Layout(width="220px"),
        )
        self.sliders: dict[str, widgets.FloatSlider | widgets.FloatLogSlider] = {}
        for key, label, step in _SLIDERS:
            low, high = LIMITS[key]
            self.sliders[key] = widgets.FloatSlider(
                min=low,
                max=high,
                step=step,
                description=label,
                style=style,
                layout=wide,
                continuous_update=False,
                readout_format=".2f",
            )
        self.sliders["webhook_latency_multiplier"] = _log_slider(
            LIMITS["webhook_latency_multiplier"], "webhook latency ×", ".2f", style=style, layout=wide
        )
        self.tiers = {
            tier: widgets.ToggleButtons(
                options=[m.value for m in EndpointMode],
                description=f"{tier.value}",
                style={"description_width": "130px", "button_width": "64px"},
                tooltips=["answers normally", "refuses connections (fails fast)", "accepts and never answers"],
            )
            for tier in Tier
        }
        self.pace = _log_slider(
            PACE_LIMITS, "pace (sim s/s)", ".0f", style=style, layout=wide, value=self._initial_pace
        )
        self.buttons = {
            "start": widgets.Button(description="Start", icon="play", button_style="success"),
            "pause": widgets.Button(description="Pause", icon="pause"),
            "stop": widgets.Button(description="Stop", icon="stop", button_style="danger"),
            "reset": widgets.Button(description="Reset", icon="undo"),
        }
        self.status = widgets.HTML()
        for name, widget in (
            ("scenario", self.scenario),
            ("phase", self.phase),
            ("seed", self.seed),
            ("pace", self.pace),
            ("status", self.status),
        ):
            widget.add_class(f"payflow-{name}")
        for key, widget in self.sliders.items():
            widget.add_class(f"payflow-{key.replace('_', '-')}")
            widget.observe(self._slider_changed, names="value")
        for tier, widget in self.tiers.items():
            widget.add_class(f"payflow-tier-{tier.value}")
            widget.observe(self._tier_changed, names="value")
        for name, button in self.buttons.items():
            button.add_class(f"payflow-{name}")
            button.on_click(self._button_clicked)
        self.pace.observe(self._pace_changed, names="value")
        self.phase.disabled = len(self._phases) == 1
        self.scenario.disabled = len(self._scenarios) == 1
        heading = widgets.HTML("<b>Faults</b> <span style='color:#666'>(apply at the next simulated second)</span>")
        tiers_heading = widgets.HTML("<b>Merchant endpoints by tier</b>")
        # Rows wrap instead of overflowing: in a narrow JupyterLab window (1,200 px with the file browser
        # open) the seed box goes to the next line rather than off the edge.
        wrap = widgets.Layout(flex_flow="row wrap")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.scenario, self.phase, self.seed], layout=wrap),
                heading,
                widgets.HBox(
                    [
                        widgets.VBox([self.sliders[k] for k in ("traffic_multiplier", "webhook_error_rate")]),
                        widgets.VBox([self.sliders[k] for k in ("webhook_hang_rate", "webhook_latency_multiplier")]),
                    ],
                    layout=widgets.Layout(flex_flow="row wrap"),
                ),
                tiers_heading,
                widgets.VBox(list(self.tiers.values())),
                widgets.HBox([self.pace, *self.buttons.values()], layout=widgets.Layout(flex_flow="row wrap")),
                self.status,
            ]
        )
        self.widget.add_class("payflow-panel")
        self.set_state("idle")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------- listeners
    def on_faults(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(changes)`` when the learner changes a fault (already validated)."""
        self._listeners["faults"].append(callback)

    def on_pace(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(pace)`` when the learner changes the pacing."""
        self._listeners["pace"].append(callback)

    def on_button(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` with ``"start"``, ``"pause"``, ``"stop"`` or ``"reset"`` on a click."""
        self._listeners["button"].append(callback)

    def _emit(self, kind: str, value: Any) -> None:
        if kind == "faults":
            self._remember(value)
        for callback in self._listeners[kind]:
            callback(value)

    def _remember(self, faults: Mapping[str, Any]) -> None:
        for key, value in faults.items():
            if key == "tier_modes":
                tiers = self._own.setdefault("tier_modes", {})
                tiers.update({getattr(t, "value", t): getattr(m, "value", m) for t, m in value.items()})
            else:
                self._own[key] = value

    # -------------------------------------------------------------- handlers
    @_guarded
    def _slider_changed(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        key = next(k for k, w in self.sliders.items() if w is change["owner"])
        try:
            staged = FaultPlan().apply({key: change["new"]})
        except ValidationError as exc:
            self._set_quietly(change["owner"], change["old"])
            self.set_status(f"{exc} (kept {change['old']:g})", error=True)
            return
        self._emit("faults", staged)

    @_guarded
    def _tier_changed(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        tier = next(t for t, w in self.tiers.items() if w is change["owner"])
        changes = {"tier_modes": {tier.value: change["new"]}}
        FaultPlan().apply(changes)
        self._emit("faults", changes)

    @_guarded
    def _pace_changed(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        try:
            pace = self._check_pace(change["new"])
        except ValidationError as exc:
            self._set_quietly(self.pace, change["old"])
            self.set_status(str(exc), error=True)
            return
        self._emit("pace", pace)

    @_guarded
    def _button_clicked(self, button: widgets.Button) -> None:
        name = next(n for n, b in self.buttons.items() if b is button)
        self._emit("button", name)

    def _set_quietly(self, widget: widgets.Widget, value: Any) -> None:
        self._quiet += 1
        try:
            widget.value = value
        finally:
            self._quiet -= 1

    # ---------------------------------------------------------------- values
    @property
    def selected_scenario(self) -> str:
        return str(self.scenario.value)

    @property
    def selected_phase(self) -> int:
        return int(self.phase.value)

    @property
    def selected_seed(self) -> int:
        return int(self.seed.value)

    @property
    def selected_pace(self) -> float:
        return float(self.pace.value)

    def changed_faults(self) -> dict[str, Any]:
        """The faults of your own that differ from a healthy world (what a new run should start with).

        "Your own" means set with a widget, with :meth:`apply`, or given to the
        panel when it was created. The scenario's scripted changes, which the
        widgets follow during a run (Black Friday's traffic x10), are not
        included: pressing Start again replays the same afternoon. Settings left
        at their defaults are left out, so that a scenario's own opening stays
        in force.
        """
        healthy = FaultPlan().snapshot()
        plan = FaultPlan()
        plan.apply(self._own)
        settings = plan.snapshot()
        changed: dict[str, Any] = {k: settings[k] for k in self.sliders if not math.isclose(settings[k], healthy[k])}
        tiers = {t: m for t, m in settings["tier_modes"].items() if m != healthy["tier_modes"][t]}
        if tiers:
            changed["tier_modes"] = tiers
        return changed

    def apply(self, **settings: Any) -> bool:
        """Set fault widgets from code, all or nothing; return whether they were applied.

        Accepts :meth:`FaultPlan.apply` keys (``traffic_multiplier=5``,
        ``tier_modes={"standard": "hang"}``) and ``pace``. An invalid value
        leaves every widget as it was and is reported in the status line.
        Listeners hear about the accepted changes as if the learner had made them.
        """
        pace = settings.pop("pace", None)
        try:
            if "merchants" in settings:
                raise ValidationError("merchants", "per-merchant faults have no widget; use LiveRun.set_faults")
            staged = FaultPlan().apply(settings)
            checked_pace = None if pace is None else self._check_pace(pace)
        except ValidationError as exc:
            self.set_status(str(exc), error=True)
            return False
        self._quiet += 1
        try:
            for key, value in staged.items():
                if key == "tier_modes":
                    for tier, mode in value.items():
                        self.tiers[tier].value = mode.value
                else:
                    self.sliders[key].value = value
            if checked_pace is not None:
                self.pace.value = checked_pace
        finally:
            self._quiet -= 1
        if staged:
            self._emit(
                "faults",
                {k: ({t.value: m.value for t, m in v.items()} if k == "tier_modes" else v) for k, v in staged.items()},
            )
        if checked_pace is not None:
            self._emit("pace", checked_pace)
        return True

    def show_plan(self, snapshot: Mapping[str, Any]) -> None:
        """Show the fault plan in force (from :meth:`FaultPlan.snapshot`) without notifying anyone.

        A live session calls this when a scenario's script changes the plan,
        so the sliders move when Black Friday's traffic jumps at 14:15.
        """
        self._show_snapshot(snapshot)

    def _show_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        self._quiet += 1
        try:
            for key, widget in self.sliders.items():
                if key in snapshot:
                    widget.value = snapshot[key]
            for tier, widget in self.tiers.items():
                mode = snapshot.get("tier_modes", {}).get(tier.value)
                if mode is not None:
                    widget.value = mode
        finally:
            self._quiet -= 1

    def show_own_faults(self) -> None:
        """Show the faults a new run starts with (:meth:`changed_faults`), without notifying anyone."""
        plan = FaultPlan()
        plan.apply(self.changed_faults())
        self._show_snapshot(plan.snapshot())

    def reset(self) -> None:
        """Back to the settings the panel was created with (without notifying anyone)."""
        initial = self._initial
        self._own = {}
        self._remember(initial["faults"])
        self._quiet += 1
        try:
            self.scenario.value = initial["scenario"]
            self.phase.value = initial["phase"]
            self.seed.value = initial["seed"]
            self.pace.value = initial["pace"]
        finally:
            self._quiet -= 1
        self._show_snapshot(initial["plan"])

    # ----------------------------------------------------------------- state
    def set_state(self, state: str) -> None:
        """Enable the buttons that make sense in ``state`` (one of :data:`STATES`)."""
        if state not in BUTTON_STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        self.state = state
        enabled = BUTTON_STATES[state]
        for name, button in self.buttons.items():
            button.disabled = not enabled[name]
        pause = self.buttons["pause"]
        pause.description, pause.icon = ("Resume", "play") if state == "paused" else ("Pause", "pause")
        self.scenario.disabled = not enabled["setup"] or len(self._scenarios) == 1
        self.phase.disabled = not enabled["setup"] or len(self._phases) == 1
        self.seed.disabled = not enabled["setup"]

    def set_status(self, text: str, *, error: bool = False) -> None:
        """Show one line under the buttons: the state and the latest message, errors in red."""
        colour = "#c62828" if error else "#333"
        self.status_text = text
        self.status_error = error
        self.status.value = (
            f'<span class="payflow-status-line" data-state="{self.state}" '
            f'data-error="{str(error).lower()}" style="color:{colour}">'
            f"<b>{self.state}</b> · {html.escape(text)}</span>"
        )
