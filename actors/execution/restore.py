"""Restoring a checkpoint in two phases: :func:`plan` builds and checks everything (seeds built
and loaded, host tensors and host optimizer groups matched) without touching the runtime, then
:func:`apply` changes it. A checkpoint that does not fit raises :class:`RestoreError` from
:func:`plan`, and nothing has changed.

Fossilized seeds are part of the host: restored fossils take the place of the current ones in the
host optimizer's param groups (or join the group holding their slot's host module parameters,
else the first), so they keep training and the number of groups stays the user's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from actors.execution.blueprints import Blueprint, SlotShape, get_blueprint
from actors.execution.kernels import as_blueprint
from actors.execution.optim import seed_optimizer
from actors.execution.pruning import PruningError
from actors.execution.pruning_orders import restored
from actors.execution.seedchecks import host_tensors
from actors.execution.slot import SeedSlot, slot_host
from actors.execution.slotstate import loaded_evidence
from actors.execution.stages import phase_of

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


class RestoreError(ValueError):
    """The checkpoint does not fit this runtime (nothing was changed)."""


@dataclass
class SlotPlan:
    """One slot as the checkpoint has it, its seed already built and loaded."""

    entry: dict[str, Any]
    seed: nn.Module | None = None
    shape: SlotShape | None = None
    optimizer: torch.optim.Optimizer | None = None
    blueprint: Blueprint | None = None


@dataclass
class Plan:
    """Everything a restore will set, checked."""

    step: int
    slots: dict[str, SlotPlan] = field(default_factory=dict)
    host: dict[str, Tensor] | None = None
    host_optimizer: dict[str, Any] | None = None
    groups: list[list[Tensor]] | None = None  # host optimizer param lists after the restore
    masks: dict[str, Tensor] | None = None  # the host's pruning masks after the restore
    losses: list[tuple[int, float]] | None = None  # the training losses G2 compares a stage to
    shadow_fed: bool | None = None  # TRAINING seeds learn from the shadow loss (None: not saved)


def host_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict without anything inside a slot (seeds, alpha)."""
    prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, SeedSlot))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def plan(
    rt: ExecutionRuntime,
    payload: dict[str, Any],
    *,
    host: bool,
    slots: bool = True,
    masks: bool | None = None,
) -> Plan:
    """Check the checkpoint against the runtime and prepare every object it needs (``masks``:
    the pruning masks too; by default with the host)."""
    if payload.get("version") != 3 or not isinstance(payload.get("slots"), dict):
        raise RestoreError("not a runtime checkpoint (version 3 with slots)")
    out = Plan(step=int(payload["step"]))
    if slots:
        _plan_slots(rt, payload["slots"], out)
    if host and "host" in payload:
        out.host = _host_plan(rt.model, payload["host"])
        out.host_optimizer = payload["host_optimizer"]
        groups = out.groups or [list(g["params"]) for g in rt.host_optimizer.param_groups]
        _check_groups(groups, payload["host_optimizer"])
        out.losses = _losses_plan(payload.get("losses"))
        fed = payload.get("shadow_fed")
        out.shadow_fed = fed if isinstance(fed, bool) else None
    with_masks = host if masks is None else masks
    if with_masks:
        out.masks = _masks_plan(rt, payload)
    return out


def _losses_plan(saved: object) -> list[tuple[int, float]] | None:
    """The checkpoint's training-loss history (absent in older checkpoints: None, kept as is)."""
    if saved is None:
        return None
    try:
        return [(int(s), float(v)) for s, v in saved]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise RestoreError("the checkpoint's loss history is malformed") from None


def _plan_slots(rt: ExecutionRuntime, saved: dict[str, Any], out: Plan) -> None:
    """Each saved slot's plan into ``out``, and the host optimizer's groups after them."""
    unknown = sorted(set(saved) - set(rt.states))
    if unknown:
        raise RestoreError(f"checkpoint names slots this runtime does not have: {unknown}")
    out.slots = {sid: _slot_plan(rt, sid, e) for sid, e in saved.items()}
    out.groups = _groups_after(rt, out)


