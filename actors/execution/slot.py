"""SeedSlot: the point in a host network where a seed can grow, and the helper that inserts slots.

A slot wraps the output ``h`` of a host submodule (its input ``x`` is kept at hand for seeds that
read the slot input, such as width seeds). Its forward depends only on a small Python value, the
mode, so a compiled model holds one graph per lifecycle mode; alpha is a 0-dim buffer updated in
place, so alpha ramps never recompile and the forward never reads a tensor value back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actors.execution.errors import is_oom, torch_control_flow
from actors.execution.fossilsync import fossil_forward
from actors.execution.seedpass import Held, SeedBackward, conformed, loaded, own_stream, seedless_ok
from actors.execution.slotted import SlottedModule as SlottedModule
from actors.execution.stages import DORMANT, FOSSILIZED, TERMINATED, Mode, mode_for
from contracts.streams import check_slot
from leyline import pb

_CONTROL_FLOW = torch_control_flow()


@dataclass
class SlotTap:
    """What a probe forward saw at one slot: input, host output, seed output (None if no seed)."""

    x: Tensor | None
    h: Tensor
    z: Tensor | None
    out: Tensor


class SeedSlot(nn.Module):
    """A seed slot; identity (a plain ``return h``) unless a seed is in the forward."""

    alpha: Tensor
    nonfinite: Tensor
    inplace: Tensor
    seed: nn.Module | None
    # a seed output beyond this many times the host activation's largest magnitude (plus one) is
    # treated as non-finite: zeroed, counted, signalled (a blending seed gone wild never reaches
    # the host's loss and optimizer)
    max_output_ratio: float = 1e4
    _direct = False  # (class defaults: a slot pickled by an older version has none of these)
    watched: tuple[Tensor, ...] = ()
    host_writes = 0
    load_prefix = ""

    def __init__(self, slot_id: str) -> None:
        super().__init__()
        self.slot_id = check_slot(slot_id)
        self.stage: int = DORMANT
        self.mode: Mode = Mode.IDENTITY
        self.blend_mode: int = pb.BLEND_MODE_RESIDUAL
        self.reads_input = False
        self.fossil = False
        self.blueprint = ""
        self.register_module("seed", None)
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("nonfinite", torch.zeros(()), persistent=False)
        self.register_buffer("inplace", torch.zeros(()), persistent=False)
        self.rng: list[Tensor] | None = None  # the seed's own RNG stream (cpu [, device])
        self.draws = False  # the seed was seen drawing random numbers (at germination)
        self.hook_handles: list[RemovableHandle] = []
        self.world = 1  # data-parallel ranks a fossil's gradient is averaged over
        self.recomputes = 0  # DDP forwards' checkpointed fossil passes not yet recomputed
        self._tap: list[SlotTap] | None = None
        # the seed's forward raised (eager only): (out of memory?, the error); it left the forward
        self.failure: tuple[bool, str] | None = None
        # the runtime trains seeds from the shadow loss (``on_step(batch=…)``): a TRAINING seed
        # then gets no gradient from the user's backward (none for a norm clip over the model)
        self.shadow_fed = False
        # the runtime's own forwards (``forced``) differentiate through the seed's output directly
        self._direct = False
        # host tensors the seed may not write (their version counters are read around its forward,
        # eager only) and how often it was seen writing them
        self.watched = ()
        self.host_writes = 0
        self.load_prefix = ""  # where the last load_state_dict found this slot
        # the seed's gradients from the user's backward, until ``on_step`` takes them
        self.held = Held()
        self.register_load_state_dict_post_hook(seedless_ok)  # type: ignore[no-untyped-call]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, h: Tensor, x: Tensor | None = None) -> Tensor:
        """Blend the seed into the host activation ``h`` according to the current mode."""
        mode = self.mode
        if mode is Mode.IDENTITY and self._tap is None:
            return h
        out = self._blend(mode, h, x)
        if self._tap is not None:
            self._record(h, x, out)
        return out

    def _seed_input(self, h: Tensor, x: Tensor | None) -> Tensor:
        if not self.reads_input:
            return h
        if x is None:
            raise RuntimeError(f"slot {self.slot_id}: seed reads the slot input, none was given")
        return x

    def _blend(self, mode: Mode, h: Tensor, x: Tensor | None) -> Tensor:
        seed = self.seed
        if mode is Mode.IDENTITY or seed is None:
            return h
        src = self._seed_input(h, x)
        if mode is Mode.FOSSIL:  # (under DDP, its gradient averaged in DDP's backward)
            return self._fossil(h, fossil_forward(self, seed, src))
        if h.is_nested:  # a TransformerEncoder's inference fast path: the seed sits it out
            return h
        if torch.compiler.is_compiling():
            return self._mix(mode, h, self._seed_out(seed, src))
        try:
            return self._mix(mode, h, self._seed_out(seed, src))
        except _CONTROL_FLOW:  # torch steering a checkpoint's recompute: not the seed's failure
            raise
        except Exception as exc:  # the seed leaves, the host's forward goes on (on_step culls it)
            self._failed(exc)
            return h

    def _fossil(self, h: Tensor, z: Tensor) -> Tensor:
        """``h + z``, the fossil's output ``z`` zeroed where it is not finite anywhere (counted:
        the runtime signals it), so a fossil never puts a NaN or an infinity into the loss; a
        finite ``z`` is added as it is (the fossil is part of the host: no bound, no detach)."""
        # one reduction (16-bit outputs summed in float32, which cannot overflow for finite
        # ones): its sum is finite iff every element is (a sum past 3e38 counts as not finite)
        half = z.dtype in (torch.float16, torch.bfloat16)
        ok = torch.isfinite(z.sum(dtype=torch.float32 if half else None))
        if z.device.type == "cpu" and not torch.compiler.is_compiling():  # no device to wait for
            if bool(ok):
                return h + z
            self.nonfinite.add_(1.0)
            dropped: Tensor = h + torch.zeros_like(z)
            return dropped
        self.nonfinite.add_((~ok).to(self.nonfinite.dtype))
        out: Tensor = h + torch.where(ok, z, 0.0)
        return out

    def _failed(self, exc: Exception, where: str = "") -> None:
        """Note that the seed raised (the first error counts until the seed is released)."""
        if self.failure is None:
            prefix = f"in its {where}: " if where else ""
            self.failure = (is_oom(exc), f"{prefix}{type(exc).__name__}: {exc}"[:300])

    def _mix(self, mode: Mode, h: Tensor, z: Tensor) -> Tensor:
        """The slot's output from the host's ``h`` and the seed's ``z`` in ``mode``: ``z`` of
        another shape raises (the seed leaves), of another floating dtype is cast to ``h``'s
        (autocast, a seed in float64), and one that is not finite or beyond
        ``max_output_ratio`` times the host's largest magnitude (plus one) counts as non-finite
        and is zeroed: it never reaches the host's loss."""
        z = conformed(z, h)
        if z.numel():  # a NaN or an infinity fails the bound (amax propagates a NaN)
            bound = self.max_output_ratio * (h.detach().abs().amax().float() + 1.0)
            ok = z.detach().abs().amax().float() <= bound
        else:  # an empty batch has no magnitude
            ok = torch.ones((), dtype=torch.bool, device=z.device)
        self.nonfinite.add_((~ok).to(self.nonfinite.dtype))
        z = self._decoupled(torch.where(ok, z, torch.zeros_like(z)))
        if mode is Mode.TRAINING:  # the value is h's; the straight-through gradient if wanted
            return h if self.shadow_fed else h - (z.detach() - z)  # (+0.0: keeps a -0.0 of h)
        if mode is Mode.CONVEX:
            return torch.lerp(h, h.detach() + z, self.alpha.to(h.dtype))
        return h + self.alpha.to(h.dtype) * z

    def _decoupled(self, z: Tensor) -> Tensor:
        """``z`` as a leaf of the user's graph (eager forwards outside the runtime's own): the
        user's backward stops there, and a hook runs the seed's backward from the gradient it
        gets, guarded (a seed whose backward raises leaves; the user's backward goes on)."""
        if self._direct or not z.requires_grad or torch.compiler.is_compiling():
            return z
        if not self.training:  # a backward through an eval forward (a saliency map) trains nothing
            return z.detach()
        leaf = z.detach().requires_grad_()
        leaf.register_hook(SeedBackward(self, z))  # type: ignore[no-untyped-call]
        return leaf

    def _seed_out(self, seed: nn.Module, src: Tensor) -> Tensor:
        """The seed's output on its own copy of ``src`` (a write into it never reaches the host
        activation, and is counted: a fossilized seed would write the host's), drawn on the
        seed's own RNG stream (compiled forwards: when the seed was seen drawing)."""
        view = src.detach().clone()
        if torch.compiler.is_compiling():  # compiled forwards: the (eager) probes count writes
            own = self.rng is not None and self.draws
            out: Tensor = own_stream(self, seed, view) if own else seed(view)
            return out
        if view.is_inference():  # inference_mode: no version counter to read
            inferred: Tensor = own_stream(self, seed, view) if self.rng is not None else seed(view)
            return inferred
        version, watched = view._version, self.watched
        before = [t._version for t in watched]
        z: Tensor = own_stream(self, seed, view) if self.rng is not None else seed(view)
        if view._version != version:
            self.inplace.add_(1.0)
        if before != [t._version for t in watched]:  # through a reference it kept to the host
            self.host_writes += 1
        return z

    def _record(self, h: Tensor, x: Tensor | None, out: Tensor) -> None:
        assert self._tap is not None
        z = None
        if self.seed is not None and self.failure is None:
            try:
                z = self._seed_out(self.seed, self._seed_input(h, x))
            except Exception as exc:  # as in the forward: the seed leaves, the probe goes on
                self._failed(exc)
        self._tap.append(SlotTap(x=x, h=h, z=z, out=out))

    # -- lifecycle -----------------------------------------------------------------------------
    def attach(
        self, seed: nn.Module, *, blueprint: str, reads_input: bool, blend_mode: int
    ) -> None:
        """Put a (zero-output) seed into the slot; it stays out of the forward until TRAINING."""
        if self.seed is not None:
            raise RuntimeError(f"slot {self.slot_id} already holds a seed")
        self.seed = seed
        self.blueprint = blueprint
        self.reads_input = reads_input
        self.blend_mode = blend_mode
        self.fossil = False
        self.alpha.zero_()
        self.nonfinite.zero_()
        self.inplace.zero_()
        self.host_writes = 0
        self.held = Held()

    def seed_rng(self, seed: int | None) -> None:
        """Give the seed its own RNG stream starting from ``seed`` (None: the global stream)."""
        if seed is None:
            self.rng = None
            return
        device = self.alpha.device
        states = [torch.Generator().manual_seed(seed).get_state()]
        if device.type == "cuda":
            states.append(torch.Generator(device=device).manual_seed(seed).get_state())
        self.rng = states

    def set_stage(self, stage: int) -> None:
        """Enter ``stage``; FOSSILIZED makes the seed permanent (the detach is removed)."""
        if stage == FOSSILIZED:
            self.fossil = True
            self.alpha.fill_(1.0)
        self.stage = stage
        self.mode = mode_for(stage, self.blend_mode, self.fossil and self.seed is not None)
        if stage == TERMINATED and not self.fossil:
            self.mode = Mode.IDENTITY

    def release(self) -> None:
        """Drop the seed module and every hook; the slot is exactly the identity afterwards."""
        seed = self.seed
        if seed is not None:
            for module in seed.modules():
                rel = getattr(module, "release", None)
                if callable(rel):
                    rel()
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles.clear()
        self.seed = None
        self.rng = None
        self.draws = False
        self.failure = None
        self.blueprint = ""
        self.reads_input = False
        self.fossil = False
        self.blend_mode = pb.BLEND_MODE_RESIDUAL
        self.mode = Mode.IDENTITY
        self.alpha.zero_()
        self.nonfinite.zero_()
        self.inplace.zero_()
        self.host_writes = 0
        self.watched = ()
        self.held = Held()

    @contextmanager
    def forced(self, mode: Mode, alpha: float | None = None) -> Iterator[None]:
        """Temporarily run the forward in ``mode`` (probes, counterfactuals); restored on exit."""
        saved_mode, saved_alpha, saved_direct = self.mode, self.alpha.clone(), self._direct
        self.mode = mode if self.seed is not None else Mode.IDENTITY
        self._direct = True
        if alpha is not None:
            self.alpha.fill_(alpha)
        try:
            yield
        finally:
            self._direct = saved_direct
            self.mode = saved_mode
            self.alpha.copy_(saved_alpha)

    @contextmanager
    def tapped(self) -> Iterator[list[SlotTap]]:
        """Record what each forward sees at this slot (eager probe forwards only)."""
        taps: list[SlotTap] = []
        self._tap = taps
        try:
            yield taps
        finally:
            self._tap = None

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """A plain ``load_state_dict``: alpha stays the runtime's, and ``seed.*`` keys for a slot
        that holds no seed are unexpected (a strict load raises instead of dropping a fossil)."""
        alpha = self.alpha.clone()
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]
        self.alpha.copy_(alpha)
        self.load_prefix = prefix
        loaded(self, state_dict, prefix, unexpected=args[3])

    def seed_parameters(self) -> list[nn.Parameter]:
        """The seed's parameters (empty when the slot holds no seed)."""
        return [] if self.seed is None else list(self.seed.parameters())

    def extra_repr(self) -> str:
        return f"slot_id={self.slot_id!r}, mode={self.mode.value}, blueprint={self.blueprint!r}"


