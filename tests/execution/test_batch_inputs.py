"""A model taking a tuple or dict of inputs is refused with a clear TypeError: at attach and
runtime construction (``probe_batch``, ``validation``) before the model is touched, and at
``on_step(batch=...)`` before anything runs, never as a seed failure that culls the seed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kasmina
from actors.execution import insert_slots
from actors.execution.probing import check_batch
from leyline import pb
from tests.execution.execution_helpers import backward, germinate, kinds, order, runtime
from tests.execution.test_attach import CONFIG


class TwoInputs(nn.Module):
    """Token ids and a mask, given as a tuple or a dict (or as one tensor: ids, mask all ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, inputs: Any) -> Tensor:
        if isinstance(inputs, dict):
            inputs = (inputs["ids"], inputs["mask"])
        ids, mask = inputs if isinstance(inputs, tuple) else (inputs, torch.ones(inputs.shape))
        h = torch.relu(self.fc(self.emb(ids)))
        out: Tensor = self.out((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
        return out


IDS = torch.randint(0, 20, (6, 5), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(6, 5)
Y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(1))
MULTI = [(IDS, MASK), {"ids": IDS, "mask": MASK}]


@pytest.mark.parametrize("inputs", MULTI, ids=["tuple", "dict"])
def test_runtime_refuses_multi_input_batches(inputs: Any) -> None:
    """probe_batch / validation with tuple or dict inputs: a TypeError naming the limitation."""
    model = TwoInputs()
    slots = insert_slots(model, {"s": "fc"})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    name = type(inputs).__name__
    with pytest.raises(TypeError, match=f"probe_batch: inputs are a {name}, not a tensor"):
        runtime(model, slots, opt, probe_batch=(inputs, Y))
    with pytest.raises(TypeError, match="tuple or dict of inputs is not supported"):
        runtime(model, slots, opt, probe_batch=(IDS, Y), validation=(inputs, Y))


def test_attach_refuses_multi_input_probe_batch_before_touching_the_model() -> None:
    """attach(probe_batch=((ids, mask), y)): TypeError, and no slot is inserted."""
    model = TwoInputs()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refused = pytest.raises(TypeError, match="probe_batch: inputs are a tuple")
    with refused, kasmina.attach(model, {"h": "fc"}, opt, config=CONFIG, probe_batch=(MULTI[0], Y)):
        pass
    assert isinstance(model.fc, nn.Linear)


def test_on_step_with_multi_input_batch_raises_and_keeps_the_seed() -> None:
    """A tuple-input batch= raises TypeError at once; the seed is not culled as failed."""
    model = TwoInputs()
    slots = insert_slots(model, {"s": "fc"})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt = runtime(model, slots, opt, probe_batch=(IDS, Y))
    rt.submit(germinate("s", 0))
    rt.submit(order("s", pb.SEED_STAGE_TRAINING, 1))
    for step in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(MULTI[0]), Y)
        backward(loss)
        opt.step()
        if step < 2:
            rt.on_step(step, loss, batch=(IDS, Y))
            continue
        with pytest.raises(TypeError, match=r"on_step\(batch=...\): inputs are a tuple"):
            rt.on_step(step, loss, batch=(MULTI[0], Y))
    assert slots["s"].stage == pb.SEED_STAGE_TRAINING and slots["s"].seed is not None
    assert rt.seed_failures == 0 and kinds(rt.drain_outbox(), "safety.signal") == []


def test_check_batch_accepts_tensor_batches() -> None:
    """A tensor, (inputs, targets) and (inputs, None) pass unchanged; a 3-tuple is refused."""
    for batch in (IDS, (IDS, Y), [IDS, Y], (IDS, None), None):
        assert check_batch(batch, "batch") is batch
    with pytest.raises(TypeError, match="inputs are a tuple"):
        check_batch((IDS, MASK, Y), "batch")
