"""G4 judges a one-logit binary classifier by the sign of its logit (not an argmax over one
column), on a real model through the runtime and the actors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gate_harness import Task, run
from torch import Tensor, nn

from actors.execution.pairs import binary_threshold, hits
from leyline import pb

G4 = pb.SEED_GATE_G4_SYSTEM_IMPACT
WALK = ["DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY"]


def sphere(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` Gaussian points in 8-d, class 1 (an integer target) outside the median sphere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, ((x * x).sum(1) > 7.34).long()


def bce_logits(out: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on one logit per example, one loss per example."""
    return F.binary_cross_entropy_with_logits(out.squeeze(1), target.float(), reduction="none")


def test_helpful_seed_on_a_one_logit_binary_task_fossilizes() -> None:
    """A one-logit head with 0/1 targets: G4 counts fixes and breaks by the logit's sign, and a
    seed that adds needed units passes it and fossilizes."""
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    task = Task(model, ("s0", "1"), sphere(2048, 0), sphere(1024, 1), bce_logits, name="logit")
    out = run(task)
    assert out.path == [*WALK, "FOSSILIZED"], [r.reason for r in out.results]
    lcb = out.check(G4, "cf_gain_lcb")
    assert lcb.passed and lcb.value > 0.0, lcb.detail
    assert "exact sign test" in lcb.detail
    fixes, breaks = (int(lcb.detail.split(f" {w}")[0].split()[-1]) for w in ("fixes", "breaks"))
    assert fixes > breaks + 20 and breaks > 0


def test_one_output_decisions_follow_the_threshold_of_the_loss() -> None:
    """One output per example with 0/1 targets is a class judged at 0 (a logit), or at 0.5 under
    the probability form of BCE; integer targets that are not 0/1 are no classes of one output."""
    y = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[-2.0], [0.5], [-0.1], [0.2]])
    assert binary_threshold(y, None) == 0.0
    assert binary_threshold(y, F.binary_cross_entropy) == 0.5
    assert binary_threshold(y, nn.BCELoss()) == 0.5
    assert binary_threshold(torch.tensor([0, 2, 1]), None) is None
    assert binary_threshold(y.float(), None) is None
    h = hits(logits, y, 0.0)
    assert h is not None and h.tolist() == [True, True, False, False]
    h = hits(logits.squeeze(1), y, 0.0)
    assert h is not None and h.tolist() == [True, True, False, False]
    assert hits(logits, y, None) is None
    two = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    h = hits(two, torch.tensor([1, 1]), None)
    assert h is not None and h.tolist() == [True, False]


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_a_probability_output_is_judged_at_one_half(shape: tuple[int, ...]) -> None:
    """Probabilities under ``nn.BCELoss``: 0.4 is class 0 and 0.6 class 1."""
    p = torch.tensor([0.4, 0.6, 0.6, 0.4]).reshape(shape)
    y = torch.tensor([0, 1, 0, 1])
    h = hits(p, y, binary_threshold(y, nn.BCELoss()))
    assert h is not None and h.tolist() == [True, True, False, False]
