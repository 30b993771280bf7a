"""The scenario file format: TOML validated by pydantic models (see docs/scenarios.md).

A scenario names its slots, overrides configuration, says how the simulated execution is driven,
lists what happens at which step (commands and faults) and what the run must show afterwards.
:func:`load_scenario` / :func:`parse_scenario` raise :class:`ScenarioError` whose message names
the bad field (``timeline[2].action: …``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts import KasminaConfig, Reason
from scenarios.names import (
    ALL_SLOTS,
    ActorName,
    GateName,
    SlotName,
    StageName,
    gate_number,
    slot_or_all,
    stage_number,
)

__all__ = [
    "ALL_SLOTS",
    "COMMAND_ACTIONS",
    "Command",
    "Driver",
    "Duplicate",
    "Expectations",
    "Forge",
    "GateOutcome",
    "KillActor",
    "Refusal",
    "Replay",
    "RotateKeys",
    "ScenarioError",
    "ScenarioSpec",
    "SetSim",
    "SkewClock",
    "TimelineAction",
    "TransitionMatch",
    "gate_number",
    "load_scenario",
    "parse_scenario",
    "stage_number",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)

COMMAND_ACTIONS = ("germinate", "cull", "pause", "resume", "terminate", "emergency_stop")
Action = Literal["germinate", "cull", "pause", "resume", "terminate", "emergency_stop"]


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; the message names the bad field."""


# --------------------------------------------------------------------------- driver


class Driver(BaseModel):
    """How the run is driven: simulated execution ranks and the step budget."""

    model_config = _STRICT

    runtime: Literal["sim"] = "sim"
    steps: int = Field(ge=1, le=100_000)  # the step budget: steps 0 … steps-1 at most
    world_size: int = Field(1, ge=1, le=16)
    byzantine_rank: int | None = Field(None, ge=0)
    report_every: int = Field(5, ge=1)
    fail_gates: list[GateName] = Field(default_factory=list)
    leak_slots: list[SlotName] = Field(default_factory=list)
    until: dict[SlotName, StageName] = Field(default_factory=dict)  # stop once all are reached
    settle_timeout_s: float = Field(20.0, gt=0.0)

    @model_validator(mode="after")
    def _rank(self) -> Driver:
        if self.byzantine_rank is not None and self.byzantine_rank >= self.world_size:
            raise ValueError(
                f"byzantine_rank {self.byzantine_rank} is outside a world of {self.world_size}"
            )
        return self


# --------------------------------------------------------------------------- timeline


class _At(BaseModel):
    model_config = _STRICT

    at: int = Field(ge=0)  # the step before which the action happens


class _CommandFields(_At):
    action: Action
    slot: str
    blueprint: str = ""
    reason: str = ""
    label: str = ""  # name under which a later `replay` finds this message

    @field_validator("slot")
    @classmethod
    def _slot(cls, value: str) -> str:
        return slot_or_all(value)

    @model_validator(mode="after")
    def _blueprint(self) -> _CommandFields:
        if self.action == "germinate" and not self.blueprint:
            raise ValueError("germinate needs a blueprint")
        if self.label and self.slot == ALL_SLOTS:
            raise ValueError("a labelled command must name one slot")
        return self


class Command(_CommandFields):
    """Publish a correctly signed command (``key = "previous"``: with the pre-rotation key)."""

    do: Literal["command"]
    key: Literal["active", "previous"] = "active"


class Forge(_CommandFields):
    """Publish a command signed with a wrong secret under the active key id, or an unknown key."""

    do: Literal["forge"]
    how: Literal["bad_signature", "unknown_key"] = "bad_signature"


class SkewClock(_CommandFields):
    """Publish a command signed by a signer whose clock is off by ``offset_s``."""

    do: Literal["skew_clock"]
    offset_s: float


class Replay(_At):
    """Re-send the exact frame of an earlier labelled command as a new inbox entry."""

    do: Literal["replay"]
    of: str = Field(min_length=1)


class Duplicate(_At):
    """Re-add the latest entry (of ``kind``, if given) of an actor's inbox verbatim."""

    do: Literal["duplicate"]
    actor: ActorName
    kind: str = ""


class KillActor(_At):
    """Stop an actor (its process) and start a fresh one ``down_steps`` steps later."""

    do: Literal["kill_actor"]
    actor: ActorName
    down_steps: int = Field(0, ge=0)


class RotateKeys(_At):
    """Rotate the key ring: a new key signs, the old one verifies for ``grace_s``."""

    do: Literal["rotate_keys"]
    grace_s: float = Field(3600.0, ge=0.0)


class SetSim(_At):
    """Change what the simulated ranks measure from this step on."""

    do: Literal["set_sim"]
    fail_gates: list[GateName] | None = None
    leak_slots: list[SlotName] | None = None


TimelineAction = Annotated[
    Command | Forge | SkewClock | Replay | Duplicate | KillActor | RotateKeys | SetSim,
    Field(discriminator="do"),
]


# --------------------------------------------------------------------------- expectations


class GateOutcome(BaseModel):
    """One gate result: which gate, and whether it passed."""

    model_config = _STRICT

    gate: GateName
    passed: bool


class TransitionMatch(BaseModel):
    """At least one transition of ``slot`` into ``to`` whose cause contains ``cause`` …"""

    model_config = _STRICT

    slot: str
    to: StageName
    cause: str = ""
    min_step: int = Field(0, ge=0)  # … recorded at this training step or later


