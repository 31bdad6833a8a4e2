"""What a policy family is: a small class that declares its parameters and says, for every checkpoint of
every question at once, whether its rule fires there.

The declaration drives everything else: validation of presets, the dashboard's sliders, and the sweep
grids. ``fires`` gets the whole run as 2-D arrays (questions x checkpoints) and must use, at checkpoint j,
only what is known at checkpoints 0..j (replay must equal running the rule online).
"""
from __future__ import annotations

import importlib
import itertools
import math
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from analysis.core.errors import MissingSignal, PresetError, brief
from analysis.core.registry import Registry

if TYPE_CHECKING:
    from analysis.replay.engine import RunTable


@dataclass(frozen=True)
class Param:
    """One parameter of a family. ``kind``: int, float, choice, bool, setting (a nested setting) or object (plain
    JSON checked by ``check``, default None: an exported model; never swept, no control of its own)."""
    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    grid: tuple = ()          # explicit sweep values; else derived from the range
    n_grid: int = 8
    label: str = ""
    check: Any = None         # kind "object": check(value, where) -> the value, raising PresetError naming a field

    def validate(self, value: Any, where: str) -> Any:
        if self.kind == "setting":
            return Setting.from_dict(value, where)
        if self.kind == "object":
            return None if value is None else self.check(value, where)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise PresetError(f"must be true or false, got {brief(value)}", field=where)
            return value
        if self.kind == "choice":
            # true == 1 and 1.0 == 1 in Python: a bool is a choice only among bools, and the declared value is kept
            if not isinstance(value, (str, int, float)) or value not in self.choices \
                    or (isinstance(value, bool) and not any(isinstance(c, bool) for c in self.choices)):
                raise PresetError(f"must be one of {list(self.choices)}, got {brief(value)}", field=where)
            return self.choices[self.choices.index(value)]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PresetError(f"must be a number, got {type(value).__name__} {brief(value)}", field=where)
        if isinstance(value, float) and not math.isfinite(value):
            raise PresetError(f"must be finite, got {value!r}", field=where)
        # the range first: an int compares with the float bounds exactly, however large (float(10**400)
        # would raise OverflowError)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise PresetError(f"{brief(value)} is out of range [{self.low:g}, {self.high:g}]", field=where)
        try:
            if self.kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise PresetError(f"must be a whole number, got {value!r}", field=where)
                return int(value)
            return float(value)
        except OverflowError:   # only an unbounded parameter gets here
            raise PresetError(f"{brief(value)} is too large", field=where) from None

    def sweep_values(self) -> list:
        if self.grid:
            return list(self.grid)
        if self.kind == "bool":
            return [False, True]
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("setting", "object"):
            return [self.default]
        lo, hi = float(self.low), float(self.high)
        if self.log:
            vals = np.geomspace(max(lo, 1e-12), hi, self.n_grid)
        else:
            vals = np.linspace(lo, hi, self.n_grid)
        if self.kind == "int":
            return sorted({int(round(v)) for v in vals})
        return [float(v) for v in vals]


# --- the probe schedule: which checkpoints a setting probes at, declared once for every family ---------------
# A run is recorded with one placement (every N tokens, steps, transitions); a setting's schedule keeps some of
# those checkpoints, and its family sees only them (replay.engine.scheduled). The run's end is always kept.
SCHEDULE: tuple[Param, ...] = (
    Param("every", "choice", 1, "probe at every n-th multiple of the run's interval (1: at each, as recorded; "
          "2: every other; 0: never on the interval, only at steps and transitions)", choices=(1, 2, 4, 8, 0),
          grid=(1, 2, 4), label="probe every (x run interval)"),
    Param("at_steps", "bool", True, "probe at step boundaries (blank lines)", grid=(True,), label="probe at steps"),
    Param("at_transitions", "bool", True, "probe at transition words (Wait, Hmm, ...)", grid=(True,),
          label="probe at transitions"),
    Param("min_tokens", "int", 0, "no probe before this many tokens", low=0, high=32768, grid=(0,),
          label="first probe at (tokens)"),
)
SCHEDULE_DEFAULTS: dict = {p.name: p.default for p in SCHEDULE}


