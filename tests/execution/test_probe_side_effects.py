"""Probe forwards leave the host exactly as they found it: buffers a forward updates in eval mode
(a QAT FakeQuantize, a call counter, a running maximum) and Python's, NumPy's and torch's random
streams are those of a run without Kasmina after germination, TRAINING with ``batch=`` and probes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from actors.execution import insert_slots
from actors.execution.probing import probe_mode
from leyline import pb
from tests.execution.execution_helpers import data, germinate, order, runtime, train


class StatefulHost(nn.Module):
    """A host whose forward changes its buffers in any mode and draws from ``random`` and NumPy
    (an HF-style LayerDrop)."""

    calls: Tensor
    peak: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fq = torch.ao.quantization.FakeQuantize()  # type: ignore[no-untyped-call]  # its observer updates in eval mode too
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
        self.fc2 = nn.Linear(16, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("peak", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        h = torch.relu(self.fc1(x))
        self.peak.copy_(torch.maximum(self.peak, h.detach().abs().max()))
        h = self.fq(h)
        for layer in self.layers:
            drop = random.uniform(0, 1) + float(np.random.uniform(0, 0.01))
            if self.training and drop < 0.3:
                continue
            h = h + torch.relu(layer(h))
        out: Tensor = self.fc2(h)
        return out


def _run(kasmina: bool) -> tuple[dict[str, Tensor], Any, Any, Tensor]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = StatefulHost()
    slots = insert_slots(model, {"s": "fc1"}) if kasmina else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = data(4, seed=3)
    rt = None
    if kasmina:
        rt = runtime(model, slots, opt, probe_every=2, validation=data(1, batch=32, seed=5)[0])
        rt.submit(germinate("s", 1))
        rt.submit(order("s", pb.SEED_STAGE_TRAINING, 2))
    train(model, opt, rt, batches, range(10), shadow=True)
    if rt is not None:
        assert slots["s"].stage == pb.SEED_STAGE_TRAINING
        rt.counterfactual("s")
    state = {
        k.replace(".host", ""): v.clone()
        for k, v in model.state_dict().items()
        if ".slot." not in k
    }
    return state, random.getstate(), np.random.get_state(), torch.get_rng_state()


def test_host_tensors_and_random_streams_match_a_run_without_kasmina() -> None:
    """Germination, shadow steps, isolation probes and the counterfactual change no host tensor
    and no random stream, though the host's forward updates buffers in eval mode."""
    plain, plain_random, plain_np, plain_torch = _run(False)
    grown, grown_random, grown_np, grown_torch = _run(True)
    assert int(grown["calls"]) == int(plain["calls"]) == 10
    assert plain.keys() == grown.keys()
    assert [k for k in plain if not torch.equal(plain[k], grown[k])] == []
    assert grown_random == plain_random
    assert all(np.array_equal(a, b) for a, b in zip(grown_np, plain_np, strict=True))
    assert torch.equal(grown_torch, plain_torch)


class Reshaping(nn.Module):
    """A forward that replaces a buffer, adds one and resizes another (a per-channel observer)."""

    kept: Tensor
    grown: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kept", torch.zeros(2))
        self.register_buffer("grown", torch.zeros(0))

    def forward(self, x: Tensor) -> Tensor:
        self.kept = x.sum(0)
        self.register_buffer("extra", x.clone())
        self.grown.resize_(3).fill_(7.0)
        return x


def test_probe_mode_restores_replaced_added_and_resized_buffers() -> None:
    """Buffer objects, values and shapes are as before the probe; a buffer added is gone."""
    model = Reshaping()
    kept, grown = model.kept, model.grown
    with probe_mode(model, torch.device("cpu")):
        model(torch.ones(4, 2))
    assert model.kept is kept and torch.equal(kept, torch.zeros(2))
    assert model.grown is grown and grown.shape == (0,)
    assert "extra" not in model._buffers
