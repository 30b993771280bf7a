"""Gradient isolation checks: a graph walk at attach and sampled autograd probes at run time.

The invariant: nothing a seed outputs may carry gradient into a host parameter (the seed reads a
detached copy of the host activation). The attach check walks the autograd graph of a seed output
computed on a probe batch and fails if any host parameter's ``AccumulateGrad`` node is reachable;
the runtime probe asks autograd for d(sum of seed output)/d(host params) and fails on any
non-None, non-zero gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from leyline import pb


@dataclass(frozen=True)
class IsolationReport:
    """Result of one isolation check of a seed output."""

    violated: bool
    reachable: int  # host parameters reachable in the graph (walk) or with a non-zero gradient
    max_abs_grad: float = 0.0


def graph_walk(seed_out: Tensor, host_params: Sequence[Tensor]) -> IsolationReport:
    """Walk ``seed_out.grad_fn``; a violation is any reachable host-parameter AccumulateGrad."""
    host_ids = {id(p) for p in host_params}
    fn = seed_out.grad_fn
    if fn is None:
        return IsolationReport(False, 0)
    seen: set[int] = set()
    hits: set[int] = set()
    stack = [fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor) and id(variable) in host_ids:
            hits.add(id(variable))
        for nxt, _ in node.next_functions:
            if nxt is not None:
                stack.append(nxt)
    return IsolationReport(bool(hits), len(hits))


def autograd_probe(seed_out: Tensor, host_params: Sequence[Tensor]) -> IsolationReport:
    """``autograd.grad(seed_out.sum(), host_params, allow_unused=True)`` must be all None/zero."""
    params = [p for p in host_params if p.requires_grad]
    if not params or not seed_out.requires_grad:
        return IsolationReport(False, 0)
    grads = torch.autograd.grad(
        seed_out.float().sum(), params, allow_unused=True, retain_graph=True
    )
    leaking = [g for g in grads if g is not None and bool((g != 0).any())]
    worst = max((float(g.abs().max()) for g in leaking), default=0.0)
    return IsolationReport(bool(leaking), len(leaking), worst)


def isolation_signal(
    slot: str, step: int, report: IsolationReport, *, rank: int = 0, detail: str = ""
) -> pb.SafetySignal:
    """The safety signal raised for an isolation violation at ``slot``."""
    return pb.SafetySignal(
        slot=slot,
        kind=pb.SAFETY_SIGNAL_ISOLATION_VIOLATION,
        step=step,
        value=float(report.reachable),
        detail=detail
        or f"{report.reachable} host parameter(s) reachable from the seed output"
        f" (max |grad| {report.max_abs_grad:.3g})",
        rank=rank,
    )