def validate_schedule(d: Any, where: str = "schedule") -> dict:
    """A schedule's entries that differ from the defaults (``{}``: every checkpoint, as recorded)."""
    if not isinstance(d, dict):
        raise PresetError(f"must be an object of schedule entries, got {type(d).__name__}", field=where)
    known = {p.name for p in SCHEDULE}
    unknown = [k for k in d if k not in known]
    if unknown:
        raise PresetError(f"unknown schedule entry {str(unknown[0])[:80]!r} (known: {', '.join(sorted(known))})",
                          field=where)
    out = {p.name: p.validate(d[p.name], f"{where}.{p.name}") for p in SCHEDULE if p.name in d}
    return {k: v for k, v in out.items() if v != SCHEDULE_DEFAULTS[k]}


def describe_schedule(d: dict) -> str:
    """``{"every": 2, "at_steps": False}`` -> "probes every 2x, not at steps"; "" for every checkpoint."""
    s = {**SCHEDULE_DEFAULTS, **d}
    parts = []
    if not s["every"] and s["at_steps"] != s["at_transitions"]:       # one kind of checkpoint alone
        parts.append("at transition words only" if s["at_transitions"] else "at steps only")
    elif s["every"] != 1:
        parts.append(f"every {s['every']}x" if s["every"] else "not on the interval")
    if not s["at_steps"] and (s["every"] or not s["at_transitions"]):
        parts.append("not at steps")
    if not s["at_transitions"] and (s["every"] or not s["at_steps"]):
        parts.append("not at transitions")
    if s["min_tokens"]:
        parts.append(f"from {s['min_tokens']} tokens")
    return ("probes " + ", ".join(parts)) if parts else ""


def schedule_grid() -> list[dict]:
    """The schedules a sweep tries (the declared sweep values' product; the first is every checkpoint)."""
    names = [p.name for p in SCHEDULE]
    out = [validate_schedule(dict(zip(names, c))) for c in itertools.product(*(p.sweep_values() for p in SCHEDULE))]
    return sorted({json_key(d): d for d in out}.values(), key=lambda d: (len(d), json_key(d)))


def json_key(d: dict) -> str:
    import json
    return json.dumps(d, sort_keys=True)


