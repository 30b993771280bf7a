"""Helpers shared by the system tests."""

from __future__ import annotations

from contracts import KasminaConfig


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
