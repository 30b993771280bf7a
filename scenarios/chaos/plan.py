"""A chaos plan: everything random about a chaos run, drawn once from a seed (pure, no I/O).

The commands are fixed to training steps, so a fault-free run and a chaos run of the same seed
issue the same commands at the same points of the lifecycle. Kills and Redis restarts are anchored
to steps too, plus a random delay inside the step, so they land at unpredictable moments of the
actors' work while the plan itself stays reproducible.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ACTIONS",
    "ChaosPlan",
    "Kill",
    "PlannedCommand",
    "ProcessSpec",
    "make_plan",
    "process_layout",
    "small_config",
]

# Well-formed commands only; whether the lifecycle accepts them depends on the slot's stage.
ACTIONS: tuple[tuple[str, int], ...] = (
    ("germinate", 6),
    ("cull", 2),
    ("pause", 1),
    ("resume", 1),
    ("emergency_stop", 1),
    ("terminate", 1),
)
BLUEPRINTS = ("residual_mlp", "lowrank", "conv_adapter", "width")


@dataclass(frozen=True, slots=True)
class PlannedCommand:
    """One command: issued just before step ``step`` is closed."""

    index: int
    step: int
    slot: str
    action: str
    blueprint: str = ""


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL process ``process`` ``delay_s`` after step ``step`` starts; restart ``down_s`` later."""

    step: int
    process: int
    delay_s: float
    down_s: float


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One ``kasmina run`` process: which actors and which slots it serves."""

    actors: tuple[str, ...]
    slots: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """Commands, kills and Redis restarts of one run, and the topology they apply to."""

    seed: int
    steps: int
    slots: tuple[str, ...]
    processes: tuple[ProcessSpec, ...]
    commands: tuple[PlannedCommand, ...]
    kills: tuple[Kill, ...] = ()
    redis_restarts: tuple[tuple[int, float], ...] = ()  # (step, delay_s)
    failovers: tuple[tuple[int, float], ...] = ()  # (step, delay_s): SIGKILL the primary
    leak_slots: tuple[str, ...] = ()
    report_every: int = 5
    config: dict[str, Any] = field(default_factory=dict)

    def fault_free(self) -> ChaosPlan:
        """The same plan without kills, restarts and failovers (the reference run)."""
        return ChaosPlan(
            self.seed, self.steps, self.slots, self.processes, self.commands,
            leak_slots=self.leak_slots, report_every=self.report_every, config=self.config,
        )  # fmt: skip

    def commands_at(self, step: int) -> list[PlannedCommand]:
        """The commands issued before step ``step`` closes."""
        return [c for c in self.commands if c.step == step]

    def to_json(self) -> str:
        """A JSON form (for the trainer process)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChaosPlan:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        return cls(
            seed=int(raw["seed"]),
            steps=int(raw["steps"]),
            slots=tuple(raw["slots"]),
            processes=tuple(
                ProcessSpec(tuple(p["actors"]), tuple(p["slots"])) for p in raw["processes"]
            ),
            commands=tuple(PlannedCommand(**c) for c in raw["commands"]),
            kills=tuple(Kill(**k) for k in raw["kills"]),
            redis_restarts=tuple((int(s), float(d)) for s, d in raw["redis_restarts"]),
            failovers=tuple((int(s), float(d)) for s, d in raw.get("failovers", ())),
            leak_slots=tuple(raw["leak_slots"]),
            report_every=int(raw["report_every"]),
            config=dict(raw["config"]),
        )


def small_config() -> dict[str, Any]:
    """Short stage budgets (``section.field`` overrides) so a seed walks in a few dozen steps."""
    return {
        "lifecycle.training_steps": 15,
        "lifecycle.blend_steps": 15,
        "lifecycle.shadowing_steps": 10,
        "lifecycle.probationary_steps": 10,
        "lifecycle.embargo_steps": 15,
        "lifecycle.reset_retry_steps": 5,
        "barrier.frequency": 5,
        "gates.min_training_steps": 5,
        "safety.strike_window_steps": 50,
        "safety.probe_every_steps": 5,  # the simulated runtime strikes every step
        # a SIGKILLed process keeps its actors' leases until they expire; its restart waits that long
        "bus.owner_ttl_s": 2.0,
    }


def process_layout(slots: tuple[str, ...], seed_processes: int) -> tuple[ProcessSpec, ...]:
    """Seed actors spread over ``seed_processes`` processes, plus two singleton processes."""
    spread = tuple(ProcessSpec(("seed",), slots[i::seed_processes]) for i in range(seed_processes))
    return (*spread, ProcessSpec(("gate", "safety")), ProcessSpec(("telemetry", "barrier")))


def make_plan(
    seed: int,
    *,
    steps: int = 300,
    slots: int = 8,
    seed_processes: int = 3,
    commands: int = 60,
    kills: int = 6,
    redis_restarts: int = 1,
    failovers: int = 0,
) -> ChaosPlan:
    """Draw a plan from ``seed`` (same seed, same plan). Failovers need a Sentinel-managed
    server (the harness starts one when the plan has any)."""
    rng = random.Random(seed)
    names = tuple(f"l{i // 2}.s{i % 2}" for i in range(slots))
    layout = process_layout(names, seed_processes)
    late = max(1, steps - 10)  # leave the last steps for the run to come to rest
    planned = _draw_commands(rng, names, commands, late)
    kill_list = _draw_kills(rng, kills, len(layout), late)
    restarts = sorted(
        (rng.randrange(5, late), round(rng.uniform(0.0, 0.05), 4)) for _ in range(redis_restarts)
    )
    # drawn after everything else, so adding failovers leaves the rest of a seed's plan as it was
    failover_list = sorted(
        (rng.randrange(5, late), round(rng.uniform(0.0, 0.05), 4)) for _ in range(failovers)
    )
    return ChaosPlan(
        seed=seed,
        steps=steps,
        slots=names,
        processes=layout,
        commands=tuple(planned),
        kills=tuple(kill_list),
        redis_restarts=tuple(restarts),
        failovers=tuple(failover_list),
        leak_slots=(names[-1],),
        config=small_config(),
    )


def _draw_commands(
    rng: random.Random, names: tuple[str, ...], commands: int, late: int
) -> list[PlannedCommand]:
    """``commands`` well-formed commands at random slots and steps before ``late``, by step."""
    actions = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]
    planned = []
    for index in range(commands):
        action = rng.choices(actions, weights)[0]
        if action == "terminate" and rng.random() < 0.7:
            action = "germinate"  # terminate retires a slot for good: keep it rare
        planned.append(
            PlannedCommand(
                index=index,
                step=rng.randrange(1, late),
                slot=rng.choice(names),
                action=action,
                blueprint=rng.choice(BLUEPRINTS) if action == "germinate" else "",
            )
        )
    planned.sort(key=lambda c: (c.step, c.index))
    return planned


def _draw_kills(rng: random.Random, kills: int, processes: int, late: int) -> list[Kill]:
    """``kills`` SIGKILLs of random processes at random steps, each with its delay and down
    time, by step."""
    return sorted(
        (
            Kill(
                step=rng.randrange(5, late),
                process=rng.randrange(processes),
                delay_s=round(rng.uniform(0.0, 0.05), 4),
                down_s=round(rng.uniform(0.1, 1.0), 3),
            )
            for _ in range(kills)
        ),
        key=lambda k: k.step,
    )