def insert_slots(model: nn.Module, points: Mapping[str, str]) -> dict[str, SeedSlot]:
    """Wrap the output of each named submodule (``{slot_id: "dotted.module.path"}``) with a slot.

    A target may also be a pattern (``{"mlp": "layers.*.mlp"}`` or ``"re:…"``) that expands to
    every matching submodule with generated slot ids (:mod:`actors.execution.targets`). The
    wrapped submodule moves to ``<path>.host`` (state-dict keys gain ``.host``); the slot lives at
    ``<path>.slot``. Deeper paths are wrapped first so nested points keep their names.
    """
    from actors.execution.targets import expand_targets

    points = expand_targets(model, points)
    if len(set(points.values())) != len(points):
        raise ValueError("two slots point at the same submodule")
    slots: dict[str, SeedSlot] = {}
    for slot_id, path in sorted(points.items(), key=lambda kv: -kv[1].count(".")):
        if not path:
            raise ValueError(f"slot {slot_id}: the root module cannot be wrapped")
        parent_path, _, name = path.rpartition(".")
        parent = _resolve(model, parent_path)
        child = _resolve(parent, name)
        _check_called(slot_id, path, parent, name)
        slot = SeedSlot(slot_id)
        p = next(iter(child.parameters()), None)
        b = next(iter(child.buffers()), None)
        ref = p if p is not None else b
        if ref is not None:
            slot.to(device=ref.device)
        setattr(parent, name, SlottedModule(child, slot, path))
        slots[slot_id] = slot
    return {k: slots[k] for k in points}


