"""A plain ``state_dict`` / ``load_state_dict`` of a slotted model never silently drops a fossil,
and a state dict saved before a germination loads into a model whose seed is alive."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from leyline import pb
from tests.execution.execution_helpers import data, germinate, order, runtime, tiny, train

STAGES = ("TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED")


def _grown(until: int) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
    """A model whose slot ``a`` went through the first ``until`` stages; its dormant state dict."""
    model, slots = tiny(points={"a": "fc1"})
    dormant = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt = runtime(model, slots, opt, blend_steps=2)
    rt.submit(germinate("a", 1))
    for i, name in enumerate(STAGES[:until]):
        rt.submit(order("a", getattr(pb, f"SEED_STAGE_{name}"), 2 + 2 * i))
    train(model, opt, rt, data(), range(2 + 2 * until))
    return model, slots, dormant


def test_a_fossil_in_a_state_dict_is_unexpected_in_a_slot_without_a_seed() -> None:
    """Loading a fossilized model's state dict into a fresh slotted model raises under strict
    and lists the fossil's keys as unexpected otherwise (never a silent drop)."""
    model, slots, _ = _grown(len(STAGES))
    assert slots["a"].fossil
    saved = model.state_dict()
    fresh, _ = tiny(points={"a": "fc1"})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*fc1\.slot\.seed\."):
        fresh.load_state_dict(saved)
    result = fresh.load_state_dict(saved, strict=False)
    assert sorted(result.unexpected_keys) == sorted(k for k in saved if ".slot.seed." in k)


def test_a_state_dict_saved_before_germination_loads_the_host_around_a_live_seed() -> None:
    """A live (not fossil) seed is the runtime's: the host loads, the seed and alpha stay."""
    model, slots, dormant = _grown(2)  # BLENDING
    slot = slots["a"]
    seed = [p.detach().clone() for p in slot.seed_parameters()]
    alpha = slot.alpha.clone()
    result = model.load_state_dict(dormant)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.get_submodule("fc1.host").weight, dormant["fc1.host.weight"])
    assert all(torch.equal(a, b) for a, b in zip(seed, slot.seed_parameters(), strict=True))
    assert torch.equal(slot.alpha, alpha) and float(alpha) > 0


def test_a_fossil_stays_required() -> None:
    """A fossil is part of the host: a state dict without it misses keys."""
    model, _, dormant = _grown(len(STAGES))
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*fc1\.slot\.seed\."):
        model.load_state_dict(dormant)
