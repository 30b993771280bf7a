"""Fossil merge: fold a fossilized seed into the host's own weights, and the exact unmerge.

A fossil computes ``h + seed(src)`` on every forward. Where that sum is itself one of the host's
layers, the seed is folded into that layer and leaves the slot, so the fossil costs nothing at
inference (the slot is the identity again). Only exact rewrites are made:

- ``lowrank`` (``h + s B A h``) after a host whose last layer is an ``nn.Linear`` (the host
  itself, or the last module of an ``nn.Sequential``): ``W <- (I + s B A) W``,
  ``b <- (I + s B A) b``, computed in float64. Shapes are unchanged.
- ``width`` (``h + V relu(U x + c) + d``, fed from the slot input) on a host that is exactly
  ``nn.Sequential(nn.Linear, nn.ReLU, nn.Linear)``: the seed's units become host units,
  ``W_in <- [W_in; U]``, ``b_in <- [b_in; c]``, ``W_out <- [W_out, V]``, ``b_out <- b_out + d``.
  The host grows to the final size. The host optimizer's per-parameter state grows with it, from
  the seed optimizer's state when both are of the same type, else with zeros.

Every other seed (``residual_mlp``, ``conv_adapter``, a ``lowrank`` seed after a non-linear
layer, custom blueprints) stays an ordinary fossil. The merge keeps the pre-merge tensors (the
very objects), the host optimizer's state for them and the seed module, so :func:`unmerge`
restores the host bitwise (``torch.equal``) and puts the fossil back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from actors.execution.blueprints import LowRankAdapter, ResidualMLP
from actors.execution.optim import join_host_optimizer
from actors.execution.slot import slot_host
from actors.execution.stages import FOSSILIZED

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime
    from actors.execution.slotstate import SlotState


@dataclass
class Merged:
    """What a merge changed, kept for the exact unmerge."""

    kind: str  # "lowrank" or "width"
    seed: nn.Module
    saved: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # pre-merge data
    opt_state: dict[int, dict[str, Any]] = field(default_factory=dict)  # id(param) -> state
    features: list[tuple[nn.Linear, str, int]] = field(default_factory=list)  # attrs to restore


def last_linear(host: nn.Module) -> nn.Linear | None:
    """The host's last layer when it is an ``nn.Linear`` (the host, or a Sequential's last)."""
    if isinstance(host, nn.Linear):
        return host
    if isinstance(host, nn.Sequential) and len(host) and isinstance(host[-1], nn.Linear):
        return host[-1]
    return None


def mlp_block(host: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """``(first, last)`` when the host is exactly ``Sequential(Linear, ReLU, Linear)``."""
    if not isinstance(host, nn.Sequential) or len(host) != 3:
        return None
    first, act, last = host
    if isinstance(first, nn.Linear) and type(act) is nn.ReLU and isinstance(last, nn.Linear):
        return first, last
    return None


def mergeable(seed: nn.Module, blueprint: str, reads_input: bool, host: nn.Module) -> str | None:
    """The merge that fits (``"lowrank"``, ``"width"``) or None (the seed stays a fossil)."""
    if blueprint == "lowrank" and not reads_input and _lowrank_fits(seed, host):
        return "lowrank"
    if blueprint == "width" and reads_input and _width_fits(seed, host):
        return "width"
    return None


def _lowrank_fits(seed: nn.Module, host: nn.Module) -> bool:
    """The seed is a low-rank adapter and the host ends in a Linear whose output it matches."""
    if type(seed) is not LowRankAdapter:
        return False
    lin = last_linear(host)
    return lin is not None and lin.out_features == seed.b.out_features


def _width_fits(seed: nn.Module, host: nn.Module) -> bool:
    """The seed is a residual MLP and the host a biased two-layer MLP whose input and output
    widths it matches."""
    if type(seed) is not ResidualMLP:
        return False
    block = mlp_block(host)
    if block is None:
        return False
    first, last = block
    fc1, fc2 = seed.fc1, seed.fc2
    fits = fc1.in_features == first.in_features and fc2.out_features == last.out_features
    return fits and first.bias is not None and last.bias is not None


def merge_fossil(rt: ExecutionRuntime, state: SlotState) -> bool:
    """Fold the slot's seed into its host if an exact merge fits; True when it was merged (the
    seed has left the slot; ``rt.merged`` holds what :func:`unmerge` needs)."""
    slot = state.slot
    seed, host = slot.seed, rt.hosts.get(slot.slot_id)
    if seed is None or host is None:
        return False
    kind = mergeable(seed, slot.blueprint, slot.reads_input, host)
    if kind is None:
        return False
    record = Merged(kind, seed)
    with torch.no_grad():
        if kind == "lowrank":
            _merge_lowrank(rt, record, seed, host)
        else:
            _merge_width(rt, record, seed, host, state.optimizer)
    for handle in slot.hook_handles:
        handle.remove()
    slot.hook_handles.clear()
    slot.seed = None
    slot.rng = None
    rt.merged[slot.slot_id] = record
    return True


def _keep(rt: ExecutionRuntime, record: Merged, p: Tensor) -> None:
    """Remember ``p``'s tensor and host optimizer state as they are before the merge."""
    record.saved.append((p, p.data))
    st = rt.host_optimizer.state.get(p)
    if st is not None:
        record.opt_state[id(p)] = {
            k: v.clone() if isinstance(v, Tensor) else v for k, v in st.items()
        }


