"""Blueprints: zero output at birth, sign-off by shape, shape probe, checksummed artifacts."""

from __future__ import annotations

import pathlib

import pytest
import torch
from execution_helpers import backward, germinate, kinds, order, runtime
from torch import nn

from actors.execution import (
    ArtifactError,
    SlotShape,
    blueprint_names,
    get_blueprint,
    host_parameters,
    insert_slots,
    load_artifact,
    param_count,
    save_artifact,
    shape_probe,
    signed_off,
)
from actors.execution.blueprints import LowRankAdapter, ResidualMLP
from leyline import pb

FEATURES = SlotShape((5, 16), torch.float32, (5, 8))
IMAGE = SlotShape((2, 6, 4, 4), torch.float32, (2, 3, 4, 4))


def test_builtin_blueprints_are_registered() -> None:
    """The four built-in seed families are in the registry."""
    assert {"residual_mlp", "width", "conv_adapter", "lowrank"} <= set(blueprint_names())


@pytest.mark.parametrize(
    ("name", "shape", "params", "count"),
    [
        ("residual_mlp", FEATURES, {"hidden": 4}, 16 * 4 + 4 + 4 * 16 + 16),
        ("width", FEATURES, {"width": 8}, 8 * 8 + 8 + 8 * 16 + 16),
        ("conv_adapter", IMAGE, {"rank": 2}, 6 * 2 + 2 + 2 * 6 + 6),
        ("lowrank", FEATURES, {"rank": 2}, 16 * 2 + 2 * 16),
    ],
)
def test_seed_output_is_exactly_zero_at_birth(
    name: str, shape: SlotShape, params: dict[str, float], count: int
) -> None:
    """Each blueprint builds a seed with the stated parameter count whose delta is exactly 0."""
    bp = get_blueprint(name)
    assert signed_off(name, shape)
    seed = bp.build(shape, params, nn.Identity())
    assert param_count(seed) == count
    h = torch.randn(shape.out_shape)
    x = torch.randn(shape.in_shape) if shape.in_shape else None
    probe = shape_probe(seed, bp, h, x)
    assert probe.ok and probe.max_abs_delta == 0.0


def test_sign_off_depends_on_shape() -> None:
    """A conv adapter is not signed off for feature vectors, nor the width seed without an input."""
    assert not signed_off("conv_adapter", FEATURES)
    assert not signed_off("width", SlotShape((5, 16), torch.float32, None))
    assert not signed_off("no_such_blueprint", FEATURES)
    assert not signed_off("lowrank", SlotShape((5, 16), torch.int64))


def test_width_seed_adds_units_from_the_slot_input() -> None:
    """A width seed over a 64->8->10 block reads the block input and trains, starting at exactly 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)))
    slots = insert_slots(model, {"w": "0"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    batch = (torch.randn(16, 64), torch.randint(0, 10, (16,)))
    rt = runtime(model, slots, opt, probe_batch=batch)
    before = model(batch[0]).detach()
    rt.submit(germinate("w", 0, blueprint="width", params={"width": 8, "lr": 0.05}))
    rt.submit(order("w", pb.SEED_STAGE_TRAINING, 1))
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert ack.ok and ack.evidence.metrics["seed_params"] == 64 * 8 + 8 + 8 * 10 + 10
    assert torch.equal(model(batch[0]), before)
    seed = slots["w"].seed
    assert isinstance(seed, ResidualMLP) and seed.fc1.in_features == 64
    for step in range(1, 4):
        opt.zero_grad()
        backward(nn.functional.cross_entropy(model(batch[0]), batch[1]))
        opt.step()
        rt.on_step(step)
    assert float(seed.fc2.weight.detach().abs().sum()) > 0


def test_convex_blending_refused_for_width_seeds() -> None:
    """Convex blending needs a seed whose initial output equals h; the width seed is refused."""
    model = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)))
    slots = insert_slots(model, {"w": "0"})
    rt = runtime(model, slots, torch.optim.SGD(model.parameters(), lr=0.1))
    rt.submit(germinate("w", 0, blueprint="width", blend_mode=pb.BLEND_MODE_CONVEX))
    rt.submit(germinate("w", 0, blueprint="nope"))
    rt.on_step(0)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [a.ok for a in acks] == [False, False]
    assert "convex" in acks[0].error and "unknown blueprint" in acks[1].error


def test_artifacts_load_only_with_a_matching_checksum(tmp_path: pathlib.Path) -> None:
    """Seed weight files round-trip through safetensors; a tampered file is refused unread."""
    seed = get_blueprint("lowrank").build(FEATURES, {"rank": 2}, nn.Identity())
    assert isinstance(seed, LowRankAdapter)
    with torch.no_grad():
        seed.b.weight.normal_()
    path = tmp_path / "seed.safetensors"
    digest = save_artifact(seed, path)
    fresh = get_blueprint("lowrank").build(FEATURES, {"rank": 2}, nn.Identity())
    assert isinstance(fresh, LowRankAdapter)
    load_artifact(path, digest, fresh)
    assert torch.equal(fresh.b.weight, seed.b.weight)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(path, digest, fresh)
