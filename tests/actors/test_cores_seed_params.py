"""A controller key holder's nonsense parameters are refused by the SeedActor with a reason."""

from __future__ import annotations

import pytest
from cores_harness import SeedSim

from leyline import pb

S = pb.SeedLifecycleStage


def _germinate(sim: SeedSim, **params: float) -> pb.LifecycleRefused | None:
    cmd = pb.SeedCommand(
        slot=sim.slot, germinate=pb.Germinate(blueprint="residual_mlp", params=params)
    )
    sim.send(cmd)
    outcome = sim.outcome(sim.id_of(cmd))
    return outcome if isinstance(outcome, pb.LifecycleRefused) else None


@pytest.mark.parametrize(
    "params",
    [
        {"lr": -1.0},
        {"lr": 0.0},
        {"lr": float("inf")},
        {"weight_decay": -1.0},
        {"hidden": 1e12},
        {"hidden": 2e6},
        {"width": 0.5},
        {"rank": -3.0},
        {"scale": float("nan")},
        {"dropout": 1e300},
        {f"p{i}": 1.0 for i in range(40)},
    ],
)
def test_out_of_range_germinate_is_refused(params: dict[str, float]) -> None:
    """Each out-of-range parameter refuses the germinate; no order goes to execution."""
    sim = SeedSim()
    sim.report(1)
    refused = _germinate(sim, **params)
    assert refused is not None and refused.request == "germinate"
    assert "parameter" in refused.reason or "parameters" in refused.reason
    assert sim.state.stage == S.SEED_STAGE_DORMANT
    assert sim.state.awaiting is None


def test_in_range_germinate_is_ordered() -> None:
    """Ordinary parameters pass the bounds and the seed germinates."""
    sim = SeedSim()
    sim.report(1)
    assert _germinate(sim, lr=1e-3, weight_decay=0.01, hidden=64) is None
    assert sim.state.stage != S.SEED_STAGE_DORMANT


@pytest.mark.parametrize(
    ("lr_scale", "weight_decay"), [(-1.0, -1.0), (1e9, -1.0), (1.0, 5.0), (float("nan"), -1.0)]
)
def test_out_of_range_optimizer_adjustment_is_refused(lr_scale: float, weight_decay: float) -> None:
    """adjust_optimizer with a negative or huge lr scale, or weight decay above 1, is refused."""
    sim = SeedSim()
    sim.report(1)
    assert _germinate(sim, hidden=8) is None
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    cmd = pb.SeedCommand(
        slot=sim.slot,
        adjust_optimizer=pb.AdjustOptimizer(lr_scale=lr_scale, weight_decay=weight_decay),
    )
    sim.send(cmd)
    refused = sim.outcome(sim.id_of(cmd))
    assert isinstance(refused, pb.LifecycleRefused) and refused.request == "adjust_optimizer"
