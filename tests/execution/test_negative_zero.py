"""Bit for bit means the sign of zero too: a slot whose host module outputs -0.0 hands it on
unchanged while its seed is TRAINING, so a sign-sensitive operation after it (``atan2``) sees
what it sees without Kasmina, and training stays bit-identical."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from execution_helpers import backward, germinate, kinds, order, runtime
from other_models import bits, host_tensors, same
from torch import Tensor, nn

from actors.execution import host_parameters, insert_slots
from leyline import pb


class NegReLU(nn.Module):
    """``-relu(x)``: an exact -0.0 wherever ``x`` is not positive."""

    def forward(self, x: Tensor) -> Tensor:
        return -torch.relu(x)


class SignNet(nn.Module):
    """A host whose slotted block ends in -0.0s, read by ``atan2`` (-0.0 gives -pi, +0.0 +pi)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.mid = nn.Sequential(nn.Linear(16, 16), NegReLU())
        self.out = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(torch.relu(self.inp(x)))
        return self.out(torch.atan2(h, -torch.ones_like(h)))


def _run(seeded: bool, steps: int = 8) -> tuple[dict[str, Tensor], list[Tensor], list[str]]:
    """Train SignNet ``steps`` steps (a seed TRAINING at ``mid`` from step 1 when ``seeded``,
    ``on_step`` without ``batch=``): host tensors, outputs per step, the acks' errors."""
    torch.manual_seed(0)
    model = SignNet()
    slots = insert_slots(model, {"m": "mid"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1, momentum=0.9)
    rt = runtime(model, slots, opt, probe_batch=(torch.randn(8, 8), torch.randint(0, 4, (8,))))
    plan = {0: [germinate("m", 0)], 1: [order("m", pb.SEED_STAGE_TRAINING, 1)]} if seeded else {}
    gen = torch.Generator().manual_seed(5)
    outputs, errors = [], []
    for step in range(steps):
        for o in plan.get(step, []):
            rt.submit(o)
        x, y = torch.randn(8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        outputs.append(logits.detach().clone())
        backward(F.cross_entropy(logits, y))
        opt.step()
        rt.on_step(step, None)
        errors += [a.error for a in kinds(rt.drain_outbox(), "exec.ack") if not a.ok]
    assert not seeded or slots["m"].stage == pb.SEED_STAGE_TRAINING
    return host_tensors(model), outputs, errors


def test_a_training_slot_hands_on_negative_zeros_unchanged() -> None:
    """The slot's output in TRAINING has the host module's bits, its -0.0s included."""
    torch.manual_seed(0)
    model = SignNet()
    slots = insert_slots(model, {"m": "mid"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, probe_batch=(torch.randn(8, 8), torch.randint(0, 4, (8,))))
    rt.submit(germinate("m", 0))
    rt.submit(order("m", pb.SEED_STAGE_TRAINING, 0))
    rt.on_step(0, None)
    assert slots["m"].stage == pb.SEED_STAGE_TRAINING
    x = torch.relu(model.inp(torch.randn(32, 8)))
    host_out, slot_out = model.mid.host(x), model.mid(x)
    negative_zeros = (host_out == 0) & torch.signbit(host_out)
    assert int(negative_zeros.sum()) > 0  # the case is there
    assert torch.equal(bits(slot_out), bits(host_out))


def test_training_through_a_sign_sensitive_host_is_bit_identical() -> None:
    """With a seed TRAINING and no ``batch=``, every output and host tensor equals the run
    without Kasmina's seed bit for bit (before: from step 2 the atan2 saw +0.0 for -0.0)."""
    base, base_out, _ = _run(False)
    seeded, seeded_out, errors = _run(True)
    assert errors == []
    assert [torch.equal(bits(a), bits(b)) for a, b in zip(base_out, seeded_out, strict=True)] == [
        True
    ] * len(base_out)
    assert same(base, seeded) == []
