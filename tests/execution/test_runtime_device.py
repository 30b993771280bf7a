"""The runtime works on the model's own device and never moves the model: without ``device=`` a
CPU model stays on the CPU even where the default device is another, and a ``device=`` other than
the model's is a ValueError at construction and at attach, the model left where it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actors.execution.config as config_module
import kasmina
from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from tests.execution.test_attach import CONFIG


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _quiet(**kw: object) -> RuntimeConfig:
    return RuntimeConfig(probe_every=0, report_every=0, barrier_frequency=0, **kw)  # type: ignore[arg-type]


def test_no_device_means_the_models_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """With another default device (as with CUDA available), the model and runtime stay on cpu."""
    monkeypatch.setattr(config_module, "default_device", lambda: torch.device("meta"))
    model = _model()
    slots = insert_slots(model, {"s": "1"})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt = ExecutionRuntime(model, slots, opt, _quiet(), probe_batch=torch.randn(4, 8))
    assert rt.device == torch.device("cpu")
    assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"cpu"}
    model(torch.randn(4, 8)).sum().backward()


def test_a_device_other_than_the_models_is_refused() -> None:
    """``device="meta"`` for a cpu model: a ValueError naming both devices; nothing moved."""
    model = _model()
    slots = insert_slots(model, {"s": "1"})
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="'meta' but the model is on 'cpu'"):
        ExecutionRuntime(model, slots, opt, _quiet(device="meta"))
    after = list(model.parameters())
    assert all(p.device.type == "cpu" for p in after)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    rt = ExecutionRuntime(model, slots, opt, _quiet(device="cpu"))
    assert rt.device == torch.device("cpu")


def test_attach_refuses_another_device_before_touching_the_model() -> None:
    """attach(device="meta") on a cpu model raises ValueError; no slot is inserted."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refused = pytest.raises(ValueError, match="never moves the model")
    with refused, kasmina.attach(model, {"h": "1"}, opt, config=CONFIG, device="meta"):
        pass
    assert isinstance(model[1], nn.ReLU)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_a_model_without_tensors_runs_on_cpu_or_the_device_given() -> None:
    """No parameter or buffer: cpu by default, the configured device otherwise."""
    model = nn.Sequential(nn.ReLU(), nn.Identity())
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert ExecutionRuntime(model, {}, opt, _quiet()).device == torch.device("cpu")
    assert ExecutionRuntime(model, {}, opt, _quiet(device="meta")).device.type == "meta"