def _masks_plan(rt: ExecutionRuntime, payload: dict[str, Any]) -> dict[str, Tensor]:
    try:
        return restored(rt.pruner, payload)
    except PruningError as exc:
        raise RestoreError(str(exc)) from None


def _slot_plan(rt: ExecutionRuntime, sid: str, entry: dict[str, Any]) -> SlotPlan:
    try:
        entry = {**entry, "evidence": loaded_evidence(entry.get("evidence"))}
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise RestoreError(f"slot {sid}: its evidence is malformed: {exc}") from None
    if "seed" not in entry:
        return SlotPlan(entry)
    try:
        bp = _blueprint(rt, entry)
        shape = SlotShape(
            tuple(entry["out_shape"]),
            getattr(torch, entry["dtype"]),
            None if entry["in_shape"] is None else tuple(entry["in_shape"]),
        )
        slot = rt.slots[sid]
        seed = bp.build(shape, entry["params"], rt.hosts.get(sid, slot)).to(rt.device, shape.dtype)
        seed.load_state_dict(entry["seed"])
        optimizer = None
        if not entry["fossil"]:
            optimizer = seed_optimizer(list(seed.parameters()), entry["params"])
            if "optimizer" in entry:
                optimizer.load_state_dict(entry["optimizer"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise RestoreError(f"slot {sid}: cannot rebuild its seed: {exc}") from None
    return SlotPlan(entry, seed, shape, optimizer, bp)


def _blueprint(rt: ExecutionRuntime, entry: dict[str, Any]) -> Blueprint:
    """The registered blueprint, or the kernel of the artifact the seed came from (verified and
    loaded through the kernel cache: usually a hit)."""
    artifact = entry.get("artifact") or ""
    if not artifact:
        return get_blueprint(entry["blueprint"])
    return as_blueprint(rt.kernels.get(artifact))


def _host_plan(model: nn.Module, saved: dict[str, Tensor]) -> dict[str, Tensor]:
    current = host_state(model)
    if set(saved) != set(current):
        missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        raise RestoreError(f"host tensors differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in saved.items():
        if t.shape != current[name].shape or t.dtype != current[name].dtype:
            raise RestoreError(f"host tensor {name}: {tuple(t.shape)} {t.dtype} in checkpoint")
    return saved


def _groups_after(rt: ExecutionRuntime, p: Plan) -> list[list[Tensor]]:
    """The host optimizer's param lists once restored fossils replace the current ones."""
    groups = [list(g["params"]) for g in rt.host_optimizer.param_groups]
    for sid, sp in sorted(p.slots.items()):
        old = {id(t) for t in rt.slots[sid].seed_parameters()} if rt.slots[sid].fossil else set()
        new: list[Tensor] = (
            list(sp.seed.parameters()) if sp.seed is not None and sp.entry["fossil"] else []
        )
        host = slot_host(rt.model, rt.slots[sid])
        near = {id(t) for t in host.parameters()} if host is not None else set()
        groups = _swapped(groups, old, new, near)
    return groups


def _swapped(
    groups: list[list[Tensor]], old: set[int], new: list[Tensor], near: set[int]
) -> list[list[Tensor]]:
    """``groups`` with a fossil's parameters (ids ``old``) replaced by a restored fossil's
    (``new``): in place when the old ones form a group of their own, else appended to the group
    that held them (none: the group holding the host module's parameters ``near``, else the
    first), as fossilization does; no group is added (the user's LR schedulers index them)."""
    alone = _own_group(groups, old)
    if old and alone is not None and new:
        groups[alone] = new
        return groups
    target = _first_holding(groups, old) if old else None
    if target is None:
        target = _first_holding(groups, near) or 0
    groups = [[t for t in g if id(t) not in old] for g in groups]
    return _joined(groups, target, new)


def _joined(groups: list[list[Tensor]], target: int, new: list[Tensor]) -> list[list[Tensor]]:
    """``new`` appended to group ``target`` (a group of its own when there is none left);
    groups left empty are dropped."""
    if new and groups:
        groups[target].extend(new)
    elif new:
        groups.append(new)
    return [g for g in groups if g]


def _first_holding(groups: list[list[Tensor]], ids: set[int]) -> int | None:
    """The index of the first group holding any of ``ids`` (None if none)."""
    hits = [i for i, g in enumerate(groups) if any(id(t) in ids for t in g)]
    return hits[0] if hits else None


def _own_group(groups: list[list[Tensor]], ids: set[int]) -> int | None:
    """The index of the first group made of exactly the parameters ``ids`` (None if none)."""
    alone = [i for i, g in enumerate(groups) if g and {id(t) for t in g} == ids]
    return alone[0] if alone else None


def _check_groups(groups: list[list[Tensor]], saved: dict[str, Any]) -> None:
    sizes = [len(g["params"]) for g in saved["param_groups"]]
    if sizes != [len(g) for g in groups]:
        raise RestoreError(
            f"host optimizer param groups {[len(g) for g in groups]} do not match the"
            f" checkpoint's {sizes} (a seed was fossilized or released since)"
        )


def apply(rt: ExecutionRuntime, p: Plan) -> None:
    """Set everything the plan holds (call only with a plan from :func:`plan`)."""
    if p.groups is not None:
        _set_groups(rt.host_optimizer, p.groups)
    for sid, sp in p.slots.items():
        _apply_slot(rt, sid, sp)
    if p.host is not None:
        current = host_state(rt.model)
        with torch.no_grad():
            for name, t in p.host.items():
                current[name].copy_(t)
    if p.host_optimizer is not None:
        rt.host_optimizer.load_state_dict(p.host_optimizer)
    if p.masks is not None:
        rt.pruner.replace_all(p.masks)
    if p.losses is not None:
        rt.losses.clear()
        rt.losses.extend(p.losses)
    if p.shadow_fed is not None:
        rt.feed_shadow(p.shadow_fed)


def _set_groups(opt: torch.optim.Optimizer, groups: list[list[Tensor]]) -> None:
    keep = {id(t) for g in groups for t in g}
    for t in [t for t in opt.state if id(t) not in keep]:
        del opt.state[t]
    fresh = []
    for i, params in enumerate(groups):
        base = dict(opt.param_groups[i]) if i < len(opt.param_groups) else dict(opt.defaults)
        base["params"] = params
        fresh.append(base)
    opt.param_groups[:] = fresh


def _apply_slot(rt: ExecutionRuntime, sid: str, sp: SlotPlan) -> None:
    state, entry = rt.states[sid], sp.entry
    state.release(rt.device)
    slot = state.slot
    if sp.seed is not None:
        slot.attach(
            sp.seed,
            blueprint=entry["blueprint"],
            reads_input=sp.blueprint is not None and sp.blueprint.reads_input,
            blend_mode=entry["blend_mode"],
        )
        slot.watched = host_tensors(rt, sid)
        state.shape, state.params = sp.shape, dict(entry["params"])
        state.artifact = str(entry.get("artifact") or "")
        slot.fossil = bool(entry["fossil"])
        state.optimizer = sp.optimizer
        slot.world = rt.world_size
    rng = entry.get("rng")
    slot.rng = None if rng is None else [t.cpu() for t in rng]
    slot.draws = bool(entry.get("draws", rng is not None))  # (older checkpoints: when it has one)
    slot.set_stage(int(entry["stage"]))
    slot.alpha.fill_(float(entry["alpha"]))
    state.paused = bool(entry["paused"])
    state.stage_since = int(entry["stage_since"])
    state.blend_start = int(entry["blend_start"])
    state.blend_steps = int(entry["blend_steps"])
    state.load_evidence(entry["evidence"])  # what the gates judge the seed on (phase: below)
    # a checkpoint from before the phase was saved: the nearest band side
    state.phase = int(entry.get("phase", phase_of(float(entry["alpha"]))))
    state.phase_changes = int(entry.get("phase_changes", 0))
    state.schedule = int(entry["schedule"])