# parents that use these children's weights directly (a functional forward, an inference fast
# path) instead of calling them: a slot there would be left out of the forward, always or in eval
_BYPASSED: tuple[tuple[type[nn.Module], frozenset[str]], ...] = (
    (nn.MultiheadAttention, frozenset({"out_proj"})),
    (nn.TransformerEncoderLayer, frozenset({"self_attn", "linear1", "linear2", "norm1", "norm2"})),
)


def _check_called(slot_id: str, path: str, parent: nn.Module, name: str) -> None:
    """Refuse a slot on a submodule its parent does not (always) call."""
    for kind, children in _BYPASSED:
        if isinstance(parent, kind) and name in children:
            raise ValueError(
                f"slot {slot_id}: {type(parent).__name__} uses {path!r}'s weights without "
                "calling it (in its forward or its inference fast path), so a seed there would "
                "not be in the forward: put the slot on the parent or another submodule"
            )


def _resolve(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in filter(None, path.split(".")):
        nxt = getattr(module, part, None)
        if isinstance(nxt, SlottedModule):
            nxt = nxt.host
        if not isinstance(nxt, nn.Module):
            raise ValueError(f"no submodule {path!r}")
        module = nxt
    return module


def slot_host(model: nn.Module, slot: SeedSlot) -> nn.Module | None:
    """The host submodule ``slot`` follows in ``model`` (None when the slot is not in it)."""
    for module in model.modules():
        if isinstance(module, SlottedModule) and module._modules["slot"] is slot:
            return module._modules["host"]
    return None


def host_parameters(model: nn.Module, slots: Mapping[str, SeedSlot]) -> list[nn.Parameter]:
    """Every parameter of ``model`` that does not belong to a live seed: the host's own and
    every fossil's (a fossilized seed is part of the host: optimize, clip and average it)."""
    seed_ids = {id(p) for s in slots.values() if not s.fossil for p in s.parameters()}
    return [p for p in model.parameters() if id(p) not in seed_ids]
