"""Writes through a slotted submodule reach the host module, as they would without the slot;
pruning and parametrizations applied to the wrapper fail, before changing anything, naming the
host module they belong on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from actors.execution import insert_slots


class Net(nn.Module):
    """Two linears with a dropout between them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.drop(torch.relu(self.fc1(x))))
        return out


def _slotted() -> tuple[Net, Tensor]:
    torch.manual_seed(0)
    model = Net()
    insert_slots(model, {"a": "fc1", "d": "drop"})
    return model, torch.randn(4, 8)


def test_parameter_and_attribute_writes_reach_the_host() -> None:
    """Weight tying, ``bias = None``, a plain attribute and a deletion land on the host."""
    model, x = _slotted()
    host = model.get_submodule("fc1.host")
    model.fc1.weight = model.fc2.weight  # tying
    model.fc1.bias = None
    model.drop.p = 0.0
    model.eval()
    assert host.weight is model.fc2.weight and host.bias is None
    assert model.get_submodule("drop.host").p == 0.0
    assert len(list(model.parameters())) == 2  # fc2.weight (tied), fc2.bias; no fc1.bias
    expected = model.fc2(torch.relu(x @ model.fc2.weight.T))
    assert torch.equal(model(x), expected)
    assert not model.fc1.training and model.fc1.slot.training is False
    host.note = "x"
    del model.fc1.note
    assert not hasattr(host, "note")


def test_pruning_the_wrapper_is_refused_and_the_host_can_be_pruned() -> None:
    """prune on the wrapper raises naming ``fc1.host`` and changes nothing; on the host it works."""
    model, x = _slotted()
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=r"fc1\.host"):
        prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    assert [n for n, _ in model.named_parameters()] == names
    prune.l1_unstructured(model.get_submodule("fc1.host"), "weight", amount=0.5)
    assert int((model.fc1.weight == 0).sum()) == 32
    model(x)


def test_spectral_norm_on_the_wrapper_names_the_host() -> None:
    """The legacy spectral_norm on the wrapper raises a KeyError naming ``fc1.host``."""
    model, _ = _slotted()
    with pytest.raises(KeyError, match=r"fc1\.host"):
        nn.utils.spectral_norm(model.fc1)


def test_parametrizing_the_wrapper_names_the_host_and_the_host_can_be_parametrized() -> None:
    """weight_norm on the wrapper raises naming ``fc1.host``; on the host it works."""
    model, x = _slotted()
    with pytest.raises(ValueError, match=r"fc1\.host"):
        parametrizations.weight_norm(model.fc1)
    model.eval()
    before = model(x)
    parametrizations.weight_norm(model.get_submodule("fc1.host"))
    assert torch.allclose(model(x), before, atol=1e-6) and model.fc1.weight.shape == (8, 8)
