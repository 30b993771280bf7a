"""Structured pruning: unit importance of the host's Linear and Conv modules, and unit masks.

A *unit* is an output feature of a ``Linear`` or an output channel of a ``Conv1d/2d/3d`` of the
host (modules inside slots, seeds included, are not maskable).

- **Importance** (with ``RuntimeConfig.importance_every > 0``): per unit, the first-order Taylor
  estimate of how much the trainer's loss would rise if the unit's output were zero,
  ``-sum(a * dL/da)`` over the batch and the unit's positions, averaged over the backward passes
  since the last export (negative: zeroing it is estimated to lower the loss). A forward hook puts
  a gradient hook on the module's output when the module is in training mode and the output needs
  a gradient, so the trainer's own backward feeds it (eval-mode forwards, probes and shadow
  losses do not).
- **Masks**: a forward hook replaces the outputs of masked units by exact zeros (``masked_fill``),
  so they contribute nothing downstream and their weights get zero gradient. Masks change only
  through a :class:`pb.PruningOrder` applied at a step boundary (see :mod:`pruning_orders`).

A module carries a hook only while it is tracked or masked: an unpruned host without tracking
runs with no hook at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actors.execution.slot import SeedSlot
from leyline import pb

MASKABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PruningError(ValueError):
    """A mask that does not fit the host (unknown module, wrong shape…): nothing changed."""


def maskable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The host's Linear and Conv modules by name, outside every slot."""
    inside = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, SeedSlot))
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, MASKABLE) and name and not name.startswith(inside)
    }


def unit_count(module: nn.Module) -> int:
    """Output features of a Linear, output channels of a Conv."""
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return int(getattr(module, "out_channels"))  # noqa: B009 (ConvNd)


def _view_shape(module: nn.Module, units: int) -> tuple[int, ...]:
    """How a per-unit vector broadcasts against the module's output."""
    if isinstance(module, nn.Linear):
        return (units,)
    spatial = len(getattr(module, "kernel_size", ()))
    return (units,) + (1,) * spatial