def _merge_lowrank(rt: ExecutionRuntime, record: Merged, seed: nn.Module, host: nn.Module) -> None:
    assert isinstance(seed, LowRankAdapter)
    lin = last_linear(host)
    assert lin is not None
    m = seed.scaling * (seed.b.weight.double() @ seed.a.weight.double())  # s B A
    for p in (lin.weight, lin.bias):
        if p is None:
            continue
        _keep(rt, record, p)
        w = p.data.double()
        p.data = (w + m @ w).to(p.dtype)


def _merge_width(
    rt: ExecutionRuntime,
    record: Merged,
    seed: nn.Module,
    host: nn.Module,
    seed_opt: torch.optim.Optimizer | None,
) -> None:
    assert isinstance(seed, ResidualMLP)
    block = mlp_block(host)
    assert block is not None and block[0].bias is not None and block[1].bias is not None
    first, last = block
    fc1, fc2 = seed.fc1, seed.fc2
    plan: list[tuple[Tensor, Tensor, int, Tensor | None]] = [
        (first.weight, fc1.weight, 0, fc1.weight),
        (first.bias, fc1.bias, 0, fc1.bias),
        (last.weight, fc2.weight, 1, fc2.weight),
        (last.bias, fc2.bias, -1, None),  # added, not appended
    ]
    same = seed_opt is not None and type(seed_opt) is type(rt.host_optimizer)
    for p, part, dim, source in plan:
        _keep(rt, record, p)
        if dim < 0:
            p.data = p.data + part.detach().to(p.dtype)
            continue
        p.data = torch.cat([p.data, part.detach().to(p.dtype)], dim=dim)
        _grow_state(rt.host_optimizer, p, dim, seed_opt if same else None, source)
    k = fc1.out_features
    record.features += [(first, "out_features", first.out_features)]
    record.features += [(last, "in_features", last.in_features)]
    first.out_features += k
    last.in_features += k


def _grow_state(
    opt: torch.optim.Optimizer,
    p: Tensor,
    dim: int,
    seed_opt: torch.optim.Optimizer | None,
    source: Tensor | None,
) -> None:
    """Extend ``p``'s optimizer state along ``dim`` with the seed's (or zeros)."""
    st = opt.state.get(p)
    if not st:
        return
    donor = seed_opt.state.get(source, {}) if seed_opt is not None and source is not None else {}
    for key, value in list(st.items()):
        if not isinstance(value, Tensor) or value.dim() == 0:
            continue
        extra = donor.get(key)
        if not isinstance(extra, Tensor) or extra.dim() != value.dim():
            shape = list(value.shape)
            shape[dim] = p.shape[dim] - value.shape[dim]
            extra = torch.zeros(shape, dtype=value.dtype, device=value.device)
        st[key] = torch.cat([value, extra.to(value.dtype)], dim=dim)


def unmerge(rt: ExecutionRuntime, slot_id: str) -> None:
    """Undo the merge of ``slot_id``: the host's merged tensors and their host optimizer state
    are restored bitwise, and the seed is a fossil in the slot again (its parameters in the host
    optimizer)."""
    record = rt.merged.get(slot_id)
    slot = rt.slots[slot_id]
    if record is None:
        raise ValueError(f"slot {slot_id}: no merged fossil to unmerge")
    if slot.seed is not None or not slot.fossil:
        raise ValueError(f"slot {slot_id} is not a merged fossil any more")
    del rt.merged[slot_id]
    for p, data in record.saved:
        p.data = data
        state = record.opt_state.get(id(p))
        if state is not None:
            rt.host_optimizer.state[p] = state
        else:
            rt.host_optimizer.state.pop(p, None)
    for module, attr, value in record.features:
        setattr(module, attr, value)
    slot.seed = record.seed
    slot.set_stage(FOSSILIZED)
    host = slot_host(rt.model, slot)
    near = list(host.parameters()) if host is not None else []
    join_host_optimizer(rt.host_optimizer, list(record.seed.parameters()), None, near=near)
