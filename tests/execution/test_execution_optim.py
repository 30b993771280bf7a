"""Seed optimisation helpers: alpha schedules, adaptive clipping, the KD loss, teacher logits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from actors.execution import adaptive_clip, alpha_at, kd_loss, teacher_logits
from leyline import pb


@pytest.mark.parametrize(
    "schedule", [pb.ALPHA_SCHEDULE_LINEAR, pb.ALPHA_SCHEDULE_COSINE, pb.ALPHA_SCHEDULE_SIGMOID]
)
def test_alpha_schedules_run_from_zero_to_exactly_one(schedule: int) -> None:
    """Every schedule starts at 0, is monotone, is 0.5 at mid-ramp and ends at exactly 1."""
    values = [alpha_at(schedule, t, 10) for t in range(12)]
    assert values[0] == 0.0 and values[10] == values[11] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert math.isclose(values[5], 0.5, abs_tol=1e-12)


def test_adaptive_clip_is_tightest_mid_blend() -> None:
    """clip = 0.1 / (1 + 100 (a - 0.5)^2): 0.1 at a=0.5, 0.1/26 at the ends."""
    assert adaptive_clip(0.5) == pytest.approx(0.1)
    assert adaptive_clip(0.0) == pytest.approx(0.1 / 26) == adaptive_clip(1.0)


def test_kd_loss_matches_the_formula() -> None:
    """(1-w) CE + w T^2 KL(batchmean) with T=4, w=0.3; no gradient reaches the teacher logits."""
    torch.manual_seed(0)
    zs = torch.randn(6, 5, requires_grad=True)
    zt = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    kl = F.kl_div(F.log_softmax(zs / 4, -1), F.softmax(zt / 4, -1), reduction="batchmean")
    expected = 0.7 * F.cross_entropy(zs, y) + 0.3 * 16 * kl
    loss = kd_loss(zs, y, zt)
    assert torch.allclose(loss, expected)
    loss.backward()  # type: ignore[no-untyped-call]
    assert zt.grad is None and zs.grad is not None


def test_teacher_logits_are_computed_without_grad_in_eval_mode() -> None:
    """The teacher runs under no_grad in eval mode; its training flag is restored."""
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
    x = torch.randn(2, 4)
    out = teacher_logits(teacher, x)
    assert not out.requires_grad and teacher.training
    assert torch.equal(out, teacher_logits(teacher, x))  # dropout off: deterministic
