"""A live seed's gradients from the user's backward are held by its slot until ``on_step``: a
norm clip over ``model.parameters()``, a loss scaler's unscale and a ``model.zero_grad()``
before ``on_step`` never see them, and the seed still learns from them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from execution_helpers import data, germinate, kinds, order, runtime, tiny
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, SeedSlot
from leyline import pb


def _blending(seed: int = 0) -> tuple[nn.Module, dict[str, SeedSlot], torch.optim.Optimizer,
                                      ExecutionRuntime]:  # fmt: skip
    """A tiny model whose slot ``a`` holds a seed in BLENDING from step 3 (α ramps over 20)."""
    model, slots = tiny(seed)
    host = [p for n, p in model.named_parameters() if ".seed." not in n]
    opt = torch.optim.SGD(host, lr=0.1)
    rt = runtime(model, slots, opt, blend_steps=20)
    rt.submit(germinate("a", 0, params={"lr": 0.05}))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("a", pb.SEED_STAGE_BLENDING, 3))
    return model, slots, opt, rt


def _host(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if ".seed." not in n]


def test_the_users_backward_leaves_no_gradient_on_a_live_seed() -> None:
    """In BLENDING the user's backward gives the seed its blended gradient, but held: the seed's
    ``.grad`` stays None until ``on_step`` (which trains the seed with it), and a
    ``model.zero_grad()`` in between does not take it away."""
    model, slots, opt, rt = _blending()
    moved = []
    for step, (x, y) in enumerate(data(8) * 2):
        seed_params = slots["a"].seed_parameters()  # (germinated at the end of step 0)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        assert all(p.grad is None for p in seed_params)
        if step >= 4:
            assert slots["a"].held  # what the seed's own backward gave, for on_step
        opt.step()
        model.zero_grad()  # as some training loops do before the step hook
        before = [p.detach().clone() for p in seed_params]
        rt.on_step(step)
        moved.append(any(not torch.equal(b, p) for b, p in zip(before, seed_params, strict=True)))
    assert slots["a"].stage == pb.SEED_STAGE_BLENDING
    assert all(moved[2:]), moved  # it learned from the held gradient from TRAINING on (step 2)


def test_a_loss_scaler_and_a_clip_over_the_model_leave_the_host_update_as_without_the_scaler() -> (
    None
):
    """The standard AMP recipe (``scale(loss).backward()``, ``unscale_(opt)``, a norm clip over
    ``model.parameters()``, ``scaler.step``) with a blending seed: the clip's norm is the host's
    alone, and the host's update is the size it is without a scaler (before, the seed's gradient,
    which the scaler never unscales, dominated the norm and shrank the host's update about 10^4
    times for the whole blend)."""
    updates: dict[bool, list[float]] = {}
    for scaled in (False, True):
        model, slots, opt, rt = _blending(seed=1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=scaled)
        sizes = updates.setdefault(scaled, [])
        for step, (x, y) in enumerate(data(8) * 2):
            opt.zero_grad(set_to_none=True)
            scaler.scale(F.cross_entropy(model(x), y)).backward()
            scaler.unscale_(opt)
            host_grads = [p.grad for p in opt.param_groups[0]["params"] if p.grad is not None]
            host_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in host_grads]))
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            assert torch.equal(total, host_norm)  # no seed gradient in the user's clip
            before = _host(model)
            scaler.step(opt)
            scaler.update()
            sizes.append(
                sum(float((a - b).norm()) for a, b in zip(_host(model), before, strict=True))
            )
            rt.on_step(step)
        assert slots["a"].stage == pb.SEED_STAGE_BLENDING
    ratios = [s / p for s, p in zip(updates[True][4:], updates[False][4:], strict=True)]
    assert all(0.5 < r < 2.0 for r in ratios), ratios


def _seed_and_host(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_a_backward_through_an_eval_forward_gives_the_seed_nothing() -> None:
    """A saliency map between steps (``model.eval()``, a backward to the input, then
    ``model.zero_grad()``) leaves the run exactly as without it: the seed learns only from
    backwards through training-mode forwards (else it held, and stepped on, the diagnostic's
    gradient, 30-50 times its own)."""
    runs = []
    for saliency in (False, True):
        model, slots, opt, rt = _blending(seed=2)
        for step, (x, y) in enumerate(data(8) * 2):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            rt.on_step(step)
            if saliency:
                model.eval()
                probe = x.clone().requires_grad_()
                model(probe)[:, 0].sum().backward()
                assert probe.grad is not None and not slots["a"].held
                model.zero_grad(set_to_none=True)
                model.train()
        assert slots["a"].stage == pb.SEED_STAGE_BLENDING
        runs.append(_seed_and_host(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_an_overflow_upstream_of_the_seed_is_no_fault_of_the_seeds_even_with_host_grads_gone() -> (
    None
):
    """A backward whose gradient reaching the seed's output is not finite (a loss scaler's
    skipped step) neither counts against the seed nor steps it, even in a loop that zeroes the
    host's gradients before ``on_step`` (the host's gradients can no longer tell)."""
    model, slots, opt, rt = _blending(seed=3)
    for step, (x, y) in enumerate(data(8) * 2):
        opt.zero_grad(set_to_none=True)
        scale = float("inf") if step in (6, 9) else 1.0
        (F.cross_entropy(model(x), y) * scale).backward()
        if step not in (6, 9):
            opt.step()
        opt.zero_grad(set_to_none=True)  # the Trainer order: zeroed before the step hook
        rt.on_step(step)
    state = rt.states["a"]
    assert slots["a"].stage == pb.SEED_STAGE_BLENDING
    assert state.grad_nonfinite == 0
    signals = kinds(rt.drain_outbox(), "safety.signal")
    assert not [s for s in signals if s.kind == pb.SAFETY_SIGNAL_NON_FINITE_GRAD]
