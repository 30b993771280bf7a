"""G4 judges a loss gain (non-class targets) as a fraction of the seed-off loss: the verdict does
not depend on the units of the targets or on the loss reduction. Real runtime and actors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from gate_harness import Outcome, Task, run
from torch import Tensor, nn

from actors.execution.pairs import paired_losses, paired_metrics
from actors.gates.checks import evaluate
from contracts import evidence as ev
from contracts.config import GateThresholds
from leyline import pb

LossFn = Callable[[Tensor, Tensor], Tensor]

G4 = pb.SEED_GATE_G4_SYSTEM_IMPACT
WALK = ["DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY"]


def bowl(n: int, seed: int, scale: float) -> tuple[Tensor, Tensor]:
    """``n`` points in 8-d with the target ``scale * (|x|^2 / 8 - 1)`` (a 4-unit host fits it
    poorly)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, scale * ((x * x).sum(1, keepdim=True) / 8 - 1.0)


def judged(scale: float, reduction: str) -> Outcome:
    """A ``width`` seed on ``bowl`` in the units ``scale``, the loss reduced by ``reduction``."""

    def mse(out: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(out, target, reduction=reduction)

    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    train, validation = bowl(2048, 0, scale), bowl(1024, 1, scale)
    name = f"bowl-{scale}-{reduction}"
    return run(Task(model, ("s0", "1"), train, validation, mse, name=name))


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_a_helpful_regression_seed_fossilizes_in_any_units(scale: float) -> None:
    """The same helpful seed with targets y and 0.1 y fossilizes, judged on its gain as a fraction
    of the seed-off loss (the record gives that fraction and the loss gain it comes from)."""
    out = judged(scale, "none")
    assert out.path == [*WALK, "FOSSILIZED"], out.check(G4, "cf_net_gain").detail
    lcb, net = out.check(G4, "cf_gain_lcb"), out.check(G4, "cf_net_gain")
    assert 0.0 < lcb.value < 1.0 and 0.0 < net.value < 1.0
    assert "as a fraction of the seed-off loss" in lcb.detail
    assert "as a fraction of the seed-off loss" in net.detail


def test_a_summing_loss_does_not_inflate_the_gain() -> None:
    """A loss_fn that sums over the batch (each pair a part of the batch) is judged on the same
    fraction as one that averages, not on a gain multiplied by the part size; both fossilize."""
    summed, averaged = judged(0.1, "sum"), judged(0.1, "mean")
    for out in (summed, averaged):
        assert out.path == [*WALK, "FOSSILIZED"], out.check(G4, "cf_net_gain").detail
        assert 0.0 < out.check(G4, "cf_net_gain").value < 1.0


def _g4(on: Tensor, off: Tensor, target: Tensor, loss_fn: LossFn) -> dict[str, float]:
    """G4's checks on the paired validation of two fixed arms (outputs ``on`` and ``off``)."""
    arms = [(paired_losses(out, target, loss_fn), None) for out in (on, off)]
    metrics = paired_metrics(arms[0], arms[1])
    metrics.update({ev.SEED_PARAMS: 100.0, ev.HOST_PARAMS: 1000.0, ev.LATENCY_OVERHEAD: 0.1})
    metrics.update({ev.BASELINE_LOSS: metrics[ev.CF_LOSS_OFF], ev.OPEN_STRIKES: 0.0})
    result = evaluate(G4, pb.Evidence(metrics=metrics), GateThresholds())
    return {c.name: c.value for c in result.checks}


def test_g4_values_are_free_of_units_and_reduction() -> None:
    """The same arms judged with targets (and outputs) in other units, or with a summing instead
    of an averaging loss_fn, give the same cf_gain_lcb and cf_net_gain."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1024, 1, generator=g)
    on = target + 0.3 * torch.randn(1024, 1, generator=g)
    off = target + 0.5 * torch.randn(1024, 1, generator=g)
    base = _g4(on, off, target, lambda o, t: F.mse_loss(o, t, reduction="none"))
    assert base["cf_gain_lcb"] > 0.5 and base["cf_net_gain"] > 0.5
    others = [
        _g4(0.1 * on, 0.1 * off, 0.1 * target, lambda o, t: F.mse_loss(o, t, reduction="none")),
        _g4(on, off, target, lambda o, t: F.mse_loss(o, t, reduction="sum")),
        _g4(100 * on, 100 * off, 100 * target, F.mse_loss),
    ]
    for other in others:
        for name in ("cf_gain_lcb", "cf_net_gain"):
            assert other[name] == pytest.approx(base[name], rel=0.1), name
