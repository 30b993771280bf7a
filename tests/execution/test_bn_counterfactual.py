"""The paired validation with BatchNorm after the slot: each arm (seed on, seed off) runs with
statistics re-estimated under its own forward, and the host is bit-identical afterwards; acks
carry no non-finite evidence."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.execution.stages import Mode
from contracts import evidence as ev
from leyline import pb


class BNNet(nn.Module):
    """8 -> 16 -> [slot] -> BatchNorm -> ReLU -> 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.fc2(F.relu(self.bn(self.fc1(x))))
        return out


def _data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def _germinated(
    model: nn.Module, validation: tuple[Tensor, Tensor], loss_fn: object = None
) -> ExecutionRuntime:
    """A runtime whose slot ``s0`` (at ``fc1``) holds a ``width`` seed with a non-zero output."""
    slots = insert_slots(model, {"s0": "fc1"})
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rt = ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(device="cpu", report_every=0),
        probe_batch=validation,
        validation=validation,
        loss_fn=loss_fn,  # type: ignore[arg-type]
    )
    for at, stage in enumerate((pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TRAINING)):
        order = pb.ExecutionOrder(order_id=f"o{at}", slot="s0", stage=stage, apply_at_step=at)
        if stage == pb.SEED_STAGE_GERMINATED:
            order.germinate.CopyFrom(pb.Germinate(blueprint="width"))
        rt.submit(order)
        rt.on_step(at)
    with torch.no_grad():
        for p in rt.slots["s0"].seed_parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    return rt


def _seed_off_loss_with_own_statistics(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The host alone (seed off), its BatchNorm statistics estimated on ``x`` with the seed off."""
    host = copy.deepcopy(model)
    slot = next(m for m in host.modules() if hasattr(m, "forced"))
    with slot.forced(Mode.IDENTITY, 0.0), torch.no_grad():
        host.bn.reset_running_stats()
        host.bn.momentum = None
        host.train()
        host(x)
        host.eval()
        return float(F.cross_entropy(host(x), y))


def test_seed_off_arm_uses_statistics_estimated_without_the_seed() -> None:
    """With running statistics learned with the seed on (here: shifted far off), the seed-off
    arm's validation loss is that of the host with statistics estimated with the seed off."""
    torch.manual_seed(0)
    model = BNNet()
    x, y = _data(512, 1)
    rt = _germinated(model, (x, y))
    with torch.no_grad():
        model.bn.running_mean.add_(3.0)
        model.bn.running_var.mul_(5.0)
    expected = _seed_off_loss_with_own_statistics(model, x, y)
    cf = rt.counterfactual("s0")
    assert cf[ev.CF_LOSS_OFF] == pytest.approx(expected, rel=1e-5)


def test_host_is_bit_identical_after_a_gate_evaluation_on_a_bn_model() -> None:
    """The counterfactual re-estimates BatchNorm statistics, then restores every buffer, the
    momenta and the training flags exactly, and leaves the global RNG where it was."""
    torch.manual_seed(0)
    model = BNNet()
    x, y = _data(300, 2)
    rt = _germinated(model, (x, y))
    model.train()
    model.bn.momentum = 0.05
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    cf = rt.counterfactual("s0")
    assert ev.CF_GAIN in cf
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert v.dtype == after[k].dtype and torch.equal(v, after[k]), k
    assert model.bn.momentum == 0.05 and [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)


def test_acks_carry_no_non_finite_evidence() -> None:
    """A batch-mean loss on a 3-example validation set gives one pair (an unknown, infinite
    standard error): the counterfactual ack leaves it out instead of carrying inf."""
    torch.manual_seed(0)
    model = BNNet()
    x, _ = _data(3, 4)
    y = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))  # a regression target
    rt = _germinated(model, (x, y), loss_fn=F.mse_loss)
    assert math.isinf(rt.counterfactual("s0")[ev.CF_GAIN_SE])
    order = pb.ExecutionOrder(
        order_id="o9", slot="s0", stage=pb.SEED_STAGE_TRAINING, apply_at_step=5, counterfactual=True
    )
    rt.submit(order)
    rt.on_step(5)
    (ack,) = [m for kind, m in rt.drain_outbox() if kind == "exec.ack" and m.order_id == "o9"]
    assert ack.ok and ev.CF_GAIN in ack.evidence.metrics
    assert ev.CF_GAIN_SE not in ack.evidence.metrics
    assert all(math.isfinite(v) for v in ack.evidence.metrics.values())


@pytest.mark.parametrize("freeze", ["eval", "momentum 0"])
def test_a_frozen_batchnorm_is_judged_with_the_statistics_it_runs_with(freeze: str) -> None:
    """A BatchNorm the user froze (kept in eval mode, or momentum 0) never moves its statistics,
    so both arms run with them: the seed-off arm's loss is the host's as it runs, not a
    re-estimated one."""
    torch.manual_seed(0)
    model = BNNet()
    x, y = _data(512, 1)
    rt = _germinated(model, (x, y))
    with torch.no_grad():
        model.bn.running_mean.add_(3.0)
    model.train()
    if freeze == "eval":
        model.bn.eval()
    else:
        model.bn.momentum = 0.0
    slot = rt.slots["s0"]
    with slot.forced(Mode.IDENTITY, 0.0), torch.no_grad():
        model.eval()
        expected = float(F.cross_entropy(model(x), y))
        model.train()
        if freeze == "eval":
            model.bn.eval()
    assert rt.counterfactual("s0")[ev.CF_LOSS_OFF] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(_seed_off_loss_with_own_statistics(model, x, y), rel=1e-3)


def test_a_validation_set_one_over_a_chunk_is_split_without_a_lone_example() -> None:
    """4097 validation examples (one over the 4096 of a forward) with a BatchNorm that uses batch
    statistics even in eval (no running statistics): the gate evaluates every example in parts
    of two or more, so nothing raises."""
    torch.manual_seed(0)
    model = BNNet()
    model.bn = nn.BatchNorm1d(16, track_running_stats=False)
    x, y = _data(4097, 4)
    rt = _germinated(model, (x, y))
    cf = rt.counterfactual("s0")
    assert cf[ev.CF_GAIN_N] == 4097.0


def test_the_counterfactual_loss_says_how_many_losses_it_averages() -> None:
    """``cf_loss_n`` counts the losses behind ``cf_loss_on``/``cf_loss_off``: the examples for a
    per-example loss, the batches for a batch-mean one (while the accuracy gain still pairs every
    example), and it is absent when the trainer's ``evaluate`` measured the two losses."""
    torch.manual_seed(0)
    x, y = _data(200, 2)
    per_example = _germinated(BNNet(), (x, y)).counterfactual("s0")
    assert per_example[ev.CF_LOSS_N] == 200.0 == per_example[ev.CF_GAIN_N]
    batch_mean = _germinated(BNNet(), (x, y), loss_fn=F.cross_entropy).counterfactual("s0")
    assert 1.0 < batch_mean[ev.CF_LOSS_N] < 200.0 == batch_mean[ev.CF_GAIN_N]
    rt = _germinated(BNNet(), (x, y))
    rt.evaluate = lambda m: (0.5, 0.5)
    assert ev.CF_LOSS_N not in rt.counterfactual("s0")