class Policy:
    """Base class of a policy family. Subclasses set the class attributes and implement ``fires``.

    What a family can do is declared here, once, and read by everyone who needs it: ``requires`` (the probe
    signals its rule reads at its default parameters; ``required_signals`` for given ones), so a run without
    them does not offer it (``available_families``); ``needs_probes`` (whether its rule reads trial answers, so
    production must probe at checkpoints; domain.md: a pure budget needs none); ``deployable`` (whether the live
    controller can run every setting of its grid; ``undeployable_because`` says why not; ``deploy_problem`` says
    it per setting, for a family whose exported settings deploy); ``recalibrate_step`` (how many positions one
    recalibration may move toward more aggressive settings along the family's order); ``nestable`` (whether it can be a part of
    another family's nested setting, as a hybrid's parts are)."""
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()   # per-checkpoint signals the rule reads (default parameters)
    needs_probes: ClassVar[bool] = True        # reads trial answers or their signals
    deployable: ClassVar[bool] = True          # the live controller (analysis/production) can run it
    undeployable_because: ClassVar[str] = ""   # when not deployable: why, in a few words
    recalibrate_step: ClassVar[int] = 2        # positions one recalibration step may move toward fewer tokens
    nestable: ClassVar[bool] = True            # may be a part of a nested setting (a hybrid's a or b)
    sweep_schedules: ClassVar[bool] = True     # the sweep tries the schedule grid too (when it probes at all)

    # -- declaration helpers ------------------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> dict:
        return {p.name: p.default for p in cls.params}

    @classmethod
    def defaults_for(cls, t) -> dict:
        """Where the controls start on run ``t`` (no setting in the link yet): the declared defaults, unless
        the family knows a better start for this run."""
        return cls.defaults()

    @classmethod
    def validate(cls, params: dict, where: str = "params") -> dict:
        if not isinstance(params, dict):
            raise PresetError(f"must be an object of parameters, got {type(params).__name__}", field=where)
        known = {p.name for p in cls.params}
        unknown = [k for k in params if k not in known]
        if unknown:
            raise PresetError(f"unknown parameter {str(unknown[0])[:80]!r} for family '{cls.name}' "
                              f"(its parameters: {', '.join(sorted(known)) or 'none'})", field=where)
        out = {}
        for p in cls.params:
            out[p.name] = p.validate(params[p.name], f"{where}.{p.name}") if p.name in params else p.default
        cls.check(out, where)
        return out

    @classmethod
    def check(cls, params: dict, where: str) -> None:
        """Cross-parameter checks (override when needed)."""

    @classmethod
    def required_signals(cls, params: dict) -> tuple[str, ...]:
        return cls.requires

    @classmethod
    def deploy_problem(cls, params: dict) -> str | None:
        """Why the live controller cannot run this setting (its own rule; parts are checked by the caller), or
        None. Default: the family's declaration."""
        return None if cls.deployable else cls.undeployable_because

    @classmethod
    def parts(cls, params: dict) -> tuple["Setting", ...]:
        """The nested settings of a composite family (a hybrid's two rules); none for a plain one."""
        return tuple(Setting.from_dict(params[p.name]) for p in cls.params if p.kind == "setting")

    @classmethod
    def probes_at(cls, params: dict, sched: dict) -> dict:
        """Where this setting probes, given its schedule: the schedule, unless its rule reads only some kinds of
        checkpoint (then probing the others would buy nothing and cost their probes)."""
        return sched

    @classmethod
    def probes_needed(cls, params: dict) -> bool:
        """Whether this setting reads trial answers (its own rule's or any part's)."""
        return cls.needs_probes or any(s.policy.probes_needed(s.params) for s in cls.parts(params))

    @classmethod
    def available_on(cls, t: "RunTable") -> bool:
        """Whether run ``t`` has the signals the family reads at its default parameters."""
        return all(t.has_signal(s) for s in cls.required_signals(cls.defaults()))

    @classmethod
    def grid(cls, table: "RunTable") -> list[dict]:
        """Settings to sweep: the cartesian product of each parameter's sweep values."""
        names = [p.name for p in cls.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*(p.sweep_values() for p in cls.params))]

    @classmethod
    def describe(cls, params: dict) -> str:
        parts = []
        for p in cls.params:
            v = params.get(p.name, p.default)
            if p.kind == "setting":
                v = f"({Setting.from_dict(v).label()})" if isinstance(v, dict) else f"({v.label()})"
            elif p.kind == "object":
                if v is None:
                    continue
                v = v.get("label", "yes") if isinstance(v, dict) else "yes"
            elif isinstance(v, float):
                v = f"{v:.3g}"
            parts.append(f"{p.name}={v}")
        return f"{cls.name}(" + ", ".join(parts) + ")"

    # -- the rule -----------------------------------------------------------------------------------------
    @classmethod
    def fires(cls, t: "RunTable", params: dict) -> np.ndarray:
        """Boolean (questions x checkpoints): does the rule fire at this checkpoint?"""
        raise NotImplementedError


