"""Rollout plans: stages canary -> internal -> pilot -> general, their gates, soak and ramp.

A plan is read from TOML (tomllib) or built from defaults plus command-line overrides, then
expanded into *steps*. Each step is what one channel document publishes: the cumulative
groups so far and a percentage. Group stages are one step each (percentage 0); a stage with
``batch_size_percentage`` (or an exponential ramp) is one step per percentage, so ``general``
with batches of 25 gives 25, 50, 75, 100. A stage that could never target a device (no new
group, no higher percentage) is refused here; what the gate does with the plan is in
orchestrator.py.

TOML (see examples/rollout.toml)::

    failure_rate_threshold = 20      # percent of finished devices; defaults for every stage
    rollback_rate_threshold = 20
    health_check_failure_rate = 20
    min_finished = 1                 # finished targeted devices a stage needs (judged and passed)
    soak = "30s"                     # wait per step before advancing (s, m, h, d or seconds)
    in_progress_timeout = "30m"      # started, never confirmed/failed -> counts as failed
    window = {start = "01:00", end = "05:00"}   # UTC maintenance window, carried to devices
    watch = "1h"                     # after completion the gates keep watching this long

    [[stages]]
    name = "canary"
    groups = ["canary"]
    soak = "5m"                      # any of the defaults above can be set per stage
    skip_if_empty = false            # true: the stage may pass with no device at all

    [[stages]]
    name = "general"
    batch_size_percentage = 25       # or ramp = "exponential", ramp_start = 1, ramp_factor = 2
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from host_tools.errors import MpotaError
from host_tools.fleet import DEFAULT_GROUP, GROUP_NAME

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
# The default plan: one stage per group, the last (every other device) in batches.
DEFAULT_GROUPS = ("canary", "internal", "pilot", DEFAULT_GROUP)
_STAGE_KEYS = {"name", "groups", "batch_size_percentage", "ramp", "ramp_start", "ramp_factor",
               "failure_rate_threshold", "rollback_rate_threshold", "health_check_failure_rate",
               "min_finished", "soak", "skip_if_empty"}
_TOP_KEYS = {"failure_rate_threshold", "rollback_rate_threshold", "health_check_failure_rate",
             "min_finished", "soak", "in_progress_timeout", "window", "watch", "stages"}


class PlanError(MpotaError):
    pass


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds from a number or a string such as "90", "30s", "10m", "2h", "1d", "500ms"."""
    if isinstance(value, bool):
        raise PlanError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise PlanError(f"{what}: {value!r} is not a duration (e.g. 30s, 10m, 2h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise PlanError(f"{what}: expected a duration, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PlanError(f"{what}: must be >= 0")
    return seconds


def _percent(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{what}: expected a number of percent, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 100.0:
        raise PlanError(f"{what}: must be between 0 and 100, got {value!r}")
    return number


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanError(f"{what}: expected a whole number >= 0, got {value!r}")
    return value


def _min_finished(value: object, what: str) -> int:
    number = _count(value, what)
    if number < 1:
        raise PlanError(f"{what}: must be at least 1 (no gate passes on nobody; a stage that may be "
                        "empty says skip_if_empty = true)")
    return number


def check_window(value: object) -> dict[str, str] | None:
    """A maintenance window {"start": "HH:MM", "end": "HH:MM"} in UTC (end may wrap past midnight)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"start", "end"}:
        raise PlanError('window: expected {start = "HH:MM", end = "HH:MM"} (UTC)')
    out: dict[str, str] = {}
    for key in ("start", "end"):
        text = value[key]
        if not isinstance(text, str) or not _HHMM.fullmatch(text):
            raise PlanError(f"window.{key}: expected HH:MM (UTC), got {text!r}")
        out[key] = text
    if out["start"] == out["end"]:
        raise PlanError("window: start and end are equal")
    return out


@dataclass(frozen=True)
class Gate:
    """Pause conditions of one stage; rates in percent of the stage's finished devices."""

    failure_rate_threshold: float = 20.0
    rollback_rate_threshold: float = 20.0
    health_check_failure_rate: float = 20.0
    min_finished: int = 1


@dataclass(frozen=True)
class Stage:
    name: str
    groups: tuple[str, ...]
    gate: Gate
    soak_s: float
    # empty for a group stage (one step); otherwise the percentages of its steps, ending at 100
    percentages: tuple[float, ...] = ()
    skip_if_empty: bool = False    # the operator allows it to pass when it targets no device

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "groups": list(self.groups), "soak": self.soak_s,
                "failure_rate_threshold": self.gate.failure_rate_threshold,
                "rollback_rate_threshold": self.gate.rollback_rate_threshold,
                "health_check_failure_rate": self.gate.health_check_failure_rate,
                "min_finished": self.gate.min_finished, "percentages": list(self.percentages),
                "skip_if_empty": self.skip_if_empty}


@dataclass(frozen=True)
class Step:
    index: int
    stage: int            # index into plan.stages
    stage_name: str
    groups: tuple[str, ...]  # cumulative
    percentage: float
    soak_s: float


@dataclass(frozen=True)
class RolloutPlan:
    stages: tuple[Stage, ...]
    in_progress_timeout_s: float = 1800.0
    window: dict[str, str] | None = None
    watch_s: float = 3600.0
    steps: tuple[Step, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise PlanError("a plan needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise PlanError(f"duplicate stage names in {names}")
        steps: list[Step] = []
        groups: list[str] = []
        percentage = 0.0
        for si, stage in enumerate(self.stages):
            new_groups = [g for g in stage.groups if g not in groups]
            if not new_groups and (not stage.percentages or stage.percentages[-1] <= percentage):
                # it would "pass" having targeted nobody: refuse the plan instead
                what = (f"its groups ({', '.join(stage.groups)}) are all in earlier stages" if stage.groups
                        else "it has no groups")
                how = (f"and its percentages do not go above {percentage:g}%" if stage.percentages
                       else "and no percentage (give batch_size_percentage, ramp or percentages)")
                raise PlanError(f"stage {stage.name} can never target a device: {what} {how}")
            groups.extend(new_groups)
            if not stage.percentages:
                steps.append(Step(len(steps), si, stage.name, tuple(groups), percentage, stage.soak_s))
            for p in stage.percentages:
                if p < percentage:
                    raise PlanError(f"stage {stage.name}: percentages must not go down ({p} < {percentage})")
                percentage = p
                steps.append(Step(len(steps), si, stage.name, tuple(groups), p, stage.soak_s))
        object.__setattr__(self, "steps", tuple(steps))

    def rollout_doc(self, rollout_id: str, step: int, state: str) -> dict[str, Any]:
        """The channel document's rollout object for a step and a device-facing state."""
        s = self.steps[step]
        return {"id": rollout_id, "state": state, "groups": list(s.groups),
                "percentage": s.percentage, "window": dict(self.window) if self.window else None}

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages],
                "in_progress_timeout": self.in_progress_timeout_s, "window": self.window,
                "watch": self.watch_s}

    def last_step_of_stage(self, stage: int) -> int:
        return max(s.index for s in self.steps if s.stage == stage)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        """Read a plan from TOML-shaped data (also what to_dict writes back)."""
        if not isinstance(data, Mapping):
            raise PlanError("a plan must be a table")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise PlanError(f"unknown plan keys: {', '.join(sorted(unknown))}")
        base = Gate(
            failure_rate_threshold=_percent(data.get("failure_rate_threshold", 20.0),
                                            "failure_rate_threshold"),
            rollback_rate_threshold=_percent(data.get("rollback_rate_threshold", 20.0),
                                             "rollback_rate_threshold"),
            health_check_failure_rate=_percent(data.get("health_check_failure_rate", 20.0),
                                               "health_check_failure_rate"),
            min_finished=_min_finished(data.get("min_finished", 1), "min_finished"),
        )
        soak = parse_duration(data.get("soak", 30.0), "soak")
        raw_stages = data.get("stages")
        if raw_stages is None:
            raw_stages = default_stage_tables()
        if not isinstance(raw_stages, Sequence) or isinstance(raw_stages, (str, bytes)):
            raise PlanError("stages: expected a list of tables ([[stages]])")
        stages = tuple(_stage_from_dict(s, base, soak) for s in raw_stages)
        return cls(stages=stages,
                   in_progress_timeout_s=parse_duration(data.get("in_progress_timeout", 1800.0),
                                                        "in_progress_timeout"),
                   window=check_window(data.get("window")),
                   watch_s=parse_duration(data.get("watch", 3600.0), "watch"))


def default_stage_tables(batch_size_percentage: float = 25.0) -> list[dict[str, Any]]:
    *named, last = DEFAULT_GROUPS
    return [*({"name": g, "groups": [g]} for g in named),
            {"name": last, "groups": [], "batch_size_percentage": batch_size_percentage}]


def ramp_percentages(batch_size: float | None, ramp: str, start: float, factor: float) -> tuple[float, ...]:
    """Linear batches (10, 20, ... 100) or an exponential ramp (1, 2, 4, ... 100)."""
    out: list[float] = []
    if ramp == "exponential":
        if not 0 < start <= 100 or factor <= 1:
            raise PlanError("exponential ramp: need 0 < ramp_start <= 100 and ramp_factor > 1")
        p = start
        while p < 100.0:
            out.append(round(p, 2))
            p *= factor
    elif ramp == "linear":
        if batch_size is None or not 0 < batch_size <= 100:
            raise PlanError("batch_size_percentage: must be > 0 and <= 100")
        k = 1
        while round(k * batch_size, 2) < 100.0:
            out.append(round(k * batch_size, 2))
            k += 1
    else:
        raise PlanError(f"ramp: expected linear or exponential, got {ramp!r}")
    out.append(100.0)
    return tuple(out)


def _stage_from_dict(raw: object, base: Gate, soak: float) -> Stage:
    if not isinstance(raw, Mapping):
        raise PlanError("each [[stages]] entry must be a table")
    unknown = set(raw) - _STAGE_KEYS - {"percentages"}
    if unknown:
        raise PlanError(f"unknown stage keys: {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):  # a stage's name is its default group
        raise PlanError(f"stage name: expected a short name, got {name!r}")
    groups = raw.get("groups", [name] if name != DEFAULT_GROUP else [])
    if not isinstance(groups, Sequence) or isinstance(groups, str) or not all(
            isinstance(g, str) and GROUP_NAME.fullmatch(g) for g in groups):
        raise PlanError(f"stage {name}: groups must be a list of group names")
    gate = Gate(
        failure_rate_threshold=_percent(raw.get("failure_rate_threshold", base.failure_rate_threshold),
                                        f"{name}.failure_rate_threshold"),
        rollback_rate_threshold=_percent(raw.get("rollback_rate_threshold", base.rollback_rate_threshold),
                                         f"{name}.rollback_rate_threshold"),
        health_check_failure_rate=_percent(raw.get("health_check_failure_rate",
                                                   base.health_check_failure_rate),
                                           f"{name}.health_check_failure_rate"),
        min_finished=_min_finished(raw.get("min_finished", base.min_finished), f"{name}.min_finished"),
    )
    percentages: tuple[float, ...] = ()
    if "percentages" in raw and raw["percentages"]:
        values = raw["percentages"]
        if not isinstance(values, Sequence):
            raise PlanError(f"stage {name}: percentages must be a list")
        percentages = tuple(_percent(v, f"{name}.percentages") for v in values)
    elif "batch_size_percentage" in raw or "ramp" in raw:
        ramp = raw.get("ramp", "linear")
        if not isinstance(ramp, str):
            raise PlanError(f"stage {name}: ramp must be linear or exponential")
        batch = raw.get("batch_size_percentage")
        batch_f = None if batch is None else _percent(batch, f"{name}.batch_size_percentage")
        start = _percent(raw.get("ramp_start", 1.0), f"{name}.ramp_start")
        factor = raw.get("ramp_factor", 2.0)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise PlanError(f"stage {name}: ramp_factor must be a number")
        percentages = ramp_percentages(batch_f, ramp, start, float(factor))
    skip = raw.get("skip_if_empty", False)
    if not isinstance(skip, bool):
        raise PlanError(f"stage {name}: skip_if_empty must be true or false")
    return Stage(name=name, groups=tuple(groups), gate=gate,
                 soak_s=parse_duration(raw.get("soak", soak), f"{name}.soak"), percentages=percentages,
                 skip_if_empty=skip)


def load_plan(path: str | Path) -> RolloutPlan:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise PlanError("reading a TOML plan needs Python >= 3.11 (or give the plan as flags)") from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: not valid TOML: {exc}") from None
    return RolloutPlan.from_dict(data)


def plan_with_overrides(base: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> RolloutPlan:
    """Defaults (or a TOML table) with top-level keys replaced; stage-level keys in the file still win."""
    data: dict[str, Any] = dict(base or {})
    batch = overrides.get("batch_size_percentage")
    ramp = overrides.get("ramp")
    if "stages" not in data:
        data["stages"] = default_stage_tables(float(batch) if batch is not None else 25.0)
    names = overrides.get("stage_names")
    if names:
        tables = {s["name"]: s for s in data["stages"]}
        data["stages"] = [tables.get(n, {"name": n}) for n in names]
    if batch is not None or ramp is not None:
        stages = [dict(s) for s in data["stages"]]
        last = stages[-1]
        for key in ("percentages",):
            last.pop(key, None)
        if batch is not None:
            last["batch_size_percentage"] = batch
            last.setdefault("ramp", "linear")
        if ramp is not None:
            last["ramp"] = ramp
            if ramp == "linear" and "batch_size_percentage" not in last:
                last["batch_size_percentage"] = 25.0
        data["stages"] = stages
    for key, value in overrides.items():
        if key in ("batch_size_percentage", "ramp") or value is None:
            continue
        if key == "stage_names":
            continue
        data[key] = value
    return RolloutPlan.from_dict(data)


def window_seconds(window: Mapping[str, str] | None, t0: float, t1: float) -> float:
    """Seconds of [t0, t1] inside the daily UTC window (all of it without a window)."""
    if t1 <= t0:
        return 0.0
    if window is None:
        return t1 - t0
    sh, sm = (int(x) for x in window["start"].split(":"))
    eh, em = (int(x) for x in window["end"].split(":"))
    start, end = sh * 3600 + sm * 60, eh * 3600 + em * 60
    total = 0.0
    day = math.floor(t0 / 86400) - 1  # a window wrapping past midnight starts the day before
    while day * 86400 + start < t1:
        a = day * 86400 + start
        b = a + (end - start if end > start else 86400 - start + end)
        total += max(0.0, min(b, t1) - max(a, t0))
        day += 1
    return total


def with_window(plan: RolloutPlan, window: dict[str, str] | None) -> RolloutPlan:
    return replace(plan, window=window)
