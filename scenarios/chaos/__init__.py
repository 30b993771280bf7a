"""Whole-system reliability: the chaos harness (kills, Redis restarts, hostile traffic, soak)."""

from scenarios.chaos.check import RunRecord, compare, record_of
from scenarios.chaos.harness import ChaosResult, RunOutput, chaos_seed, hostile_run, run_plan
from scenarios.chaos.plan import ChaosPlan, Kill, PlannedCommand, ProcessSpec, make_plan
from scenarios.chaos.soak import SoakResult, soak

__all__ = [
    "ChaosPlan",
    "ChaosResult",
    "Kill",
    "PlannedCommand",
    "ProcessSpec",
    "RunOutput",
    "RunRecord",
    "SoakResult",
    "chaos_seed",
    "compare",
    "hostile_run",
    "make_plan",
    "record_of",
    "run_plan",
    "soak",
]
