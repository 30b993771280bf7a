"""Germinate parameters are checked against the blueprint and the runtime's bounds before any
build: a misspelt, fractional or out-of-range one is refused with its reason, nothing attached."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from execution_helpers import germinate, kinds, runtime, tiny
from torch import nn

from actors.artifacts.manifest import ArtifactError
from actors.execution import Blueprint, SlotShape, register_blueprint, unregister_blueprint
from actors.execution.blueprints import ResidualMLP
from actors.execution.kernels import pack_weights


def _germinate(blueprint: str, params: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """The ack of a germination of ``blueprint`` with ``params`` at slot ``a`` (after ``fc1``,
    16 features) of a tiny model, and its slots."""
    model, slots = tiny()
    rt = runtime(model, slots, torch.optim.SGD(model.parameters(), lr=0.1))
    rt.submit(germinate("a", 0, blueprint=blueprint, params=params))
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    return ack, slots


@pytest.mark.parametrize(
    ("blueprint", "params", "says"),
    [
        (
            "residual_mlp",
            {"hiden": 8.0},
            "takes no parameter hiden (its parameters: hidden, width;",
        ),
        ("lowrank", {"hidden": 8.0}, "takes no parameter hidden (its parameters: rank, scale;"),
        ("residual_mlp", {"rank": 2.0, "bogus": 1.0}, "takes no parameter bogus, rank"),
        ("residual_mlp", {"hidden": 2.5}, "hidden must be a whole number >= 1, got 2.5"),
        ("residual_mlp", {"hidden": 0.0}, "hidden must be a whole number >= 1, got 0"),
        ("width", {"width": -4.0}, "width must be a whole number >= 1, got -4"),
        ("lowrank", {"rank": 0.5}, "rank must be a whole number >= 1, got 0.5"),
        ("residual_mlp", {"lr": 0.0}, "lr=0 must be above 0"),
        ("residual_mlp", {"weight_decay": -1.0}, "weight_decay=-1 must be >= 0"),
        ("residual_mlp", {"kd_weight": 2.0}, "kd_weight=2 must be in [0, 1]"),
        ("residual_mlp", {"kd_temperature": 0.0}, "kd_temperature=0 must be above 0"),
    ],
)
def test_a_germinate_parameter_the_seed_cannot_take_is_refused(
    blueprint: str, params: dict[str, float], says: str
) -> None:
    """A misspelt name (silently ignored before, so the seed got its default size), a fractional
    or non-positive size (silently rounded or raised to 1) and a runtime parameter out of its
    bounds are refused with the reason, and no seed is attached."""
    ack, slots = _germinate(blueprint, params)
    assert not ack.ok and says in ack.error, ack.error
    assert slots["a"].seed is None


def test_declared_parameters_and_the_runtimes_own_are_accepted() -> None:
    """The blueprint's own names (and ``width`` for ``hidden``) with the runtime's build the
    seed they ask for."""
    ack, slots = _germinate("residual_mlp", {"width": 5.0, "lr": 0.01, "weight_decay": 0.1})
    assert ack.ok, ack.error
    assert slots["a"].seed.fc1.out_features == 5


@pytest.fixture
def undeclared() -> Iterator[str]:
    """A blueprint registered without declaring its parameters: it reads ``h`` itself."""

    def build(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
        d = shape.out_shape[-1]
        return ResidualMLP(d, int(params.get("h", 3)), d)

    register_blueprint(Blueprint("undeclared_mlp", build, lambda s: len(s.out_shape) == 2))
    yield "undeclared_mlp"
    unregister_blueprint("undeclared_mlp")


def test_a_blueprint_that_declares_no_parameters_gets_every_name(undeclared: str) -> None:
    """A blueprint registered without ``params`` (as before they could be declared) is passed
    any name, and the runtime's bounds still hold."""
    ack, slots = _germinate(undeclared, {"h": 7.0, "lr": 0.01})
    assert ack.ok, ack.error
    assert slots["a"].seed.fc1.out_features == 7
    ack, _ = _germinate(undeclared, {"h": 7.0, "lr": -1.0})
    assert not ack.ok and "lr=-1 must be above 0" in ack.error


def test_packing_weights_with_a_parameter_the_blueprint_lacks_is_refused() -> None:
    """``blueprints publish`` of a registered blueprint refuses a name it does not take, rather
    than pack the seed at its default size."""
    shape = SlotShape((2, 16), torch.float32)
    with pytest.raises(ArtifactError) as caught:
        pack_weights("residual_mlp", shape, {"hiden": 8.0})
    assert caught.value.reason == "bad_params" and "hiden" in caught.value.detail
    manifest, _ = pack_weights("residual_mlp", shape, {"hidden": 8.0})
    assert manifest.params == {"hidden": 8.0}
