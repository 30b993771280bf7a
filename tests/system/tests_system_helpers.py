"""Helpers shared by the system tests."""

from __future__ import annotations

from contracts import KasminaConfig
from leyline import pb
from scenarios.cluster import Cluster


def small_config() -> KasminaConfig:
    """Short stage budgets so a walk takes a few hundred steps."""
    return KasminaConfig.load(
        env={},
        overrides={
            "lifecycle.training_steps": 20,
            "lifecycle.blend_steps": 20,
            "lifecycle.shadowing_steps": 10,
            "lifecycle.probationary_steps": 10,
            "lifecycle.embargo_steps": 20,
            "barrier.frequency": 5,
            "gates.min_training_steps": 10,
        },
    )


async def walk_until(
    cl: Cluster, slot: str, stage: int, *, start: int = 1, limit: int = 400
) -> int:
    """Step the cluster (settling after each step) until ``slot`` reaches ``stage``; the next
    step. AssertionError if it never does within ``limit`` steps."""
    for step in range(start, start + limit):
        await cl.step(step)
        await cl.settle()
        if await cl.stage(slot) == stage:
            return step + 1
    name = pb.SeedLifecycleStage.Name(pb.SeedLifecycleStage.ValueType(stage))
    raise AssertionError(f"{slot} never reached {name}")