class Pruner:
    """The masks and importance statistics of one model's maskable modules."""

    def __init__(self, model: nn.Module, *, track: bool) -> None:
        self.modules = maskable_modules(model)
        self.track = track
        self.masks: dict[str, Tensor] = {}  # name -> bool keep flags (units,)
        self._fill: dict[str, Tensor] = {}  # name -> ~keep, shaped to broadcast on the output
        self._handles: dict[str, RemovableHandle] = {}
        self.scores: dict[str, Tensor] = {}  # name -> float64 sums (units,)
        self.passes: dict[str, int] = {}
        self.since = 0
        for name in self.modules if track else ():
            self._hook(name)

    # -- hooks -----------------------------------------------------------------------------------
    def _hook(self, name: str) -> None:
        if name not in self._handles:
            module = self.modules[name]
            self._handles[name] = module.register_forward_hook(partial(self._forward, name))

    def _unhook(self, name: str) -> None:
        if not self.track and name not in self.masks and name in self._handles:
            self._handles.pop(name).remove()

    def _forward(self, name: str, module: nn.Module, inputs: Any, out: Any) -> Any:
        if not isinstance(out, Tensor):
            return None
        fill = self._fill.get(name)
        if fill is not None:
            if fill.shape[0] != unit_count(module):  # the module grew or shrank (a fossil merge)
                fill = self._refit(name)
            out = out.masked_fill(fill, 0)
        if self.track and module.training and out.requires_grad:
            dim = out.dim() - len(_view_shape(module, 1))
            out.register_hook(partial(self._accumulate, name, out.detach(), dim))
        return out

    def _accumulate(self, name: str, act: Tensor, dim: int, grad: Tensor) -> None:
        with torch.no_grad():
            prod = (act * grad).movedim(dim, -1)
            total = -prod.reshape(-1, prod.shape[-1]).sum(0).double()
            if name in self.scores:
                self.scores[name] += total
            else:
                self.scores[name] = total
            self.passes[name] = self.passes.get(name, 0) + 1

    # -- masks -----------------------------------------------------------------------------------
    def check(self, masks: Iterable[pb.UnitMask]) -> dict[str, Tensor]:
        """The keep vectors of ``masks`` (on the modules' devices), checked against the host;
        raises :class:`PruningError` with the first reason it does not fit."""
        out: dict[str, Tensor] = {}
        for m in masks:
            out[m.module] = self._checked(m.module, list(m.keep), out)
        if not out:
            raise PruningError("the order holds no mask")
        return out

    def _checked(self, name: str, keep: list[bool], seen: Mapping[str, Tensor]) -> Tensor:
        if name in seen:
            raise PruningError(f"module {name!r} is named twice")
        module = self.modules.get(name)
        if module is None:
            known = ", ".join(sorted(self.modules)[:8]) or "none"
            raise PruningError(f"unknown module {name!r} (maskable: {known})")
        units = unit_count(module)
        if len(keep) != units:
            raise PruningError(f"mask for {name!r} has {len(keep)} flags; the module has {units}")
        if not any(keep):
            raise PruningError(f"mask for {name!r} would prune every one of its {units} units")
        device = next(iter(module.parameters())).device
        return torch.tensor(keep, dtype=torch.bool, device=device)

    def set_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Set (or, with an all-true vector, remove) the masks of the named modules."""
        for name, keep in masks.items():
            if bool(keep.all()):
                self.masks.pop(name, None)
                self._fill.pop(name, None)
                self._unhook(name)
                continue
            module = self.modules[name]
            self.masks[name] = keep.clone()
            self._fill[name] = (~keep).reshape(_view_shape(module, unit_count(module)))
            self._hook(name)

    def _refit(self, name: str) -> Tensor:
        """Fit a mask to its module's current width: units added at the end (a merged width
        seed) are kept, units gone from the end (its unmerge) are dropped."""
        module, keep = self.modules[name], self.masks[name]
        units = unit_count(module)
        if keep.shape[0] < units:
            keep = torch.cat([keep, keep.new_ones(units - keep.shape[0])])
        self.masks[name] = keep[:units]
        self._fill[name] = (~self.masks[name]).reshape(_view_shape(module, units))
        return self._fill[name]

    def refit(self) -> None:
        """Fit every mask to its module's current width (see :meth:`_refit`)."""
        for name, keep in list(self.masks.items()):
            if keep.shape[0] != unit_count(self.modules[name]):
                self._refit(name)

    def replace_all(self, masks: Mapping[str, Tensor]) -> None:
        """Make ``masks`` the only masks (a restore)."""
        cleared = {n: torch.ones_like(k) for n, k in self.masks.items() if n not in masks}
        self.set_masks({**cleared, **masks})

    def counts(self) -> tuple[int, int]:
        """(masked units, units of every maskable module)."""
        self.refit()
        pruned = sum(int((~k).sum()) for k in self.masks.values())
        return pruned, sum(unit_count(m) for m in self.modules.values())

    # -- importance ------------------------------------------------------------------------------
    def importance(self) -> dict[str, Tensor]:
        """Estimated loss increase per unit if zeroed (mean over the window's backward passes)
        of every tracked module seen in a backward pass."""
        return {n: s / max(self.passes[n], 1) for n, s in self.scores.items()}

    def report(self, rank: int, step: int, region: str = "") -> pb.ImportanceReport:
        """The window's importance of every tracked module; starts a new window."""
        msg = pb.ImportanceReport(
            rank=rank,
            step=step,
            since_step=self.since,
            backward_passes=max(self.passes.values(), default=0),
            region=region,
        )
        values = self.importance()
        self.refit()
        for name, module in self.modules.items():
            units = unit_count(module)
            score = values.get(name, torch.zeros(units, dtype=torch.float64))
            keep = self.masks.get(name, torch.ones(units, dtype=torch.bool))
            msg.modules.append(
                pb.ModuleImportance(
                    module=name,
                    layer=type(module).__name__,
                    importance=score.cpu().tolist(),
                    keep=keep.cpu().tolist(),
                )
            )
        self.scores, self.passes = {}, {}
        self.since = step + 1
        return msg

    def close(self) -> None:
        """Remove every hook (masks and tracking stop)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
