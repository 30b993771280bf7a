"""What a seed must pass before it is attached, each a refusal (:class:`OrderError`) that changes
nothing: sane germinate parameters, a blueprint signed off for the slot's shape (and blend mode),
a size within the limit, and no module or tensor shared with the host."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from actors.execution.blueprints import Blueprint, SlotShape, param_count, signed_off
from actors.execution.errors import OrderError
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime

__all__ = [
    "MAX_PARAM_MAGNITUDE",
    "MIN_SEED_LIMIT",
    "RUNTIME_PARAMS",
    "check_fit",
    "check_limit",
    "check_params",
    "check_shares_nothing",
    "host_tensors",
    "untouched_host",
]

MAX_PARAM_MAGNITUDE = 1e9  # no germinate parameter (sizes, rates, scales) is larger than this
MIN_SEED_LIMIT = 1_000_000  # default seed size limit: the host's parameter count, at least this


#: germinate parameters the runtime reads for any blueprint, with their bounds (inclusive low,
#: high; ``lr`` and ``kd_temperature`` also above 0 where given)
RUNTIME_PARAMS: dict[str, tuple[float, float]] = {
    "lr": (0.0, math.inf),
    "weight_decay": (0.0, math.inf),
    "kd_weight": (0.0, 1.0),
    "kd_temperature": (0.0, math.inf),
}
_ABOVE_ZERO = frozenset({"lr", "kd_temperature"})


def _bounds(name: str) -> str:
    low, high = RUNTIME_PARAMS[name]
    if high < math.inf:
        return f"in [{low:g}, {high:g}]"
    return "above 0" if name in _ABOVE_ZERO else f">= {low:g}"


def check_params(params: dict[str, float], bp: Blueprint) -> dict[str, float]:
    """Germinate parameters must be finite and of a sane magnitude, the runtime's own within
    their bounds, and every other one a parameter ``bp`` declares (refused before any build)."""
    for name, value in sorted(params.items()):
        if not math.isfinite(value) or abs(value) > MAX_PARAM_MAGNITUDE:
            raise OrderError(
                f"germinate parameter {name}={value!r} is out of bounds"
                f" (finite, |value| <= {MAX_PARAM_MAGNITUDE:g})",
                {ev.PARAMS_FINITE: float(math.isfinite(value))},
            )
        low, high = RUNTIME_PARAMS.get(name, (-math.inf, math.inf))
        if not low <= value <= high or (name in _ABOVE_ZERO and value <= 0):
            raise OrderError(f"germinate parameter {name}={value:g} must be {_bounds(name)}")
    unknown = sorted(
        set(params) - set(RUNTIME_PARAMS) - (set(params) if bp.params is None else bp.params)
    )
    if unknown:
        takes = ", ".join(sorted(bp.params or ())) or "none of its own"
        raise OrderError(
            f"blueprint {bp.name!r} takes no parameter {', '.join(unknown)}"
            f" (its parameters: {takes}; any blueprint's: {', '.join(RUNTIME_PARAMS)})"
        )
    return params


def check_fit(bp: Blueprint, shape: SlotShape, blend_mode: int) -> None:
    """The blueprint is signed off for the slot's shape and, for convex blending, supports it."""
    if not signed_off(bp, shape):
        raise OrderError(
            f"blueprint {bp.name!r} is not signed off for shape {shape}",
            {ev.BLUEPRINT_KNOWN: 1.0, ev.BLUEPRINT_SIGNED_OFF: 0.0},
        )
    if blend_mode == pb.BLEND_MODE_CONVEX and not bp.convex_ok:
        raise OrderError(f"blueprint {bp.name!r} does not support convex blending")


def check_limit(rt: ExecutionRuntime, bp: Blueprint, n: int, size: int) -> None:
    """The seed's ``size`` (elements, ``n`` of them parameters) is within the runtime's limit."""
    limit = rt.config.max_seed_params or max(param_count(rt.model), MIN_SEED_LIMIT)
    if size > limit:
        raise OrderError(
            f"seed of blueprint {bp.name!r} would hold {size:,} elements"
            f" (limit {limit:,}: RuntimeConfig.max_seed_params)",
            {ev.SEED_PARAMS: float(n)},
        )


def check_shares_nothing(rt: ExecutionRuntime, seed: nn.Module) -> None:
    """Refuse a seed that holds a host module, parameter or buffer (by identity or storage)."""
    host_ids, storages = _host_identities(rt)
    shared = [
        name
        for name, obj in (*seed.named_modules(), *seed.named_parameters(), *seed.named_buffers())
        if id(obj) in host_ids or (isinstance(obj, Tensor) and _storage(obj) in storages)
    ]
    if shared:
        raise OrderError(
            f"seed shares {len(shared)} module(s)/tensor(s) with the host: {shared[:5]}",
            {ev.SEED_SHARES_HOST: float(len(shared))},
        )


def _host_identities(rt: ExecutionRuntime) -> tuple[set[int], set[int]]:
    """The ids of the host's modules, parameters and buffers (slots aside), and the storages of
    its tensors."""
    in_slots = {id(m) for slot in rt.slots.values() for m in slot.modules()}
    host = [m for m in rt.model.modules() if id(m) not in in_slots]
    host_ids = {id(m) for m in host}
    tensors = [t for m in host for t in (*m.parameters(False), *m.buffers(False))]
    host_ids.update(id(t) for t in tensors)
    return host_ids, {_storage(t) for t in tensors} - {0}


def _storage(t: Tensor) -> int:
    if t.device.type == "meta":
        return 0
    return int(t.untyped_storage().data_ptr())


def host_tensors(rt: ExecutionRuntime, slot_id: str) -> tuple[Tensor, ...]:
    """The parameters and buffers of the host module a slot's seed factory receives (what the
    seed could keep a reference to), the slots' own aside."""
    host = rt.hosts.get(slot_id)
    if host is None:
        return ()
    in_slots = {id(t) for s in rt.slots.values() for t in (*s.parameters(), *s.buffers())}
    return tuple(t for t in (*host.parameters(), *host.buffers()) if id(t) not in in_slots)


@contextmanager
def untouched_host(rt: ExecutionRuntime, slot_id: str) -> Iterator[None]:
    """Refuse (and undo) any write into the host module's tensors inside the block: a seed run
    at germination that writes the host through a reference it kept (not a registered one)."""
    tensors = host_tensors(rt, slot_id)
    versions = [t._version for t in tensors]
    saved = [t.detach().clone() for t in tensors]
    yield
    written = [i for i, t in enumerate(tensors) if t._version != versions[i]]
    if written:
        with torch.no_grad():
            for i in written:
                tensors[i].copy_(saved[i])
        raise OrderError(
            f"seed wrote {len(written)} host tensor(s) through a reference it kept",
            {ev.SEED_SHARES_HOST: float(len(written))},
        )
