"""A seed whose gradient is NaN (its output finite): the runtime's safety signals reach the
SafetyActor (their value finite, the non-finite number said in words), its breaker strikes, and
the seed is culled. With the NaN in the signal's value field, every signal was refused as
`non_finite` and the seed trained on for good."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kasmina
from actors.execution.blueprints import Blueprint, register_blueprint, unregister_blueprint
from actors.seed import stage_name
from contracts import KasminaConfig


class NaNGrad(nn.Module):
    """Outputs exactly 0, but its weight's gradient is NaN (0 times the slope of sqrt at 0)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))

    def forward(self, h: Tensor) -> Tensor:
        """0, with a NaN gradient."""
        out: Tensor = torch.sqrt(self.w - self.w.detach()) * 0.0 * h
        return out


def test_a_seed_with_nan_gradients_is_culled_by_the_safety_actor() -> None:
    """NaN-gradient signals are counted as strikes, the breaker opens, the seed ends CULLED, and
    no signal is rejected as non_finite."""
    register_blueprint(Blueprint("t_nangrad", lambda shape, params, host: NaNGrad(shape.out_shape[-1]),
                                 lambda s: len(s.out_shape) >= 2, description="nan grad"))  # fmt: skip
    config = KasminaConfig.load(env={}, overrides={
        "lifecycle.training_steps": 80, "barrier.frequency": 5, "gates.min_training_steps": 15,
        "gates.max_latency_overhead": 50.0})  # fmt: skip
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, :4].sum(1) * x[:, 4:].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    try:
        with kasmina.attach(model, {"h": "1"}, opt, config=config, device="cpu",
                            probe_batch=(x[:64], y[:64]), validation=(x, y)) as kas:  # fmt: skip
            for step in range(60):
                idx = torch.randint(0, 256, (32,))
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                kas.on_step(step, loss, batch=(x[idx], y[idx]))
                if step == 2:
                    kas.germinate("h", "t_nangrad")
            kas.settle()
            walk = [stage_name(m.to_stage) for _, k, m in kas.events()
                    if k == "lifecycle.transition" and m.slot == "h"]  # fmt: skip
            (safety,) = [s for s in kas.cluster.shells if s.logic.name == "safety"]
            rejected = dict(safety.rejected)
    finally:
        unregister_blueprint("t_nangrad")
    assert "CULLED" in walk, walk
    assert rejected.get("non_finite", 0) == 0, rejected
