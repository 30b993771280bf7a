"""Slot targets by name pattern: globs and regular expressions expand to several slots."""

from __future__ import annotations

import pytest
import torch
from execution_helpers import data, germinate, kinds, runtime, tiny, train
from torch import nn

import kasmina
from actors.execution import host_parameters, insert_slots
from actors.execution.targets import expand_targets, module_paths


class Block(nn.Module):
    """A residual MLP block with two layer norms."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``norm2(x + fc2(relu(fc1(norm1(x)))))``."""
        out: torch.Tensor = self.norm2(x + self.fc2(torch.relu(self.fc1(self.norm1(x)))))
        return out


class Stack(nn.Module):
    """Three blocks and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.head(x)
        return out


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return Stack()


def test_a_glob_wraps_every_match_and_the_model_computes_the_same() -> None:
    """``layers.*.fc2`` gives one slot per block (ids KEY.PATH), next to an exact
    path; dormant slots leave the output bit-identical."""
    model = _encoder()
    x = torch.randn(2, 5, 16)
    before = model(x)
    slots = insert_slots(model, {"ff": "layers.*.fc2", "n": "layers.0.fc1"})
    assert list(slots) == [f"ff.layers.{i}.fc2" for i in range(3)] + ["n"]
    assert all(type(model.layers[i].fc2).__name__ == "SlottedModule" for i in range(3))
    assert torch.equal(model(x), before)


def test_a_regex_with_an_id_template_names_slots_by_index_and_path() -> None:
    """``re:`` matches whole paths; ``{i}`` and ``{path}`` fill the id template."""
    model = _encoder()
    by_index = expand_targets(model, {"up{i}": r"re:layers\.[02]\.fc1"})
    assert by_index == {"up0": "layers.0.fc1", "up1": "layers.2.fc1"}
    by_path = expand_targets(model, {"s:{path}": "layers.1.norm?"})
    assert by_path == {"s:layers.1.norm1": "layers.1.norm1", "s:layers.1.norm2": "layers.1.norm2"}


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ({"x": "layers.*.conv"}, "matches no submodule"),
        ({"x": "re:layers.(["}, "bad regular expression"),
        ({"x": "layers.0.fc*", "x.layers.0.fc1": "layers.1.fc1"}, "generated twice"),
        ({"bad id {i}": "layers.*.fc1"}, "invalid slot id"),
    ],
)
def test_bad_patterns_are_clear_errors_and_change_nothing(
    points: dict[str, str], message: str
) -> None:
    """A pattern without a match, a broken regex, colliding or invalid ids: ValueError, no slot."""
    model = _encoder()
    paths = module_paths(model)
    with pytest.raises(ValueError, match=message):
        insert_slots(model, points)
    assert module_paths(model) == paths


def test_a_pattern_slot_germinates_and_trains_like_any_other() -> None:
    """A slot made by a pattern on TinyMLP takes a germination and the seed learns."""
    model, slots = tiny(points={"s": "fc*"})
    assert list(slots) == ["s.fc1", "s.fc2"]
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("s.fc2", 0))
    train(model, opt, rt, data(), range(1))
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert ack.ok and ack.slot == "s.fc2" and slots["s.fc2"].seed is not None


def test_attach_accepts_a_pattern() -> None:
    """``kasmina.attach`` expands a pattern into its slots (one runtime slot per match)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with kasmina.attach(model, {"lin": "re:[02]"}, opt, device="cpu", probe_batch=x) as kas:
        assert sorted(kas.slots) == ["lin.0", "lin.2"]