@dataclass(frozen=True)
class Setting:
    """A family with concrete parameter values, and the probe schedule it sees (its non-default entries;
    ``{}``: every checkpoint the run recorded)."""
    family: str
    params: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)

    @property
    def policy(self) -> type[Policy]:
        return get_family(self.family)

    @property
    def sched(self) -> dict:
        """The full schedule (defaults filled in), as the rule probes it (``Policy.probes_at``)."""
        return self.policy.probes_at(self.params, self.declared_sched)

    @property
    def declared_sched(self) -> dict:
        """The full schedule as declared (defaults filled in): what controls show, and where an exploration
        request probes (its log serves every family, not only this rule)."""
        return {**SCHEDULE_DEFAULTS, **self.schedule}

    def label(self) -> str:
        d = describe_schedule(self.schedule)
        return self.policy.describe(self.params) + (f" [{d}]" if d else "")

    def to_dict(self) -> dict:
        # an absent object parameter (no exported model) is left out: settings saved before it existed keep their key
        out = {"family": self.family, "params": {k: (v.to_dict() if isinstance(v, Setting) else v)
                                                  for k, v in self.params.items() if v is not None}}
        if self.schedule:
            out["schedule"] = dict(self.schedule)
        return out

    def key(self) -> str:
        import json
        return json.dumps(self.to_dict(), sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Setting) and self.key() == other.key()

    @staticmethod
    def from_dict(d: Any, where: str = "setting") -> "Setting":
        if isinstance(d, Setting):
            return d
        if not isinstance(d, dict):
            raise PresetError(f"must be an object with 'family' and 'params', got {type(d).__name__}", field=where)
        extra = set(d) - {"family", "params", "schedule"}
        if extra:
            raise PresetError(f"unknown key {str(sorted(map(str, extra))[0])[:80]!r}", field=where)
        fam = d.get("family")
        if not isinstance(fam, str):
            raise PresetError("missing or non-string 'family'", field=f"{where}.family")
        try:
            cls = get_family(fam)
        except KeyError:
            raise PresetError(f"unknown policy family {fam[:80]!r} (known: {', '.join(families())})",
                              field=f"{where}.family") from None
        # no schedule (a preset saved before schedules existed) means every checkpoint
        return Setting(fam, cls.validate(d.get("params", {}), f"{where}.params"),
                       validate_schedule(d.get("schedule", {}), f"{where}.schedule"))

    @staticmethod
    def make(family: str, schedule: dict | None = None, **params: Any) -> "Setting":
        return Setting.from_dict({"family": family, "params": params, "schedule": schedule or {}})


def check_signals(t: "RunTable", setting: Setting) -> None:
    missing = [s for s in setting.policy.required_signals(setting.params) if not t.has_signal(s)]
    if missing:
        raise MissingSignal(
            f"the '{setting.family}' family needs the signal(s) {', '.join(missing)}, which run "
            f"{t.run_id or '(this run)'} does not have (its checkpoints were derived from text, with no probe)",
            hint="use a text-only family (budget, consistency, learned with features=text), or re-probe the run "
                 "with a model: python -m analysis probe --run RUN --model M")


FAMILIES: Registry[type[Policy]] = Registry("policy family", "families")


def register(cls: type[Policy]) -> type[Policy]:
    return FAMILIES.add(cls.name, cls)


def get_family(name: str) -> type[Policy]:
    """The family's class; an unknown name raises UnknownName (a StoplineError and a KeyError) listing them."""
    _load_all()
    return FAMILIES[name]


def families() -> list[str]:
    _load_all()
    return FAMILIES.names()


def available_families(t: "RunTable", nested: bool = False) -> list[str]:
    """The families run ``t`` can replay (it has the signals they read); ``nested``: only those that may be a
    part of a nested setting."""
    return [f for f in families() if get_family(f).available_on(t) and (get_family(f).nestable or not nested)]


def deployable_families() -> list[str]:
    """The families the live controller can run (what production may be offered)."""
    return [f for f in families() if get_family(f).deployable]


_loaded = False


def _load_all() -> None:
    """Import every module of this package: a new family is one new file with @register."""
    global _loaded
    if _loaded:
        return
    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if m.name != "base":
            importlib.import_module(f"{__package__}.{m.name}")
    _loaded = True
    FAMILIES.order(["budget", "consistency", "confidence", "entropy", "learned", "hybrid"])
