"""Running a slot's seed: its output conformed to the host activation's shape and dtype, its
forward on its own RNG stream, and its backward run apart from the user's (a hook on the seed
output's leaf in the user's graph), so that a seed whose backward raises leaves instead of
raising out of the user's ``loss.backward()``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from actors.execution.stages import Mode

if TYPE_CHECKING:
    from actors.execution.slot import SeedSlot


def conformed(z: Tensor, h: Tensor) -> Tensor:
    """``z`` in ``h``'s dtype; a seed output of another shape, or not floating, raises."""
    if z.shape != h.shape:
        raise RuntimeError(f"seed output shape {tuple(z.shape)} is not the host's {tuple(h.shape)}")
    if z.dtype == h.dtype:
        return z
    if not z.is_floating_point():
        raise RuntimeError(f"seed output dtype {z.dtype} is not floating")
    return z.to(h.dtype)


class SeedBackward:
    """The hook on a seed output's leaf in the user's graph: the seed's backward from the leaf's
    gradient, run once (a second backward through a retained graph adds nothing to the seed), an
    error noted as the seed's failure (the runtime culls it at the step's end), never raised.

    The seed's gradients are held by the slot, not put in the parameters' ``.grad``: until
    ``on_step`` takes them, nothing in the user's loop sees them (a norm clip over
    ``model.parameters()``, a loss scaler's unscale, a ``model.zero_grad()`` before ``on_step``),
    and nothing reaches a host tensor through the seed's graph."""

    def __init__(self, slot: SeedSlot, z: Tensor) -> None:
        self.slot = slot
        self.z: Tensor | None = z

    def __call__(self, grad: Tensor) -> None:
        z, self.z = self.z, None
        slot = self.slot
        if z is None or slot.failure is not None or slot.seed is None:
            return
        params = [p for p in slot.seed.parameters() if p.requires_grad]
        try:
            # retained: a (leaking) seed's graph may share nodes with the user's, which the
            # user's backward still walks; the seed's own is freed with ``z`` just after. Into
            # nothing's ``.grad`` (no hook of a rank's runs here: ranks average in on_step)
            grads = torch.autograd.grad(z, params, grad, retain_graph=True, allow_unused=True)
        except Exception as exc:  # the seed leaves; the user's backward goes on
            slot._failed(exc, "backward")
            return
        hold_grads(slot, params, grads, torch.isfinite(grad).all())


class Held:
    """What a slot holds of its seed's gradients from the user's backwards until ``on_step``:
    the sums per parameter and whether a gradient reaching the seed's output was not finite (an
    overflow upstream of the seed, which a loss scaler skips: no fault of the seed's). The flag
    stays a device tensor: read only when a seed gradient is not finite."""

    __slots__ = ("bad", "grads")

    def __init__(self) -> None:
        self.grads: dict[int, tuple[nn.Parameter, Tensor]] = {}
        self.bad: Tensor | None = None

    def __bool__(self) -> bool:
        return bool(self.grads) or self.bad is not None


def hold_grads(
    slot: SeedSlot, params: list[nn.Parameter], grads: tuple[Tensor | None, ...], ok: Tensor
) -> None:
    """Add the seed's gradients from one user backward to those ``slot`` holds (accumulated like
    ``.grad``: several backwards before a step add up); ``ok``: the gradient that reached the
    seed's output was finite."""
    held = slot.held
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            prev = held.grads.get(id(p))
            held.grads[id(p)] = (p, g if prev is None else prev[1] + g)
    held.bad = ~ok if held.bad is None else held.bad | ~ok


def take_grads(slots: Mapping[str, SeedSlot], world: int = 1) -> dict[str, Tensor]:
    """Put the gradients each slot holds into its seed parameters' ``.grad`` (the runtime, at the
    start of ``on_step``, where the seed's optimizer and evidence read them), averaged across
    ``world`` ranks for every seed the user's backward feeds (every rank joins, in slot order,
    whether its backward reached the seed or not). Returns, per slot, the flag of an overflow
    upstream of its seed."""
    upstream: dict[str, Tensor] = {}
    for sid in sorted(slots) if world > 1 else slots:
        slot = slots[sid]
        slot.recomputes = 0  # (a checkpoint's pass not recomputed by now never will be)
        held = slot.held
        if held:  # (most slots, most steps: nothing held, nothing to allocate)
            slot.held = Held()
            for p, g in held.grads.values():
                p.grad = g if p.grad is None else p.grad + g
            if held.bad is not None:
                upstream[sid] = held.bad
        if world > 1 and _fed_by_user(slot):
            params = [p for p in slot.seed_parameters() if p.requires_grad]
            average_grads(params, world)
            if params:  # an overflow on any rank reached every rank's average: every rank's flag
                upstream[sid] = _any_rank(held.bad, params[0].device)
    return upstream


def _fed_by_user(slot: SeedSlot) -> bool:
    """The user's backward gives this slot's seed its gradient (the same on every rank: ranks
    agree on stages and on whether the loop passes ``batch=``)."""
    if slot.seed is None or slot.fossil:
        return False
    return slot.mode in (Mode.RESIDUAL, Mode.CONVEX) or (
        slot.mode is Mode.TRAINING and not slot.shadow_fed
    )


def _any_rank(bad: Tensor | None, device: torch.device) -> Tensor:
    """Whether ``bad`` holds on any rank (a collective every rank joins)."""
    import torch.distributed as dist

    flag = torch.zeros(1, dtype=torch.int32, device=device)
    if bad is not None:
        flag += bad.to(device=device, dtype=torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag[0] > 0


def average_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` across ranks (absent ones count as zero)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


@torch.compiler.disable  # type: ignore[untyped-decorator]
def own_stream(slot: SeedSlot, seed: nn.Module, src: Tensor) -> Tensor:
    """Run ``seed`` on the slot's RNG stream; the global stream is left exactly as it was."""
    assert slot.rng is not None
    cuda = src.device if src.device.type == "cuda" else None
    with torch.random.fork_rng(devices=[cuda] if cuda is not None else []):
        torch.set_rng_state(slot.rng[0])
        if cuda is not None:
            torch.cuda.set_rng_state(slot.rng[1], cuda)
        out: Tensor = seed(src)
        slot.rng = [torch.get_rng_state()]
        if cuda is not None:
            slot.rng.append(torch.cuda.get_rng_state(cuda))
    return out


def loaded(
    slot: SeedSlot, state_dict: Mapping[str, Any], prefix: str, unexpected: list[str]
) -> None:
    """After a slot's ``load_state_dict``: keys of a seed (``<prefix>seed.*``) while the slot holds
    none are unexpected (torch would drop them silently: a fossil's weights, lost)."""
    if slot.seed is None:
        unexpected.extend(k for k in state_dict if k.startswith(prefix + "seed."))


def seedless_ok(slot: nn.Module, keys: Any) -> None:
    """A state dict without the slot's live seed (saved before it germinated) loads the host:
    a seed that is not (yet) a fossil is the runtime's, not the model's, and keeps its weights;
    a fossil's keys stay required."""
    seed: nn.Module | None = slot._modules.get("seed")
    if seed is None or getattr(slot, "fossil", True):
        return
    mine = f"{getattr(slot, 'load_prefix', '')}seed."
    keys.missing_keys[:] = [k for k in keys.missing_keys if not k.startswith(mine)]