class Refusal(BaseModel):
    """At least one refusal of ``slot`` for ``request`` whose reason contains ``reason``."""

    model_config = _STRICT

    slot: str
    request: str = ""
    reason: str = ""


class Expectations(BaseModel):
    """What the run must show; every entry is checked and reported by name."""

    model_config = _STRICT

    final_stage: dict[str, StageName] = Field(default_factory=dict)
    path: dict[str, list[StageName]] = Field(default_factory=dict)
    gates: dict[str, list[GateOutcome]] = Field(default_factory=dict)
    transitions: list[TransitionMatch] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)
    paused: dict[str, bool] = Field(default_factory=dict)
    rejected: dict[str, int] = Field(default_factory=dict)
    events_present: list[str] = Field(default_factory=list)
    events_absent: list[str] = Field(default_factory=list)
    replay_verify: bool = True

    @field_validator("rejected")
    @classmethod
    def _reasons(cls, value: dict[str, int]) -> dict[str, int]:
        known = {r.value for r in Reason}
        for reason, count in value.items():
            if reason not in known:
                raise ValueError(
                    f"unknown reject reason {reason!r}: use {', '.join(sorted(known))}"
                )
            if count < 0:
                raise ValueError(f"count of {reason!r} must not be negative")
        return value


# --------------------------------------------------------------------------- the scenario


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


class ScenarioSpec(BaseModel):
    """One scenario file."""

    model_config = _STRICT

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")
    description: str = Field(min_length=1)
    slots: list[SlotName] = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)  # KasminaConfig dotted keys
    driver: Driver
    timeline: list[TimelineAction] = Field(default_factory=list)
    expect: Expectations = Field(default_factory=Expectations)

    @field_validator("slots")
    @classmethod
    def _slots(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("slots must be distinct")
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        flat = _flatten(value)
        for key in flat:
            if key.count(".") != 1:
                raise ValueError(f"{key!r}: config keys are section.field")
        try:
            KasminaConfig.load(env={}, overrides=flat)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {first['msg']}") from None
        return flat

    @model_validator(mode="after")
    def _consistent(self) -> ScenarioSpec:
        known = set(self.slots)
        for where, slot in self._slot_uses():
            if slot not in known:
                raise ValueError(f"{where}: slot {slot!r} is not one of the scenario's slots")
        self._check_timeline()
        ws = self.config.get("barrier.world_size")
        if ws is not None and ws != self.driver.world_size:
            raise ValueError("config barrier.world_size differs from driver.world_size")
        return self

    def _slot_uses(self) -> list[tuple[str, str]]:
        """Every place the scenario names a slot, as ``(where, slot)``."""
        used: list[tuple[str, str]] = []
        used += [("driver.leak_slots", s) for s in self.driver.leak_slots]
        used += [("driver.until", s) for s in self.driver.until]
        for i, item in enumerate(self.timeline):
            used += _item_slots(f"timeline[{i}]", item)
        ex = self.expect
        for field in ("final_stage", "path", "gates", "paused"):
            used += [(f"expect.{field}", s) for s in getattr(ex, field)]
        used += [(f"expect.transitions[{i}].slot", t.slot) for i, t in enumerate(ex.transitions)]
        used += [(f"expect.refused[{i}].slot", r.slot) for i, r in enumerate(ex.refused)]
        return used

    def _check_timeline(self) -> None:
        """A replay names an earlier label; a killed execution actor is a rank of the world."""
        labels: set[str] = set()
        for i, item in enumerate(self.timeline):
            if isinstance(item, Replay) and item.of not in labels:
                raise ValueError(f"timeline[{i}].of: no earlier command labelled {item.of!r}")
            if isinstance(item, Command | Forge | SkewClock) and item.label:
                labels.add(item.label)
            if (
                isinstance(item, KillActor)
                and item.actor.startswith("execution:")
                and int(item.actor.partition(":")[2]) >= self.driver.world_size
            ):
                raise ValueError(f"timeline[{i}].actor: no rank {item.actor} in the world")

    def kasmina_config(self) -> KasminaConfig:
        """The run's configuration: defaults, the overrides, the driver's world size."""
        overrides = {"barrier.world_size": self.driver.world_size, **self.config}
        return KasminaConfig.load(env={}, overrides=overrides)


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    skip_tag = False
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            skip_tag = i >= 1 and loc[i - 1] == "timeline"
            continue
        if skip_tag:  # the discriminated union puts the tag ("command", …) in the path
            skip_tag = False
            continue
        out += f".{part}" if out else str(part)
    return out or "(file)"


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>") -> ScenarioSpec:
    """Validate parsed TOML; ScenarioError names the field."""
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{_where(tuple(err['loc']))}: {msg}")
        raise ScenarioError(f"{source}: " + "; ".join(lines)) from None


def load_scenario(path: str | Path) -> ScenarioSpec:
    """Read and validate a scenario file."""
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(path))


def _item_slots(where: str, item: TimelineAction) -> list[tuple[str, str]]:
    """The slots one timeline item names, as ``(where, slot)``."""
    if isinstance(item, Command | Forge | SkewClock) and item.slot != ALL_SLOTS:
        return [(f"{where}.slot", item.slot)]
    if isinstance(item, KillActor | Duplicate) and item.actor.startswith("seed:"):
        return [(f"{where}.actor", item.actor[5:])]
    if isinstance(item, SetSim):
        return [(f"{where}.leak_slots", s) for s in item.leak_slots or []]
    return []
