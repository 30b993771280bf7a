"""Alpha hysteresis: blend phases switch at the 0.3 and 0.7 bands (±0.02) without flapping, hand
the seed's learning over from its shadow loss to the blended loss, and never recompile."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from execution_helpers import backward, data, germinate, order, runtime, tiny
from torch._dynamo.testing import CompileCounter

from actors.execution import ExecutionRuntime, RuntimeConfig, SeedSlot, host_parameters
from actors.execution.evidence import shadow_step
from actors.execution.shadow import shadow_use
from actors.execution.stages import EARLY, LATE, MID, blend_phase, phase_of
from leyline import pb


def _walk(alphas: list[float], width: float = 0.02, start: int = EARLY) -> list[int]:
    phases, p = [], start
    for a in alphas:
        p = blend_phase(p, a, width)
        phases.append(p)
    return phases


def test_phase_switches_only_past_the_band_edges() -> None:
    """Up at c + 0.02, down at c - 0.02 for c in (0.3, 0.7); in between the phase holds."""
    assert _walk([0.0, 0.29, 0.31, 0.3199]) == [EARLY] * 4
    assert _walk([0.32]) == [MID]
    assert _walk([0.69, 0.71, 0.7199, 0.72, 1.0], start=MID) == [MID, MID, MID, LATE, LATE]
    assert _walk([0.69, 0.6801, 0.68, 0.5], start=LATE) == [LATE, LATE, MID, MID]
    assert _walk([0.31, 0.2801, 0.28], start=MID) == [MID, MID, EARLY]
    assert _walk([1.0]) == [LATE] and _walk([0.0], start=LATE) == [EARLY]  # jumps cross both
    assert [phase_of(a) for a in (0.0, 0.3, 0.5, 0.7, 1.0)] == [EARLY, MID, MID, LATE, LATE]


@pytest.mark.parametrize("centre", [0.3, 0.7])
def test_alpha_jitter_at_a_band_edge_never_flaps(centre: float) -> None:
    """Alpha oscillating by up to ±0.019 around a band centre changes the phase at most once;
    ±0.021 (outside the band) flips it every step, and width 0 flips on any crossing."""
    g = torch.Generator().manual_seed(5)
    jitter = [centre + 0.019 * (2 * float(torch.rand((), generator=g)) - 1) for _ in range(200)]
    start = EARLY if centre == 0.3 else MID
    for begin in (start, start + 1):
        phases = _walk(jitter, start=begin)
        assert len(set(phases)) == 1 and phases[0] == begin
    wide = [centre + (0.021 if i % 2 else -0.021) for i in range(20)]
    changes = sum(a != b for a, b in pairwise(_walk(wide, start=start)))
    assert changes == 19
    assert len(set(_walk(jitter, width=0.0, start=start))) == 2


def test_alpha_hysteresis_is_configurable_and_checked() -> None:
    """RuntimeConfig.alpha_hysteresis defaults to the design's 0.02; nonsense is refused."""
    assert RuntimeConfig().alpha_hysteresis == 0.02
    for bad in (-0.01, 0.2, float("nan")):
        with pytest.raises(ValueError):
            RuntimeConfig(alpha_hysteresis=bad)


@pytest.fixture
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
def test_blend_phases_hand_over_learning_and_never_recompile() -> None:
    """Over a compiled blend ramp the phase goes early -> mid -> late once each; the shadow loss
    replaces the seed's gradient early, adds to it mid, is gone late; no compile in the ramp."""
    model, slots = tiny(0, {"a": "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    rt = runtime(model, slots, opt, blend_steps=25)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0))
    rt.submit(order("a", pb.SEED_STAGE_BLENDING, 1))
    batches, state = data(), rt.states["a"]
    seen: list[tuple[int, int, str]] = []
    for step in range(30):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(compiled(x), y))
        opt.step()
        how = _how(rt, slots["a"], x, y)
        seen.append((counter.frame_count, state.phase, how))
        rt.on_step(step)
    blending = seen[2:27]  # the forwards of steps 2..26 ran in BLENDING
    assert [p for _, p, _ in blending] == sorted(p for _, p, _ in blending)
    assert {p: {h for _, q, h in blending if q == p} for p in (EARLY, MID, LATE)} == {
        EARLY: {"replace"},
        MID: {"add"},
        LATE: {"none"},
    }
    assert state.phase_changes == 2 and state.phase == LATE
    assert len({c for c, _, _ in blending}) == 1  # the whole ramp ran on one graph


def _how(rt: ExecutionRuntime, slot: SeedSlot, x: torch.Tensor, y: torch.Tensor) -> str:
    """What ``shadow_backward`` does to the seed's gradient: none, replace or add."""
    if shadow_use(rt.states[slot.slot_id]) is None:
        assert rt.shadow_backward((x, y)) == 0
        return "none"
    params = slot.seed_parameters()
    blended = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    own, _ = shadow_step(rt.model, slot, rt.device, x, y, None)
    if not rt.shadow_backward((x, y)):
        return "none"
    after = [p.grad for p in params]
    assert all(a is not None and g is not None for a, g in zip(after, own, strict=True))
    if all(torch.equal(a, g) for a, g in zip(after, own, strict=True)):  # type: ignore[arg-type]
        return "replace"
    summed = [g + b for g, b in zip(own, blended, strict=True)]  # type: ignore[operator]
    assert all(torch.allclose(a, s) for a, s in zip(after, summed, strict=True))  # type: ignore[arg-type]
    return "add"


def test_a_restored_blend_resumes_in_the_phase_of_its_alpha(tmp_path: Path) -> None:
    """A checkpoint taken mid-ramp restores alpha and the phase alpha lies in (no history)."""
    model, slots = tiny(0, {"a": "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    rt = runtime(model, slots, opt, blend_steps=10)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0))
    rt.submit(order("a", pb.SEED_STAGE_BLENDING, 1))
    batches = data()
    for step in range(6):  # alpha after step 5: 0.5, phase mid
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(model(x), y))
        opt.step()
        rt.on_step(step, batch=(x, y))
    assert float(slots["a"].alpha) == 0.5 and rt.states["a"].phase == MID
    rt.checkpoint(str(tmp_path / "mid.ckpt"))
    model2, slots2 = tiny(0, {"a": "fc1"})
    rt2 = runtime(model2, slots2, torch.optim.SGD(host_parameters(model2, slots2), lr=0.05))
    rt2.restore(str(tmp_path / "mid.ckpt"))
    assert float(slots2["a"].alpha) == 0.5 and rt2.states["a"].phase == MID
