"""A fossil is part of the host: ``host_parameters`` names its parameters from FOSSILIZED on (and
never a live seed's), so an optimizer, a clip or an average rebuilt over it after a
fossilization trains the fossil too."""

from __future__ import annotations

import torch
from execution_helpers import FOSSIL_AT_8, data, runtime, tiny, train

from actors.execution import host_parameters


def test_host_parameters_hold_a_fossil_but_never_a_live_seed() -> None:
    """In TRAINING the seed is not the host's; once FOSSILIZED it is, and an optimizer rebuilt
    over ``host_parameters`` moves it (it stayed frozen before)."""
    model, slots = tiny(points={"a": "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, blend_steps=3)
    for o in FOSSIL_AT_8:
        rt.submit(o)
    batches = data(4)
    train(model, opt, rt, batches, range(3))
    seed_ids = {id(p) for p in slots["a"].seed_parameters()}
    assert seed_ids and not seed_ids & {id(p) for p in host_parameters(model, slots)}
    train(model, opt, rt, batches, range(3, 10))
    assert slots["a"].fossil
    fossil = slots["a"].seed_parameters()
    assert {id(p) for p in fossil} <= {id(p) for p in host_parameters(model, slots)}
    rebuilt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    before = [p.detach().clone() for p in fossil]
    train(model, rebuilt, rt, batches, range(10, 12))
    assert any(not torch.equal(b, p) for b, p in zip(before, fossil, strict=True))
