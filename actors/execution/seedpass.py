"""Running a slot's seed: its output conformed to the host activation's shape and dtype, its
forward on its own RNG stream, and its backward run apart from the user's (a hook on the seed
output's leaf in the user's graph), so that a seed whose backward raises leaves instead of
raising out of the user's ``loss.backward()``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

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
        prior = [p.grad for p in params]
        for p in params:  # the backward's own gradient alone (a rank's sync hook averages it)
            p.grad = None
        try:
            # retained: a (leaking) seed's graph may share nodes with the user's, which the
            # user's backward still walks; the seed's own is freed with ``z`` just after
            torch.autograd.backward(z, grad, retain_graph=True, inputs=params)
        except Exception as exc:  # the seed leaves; the user's backward goes on
            slot._failed(exc, "backward")
        grads = tuple(p.grad for p in params)
        for p, g in zip(params, prior, strict=True):
            p.grad = g
        if slot.failure is None:
            hold_grads(slot, params, grads)


def hold_grads(
    slot: SeedSlot, params: list[nn.Parameter], grads: tuple[Tensor | None, ...]
) -> None:
    """Add the seed's gradients from one user backward to those ``slot`` holds (accumulated like
    ``.grad``: several backwards before a step add up)."""
    held = slot.held
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            prev = held.get(id(p))
            held[id(p)] = (p, g if prev is None else prev[1] + g)


def take_grads(slots: Iterable[SeedSlot]) -> None:
    """Put the gradients each slot holds into its seed parameters' ``.grad`` (the runtime, at the
    start of ``on_step``, where the seed's optimizer and evidence read them)."""
    for slot in slots:
        held, slot.held = slot.held, {}
        for p, g in held.values():
            p.grad = g if p.grad is None else p.grad + g


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
