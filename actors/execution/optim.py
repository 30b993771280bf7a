"""Seed optimisers, adaptive clipping and the knowledge-distillation loss.

Two-optimizer pattern: the trainer owns the host optimizer; execution owns one optimizer per seed.
Seed parameters receive gradients from the user's own backward (straight-through or blend term);
execution steps the seed optimizers at the step boundary (``ExecutionRuntime.on_step``, called
after the host optimizer's step) and clears their gradients. On fossilization the seed parameters
join an existing group of the host optimizer (the one holding the slot's host module parameters,
else the first: the user's LR schedulers keep working), carrying their optimizer state when both
optimizers are of the same type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution.mailbox import KIND_TELEMETRY
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


def seed_optimizer(
    params: Sequence[nn.Parameter], hp: Mapping[str, float]
) -> torch.optim.Optimizer:
    """A fresh Adam for one seed (``lr`` and ``weight_decay`` from the germinate params).

    A float16 seed (on a ``.half()`` host) gets ``eps`` 1e-4: Adam's default 1e-8 is 0 in
    float16, so a parameter whose gradient squares to 0 would step by 0/0."""
    params = list(params)
    half = any(p.dtype == torch.float16 for p in params)
    return torch.optim.Adam(
        params,
        lr=float(hp.get("lr", 1e-3)),
        weight_decay=float(hp.get("weight_decay", 0.0)),
        eps=HALF_EPS if half else 1e-8,
    )


#: Adam's ``eps`` for float16 seeds: above float16's smallest normal number (6.1e-5)
HALF_EPS = 1e-4


def join_host_optimizer(
    host: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    seed_opt: torch.optim.Optimizer | None,
    *,
    near: Sequence[Tensor] = (),
) -> None:
    """Add the seed's parameters to an existing group of the host optimizer (state carried over).

    No group is added: the user's LR schedulers index per-group lists taken at their
    construction, so the number of groups stays the user's. The parameters join the group
    holding any of ``near`` (the slot's host module parameters), else the first group, and
    train under that group's hyperparameters and schedule."""
    index = fossil_group(host, near)
    held = {id(p) for g in host.param_groups for p in g["params"]}
    new = [p for p in params if id(p) not in held]
    group = host.param_groups[index]
    group["params"].extend(new)
    if isinstance(host, torch.optim.LBFGS):  # its history is one flat vector of every parameter
        host.state.clear()  # sized to the parameters before: it restarts with the fossil's
        host._numel_cache = None  # type: ignore[attr-defined]  # its cached parameter count
        return
    if seed_opt is not None and type(seed_opt) is type(host):
        _carry_state(host, group["params"], new, seed_opt)


def _carry_state(
    host: torch.optim.Optimizer,
    group: Sequence[Tensor],
    new: Sequence[nn.Parameter],
    seed_opt: torch.optim.Optimizer,
) -> None:
    """Give the joined parameters their seed optimizer's state where it has the layout the host
    optimizer keeps for the group's other parameters (else the host starts it itself)."""
    joined = {id(p) for p in new}  # (ids: ``in`` on a list of tensors compares their values)
    peer = next((host.state[q] for q in group if id(q) not in joined and q in host.state), None)
    if peer is None:
        return
    for p in new:
        state = seed_opt.state.get(p)
        if state is not None and _same_layout(state, peer):
            host.state[p] = state


def _same_layout(state: Mapping[str, Any], peer: Mapping[str, Any]) -> bool:
    """Whether a seed parameter's optimizer state has the entries the host optimizer keeps for
    its other parameters of the group (the same names, tensors where it has tensors): a seed
    Adam's state lacks what an ``amsgrad`` host group reads, a capturable or fused one keeps
    ``step`` as a device tensor."""
    if state.keys() != peer.keys():
        return False
    for name, value in peer.items():
        if isinstance(value, Tensor) != isinstance(state[name], Tensor):
            return False
        if isinstance(value, Tensor) and (value.dim() == 0) != (state[name].dim() == 0):
            return False
        if isinstance(value, Tensor) and value.device.type != state[name].device.type:
            return False
    return True


def fossil_group(host: torch.optim.Optimizer, near: Sequence[Tensor]) -> int:
    """The index of the first group holding any of ``near``, else 0 (the first group)."""
    ids = {id(t) for t in near}
    for i, group in enumerate(host.param_groups):
        if any(id(p) in ids for p in group["params"]):
            return i
    return 0


def scale_lr(opt: torch.optim.Optimizer, factor: float, weight_decay: float = -1.0) -> None:
    """Multiply every group's learning rate; set weight decay when ``weight_decay >= 0``."""
    for group in opt.param_groups:
        group["lr"] = float(group["lr"]) * factor
        if weight_decay >= 0 and "weight_decay" in group:
            group["weight_decay"] = weight_decay


def grad_norm(params: Sequence[nn.Parameter]) -> Tensor:
    """L2 norm of the gradients present (a 0-dim tensor; 0 when no gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total: Tensor = torch.linalg.vector_norm(norms)
    return total


def kd_loss(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    weight: float = 0.3,
) -> Tensor:
    """``(1-w) CE(z_s, y) + w T^2 KL(softmax(z_t/T) || softmax(z_s/T))`` with batchmean KL."""
    t = temperature
    ce = F.cross_entropy(student_logits, targets)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.softmax(teacher_logits.detach() / t, dim=-1),
        reduction="batchmean",
    )
    loss: Tensor = (1.0 - weight) * ce + weight * t * t * kl
    return loss


def teacher_logits(teacher: nn.Module, inputs: Tensor) -> Tensor:
    """Teacher logits in eval mode under ``no_grad`` (the teacher's mode is restored)."""
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            out: Tensor = teacher(inputs)
    finally:
        teacher.train(was_training)
    return out


def warn_seeds_held(rt: ExecutionRuntime, step: int) -> None:
    """Warn once per live seed the host optimizer holds (it would step it too, unclipped): a log
    line and a WARNING telemetry item. Looked at again only when the optimizer, its groups or the
    live seeds changed."""
    groups, slots = rt.host_optimizer.param_groups, rt.slots.values()
    seen = (id(rt.host_optimizer), [len(g["params"]) for g in groups], [id(s.seed) for s in slots])
    if seen == rt._optimizer_seen:
        return
    rt._optimizer_seen = seen
    held = {id(p) for group in groups for p in group["params"]}
    for sid, slot in rt.slots.items():
        seed = slot.seed
        if seed is None or slot.fossil or seed in rt._warned_seeds:
            continue
        if any(id(p) in held for p in slot.seed_parameters()):
            rt._warned_seeds.add(seed)
            detail = f"slot {sid}: the host optimizer holds the seed (use host_parameters)"
            logging.getLogger("kasmina.execution").warning(detail)
            raw = pb.TelemetryRaw(slot=sid, region=rt.config.region, step=step,
                                  severity=pb.SEVERITY_WARNING, message=detail)  # fmt: skip
            rt.outbox.put(KIND_TELEMETRY, raw)
