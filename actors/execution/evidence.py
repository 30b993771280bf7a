"""Measurements taken with probe forwards: isolation probes with shadow losses, the seed's own
contribution (paired shadow-loss differences, seed on vs alpha = 0 on the same examples),
counterfactual evaluation (alpha=1 vs alpha=0, with a paired per-example gain on validation) and
the G5 reset check."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution.distill import distill_objective
from actors.execution.isolation import IsolationReport, autograd_probe
from actors.execution.probing import (
    LossFn,
    ProbeBatch,
    first_tensor,
    probe_loss,
    probe_mode,
    run_probe,
    split_batch,
)
from actors.execution.recalibrate import kept_norms, recalibrate, tracked_norms
from actors.execution.slot import SeedSlot, host_parameters
from actors.execution.stages import EMBARGOED, TERMINATED, TRAINING, Mode
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.slotstate import SlotState


@dataclass(frozen=True)
class Paired:
    """Sums of paired differences ``d`` (count, sum, sum of squares): mean and standard error."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    @staticmethod
    def of(d: Tensor) -> Paired:
        """The sums of one tensor of paired differences (every element one pair)."""
        d = d.detach().double().flatten()
        return Paired(int(d.numel()), float(d.sum()), float((d * d).sum()))

    def __add__(self, other: Paired) -> Paired:
        return Paired(self.n + other.n, self.total + other.total, self.squares + other.squares)

    @property
    def mean(self) -> float:
        """Mean difference (0 with no pair)."""
        return self.total / self.n if self.n else 0.0

    @property
    def se(self) -> float:
        """Standard error of the mean (sample variance, n - 1); infinite (unknown) with fewer
        than two pairs."""
        if self.n < 2:
            return math.inf
        var = max(0.0, (self.squares - self.n * self.mean**2) / (self.n - 1))
        return math.sqrt(var / self.n)


def pooled_tail(parts: Sequence[Paired]) -> Paired:
    """The pooled sums of the latest half (rounded up) of ``parts``: the seed's contribution
    once it has had half its training to learn."""
    tail = parts[len(parts) // 2 :]
    total = Paired()
    for p in tail:
        total = total + p
    return total


BATCH_PAIRS = 64  # pairs sought from a batch of a batch-mean loss_fn: the batch in as many parts


def per_example_loss(out: Tensor, targets: Tensor, loss_fn: LossFn | None) -> Tensor:
    """Per-example task losses (cross-entropy by default); a custom ``loss_fn`` may return one
    value per batch. Losses per element of an example (a sequence's tokens, a regression's
    outputs: a multiple of the batch, example-major) are averaged per example: the examples,
    not their elements, are the independent pairs a gain is judged on."""
    raw = (
        F.cross_entropy(out, targets, reduction="none")
        if loss_fn is None
        else loss_fn(out, targets)
    )
    losses = raw.reshape(-1)
    n = int(out.shape[0]) if out.dim() else 1
    if n > 0 and losses.numel() > n and losses.numel() % n == 0:
        return losses.reshape(n, -1).mean(dim=1)
    return losses


def paired_losses(out: Tensor, targets: Tensor, loss_fn: LossFn | None) -> Tensor:
    """The losses that pair up across two forwards of the same batch: one per example, or, for
    a ``loss_fn`` that gives one value per batch, one per part of the batch (up to
    ``BATCH_PAIRS`` parts of two or more examples each, the same parts in both forwards), so
    that a batch-mean loss still gives enough pairs to judge."""
    losses = per_example_loss(out, targets, loss_fn)
    n = int(out.shape[0]) if out.dim() else 1
    parts = min(BATCH_PAIRS, n // 2)
    if losses.numel() != 1 or parts < 2 or int(targets.shape[0]) != n:
        return losses
    pieces = zip(torch.tensor_split(out, parts), torch.tensor_split(targets, parts), strict=True)
    return torch.cat([per_example_loss(o, t, loss_fn) for o, t in pieces])


def shadow_step(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn | None,
    distill: tuple[Tensor, float, float] | None = None,
) -> tuple[list[Tensor | None], Paired]:
    """The shadow-loss gradient of one seed and its paired gain on the same batch.

    The shadow loss is the task loss with the seed fully on (alpha 1, input detached); the
    gradient is taken with respect to the seed's parameters only. With ``distill`` (the teacher's
    logits on ``inputs``, temperature, weight) it is the knowledge-distillation objective
    ``(1-w) task + w T^2 KL``. Before the seed steps, the same batch is run at alpha 0, and
    ``task loss(alpha 0) - task loss(seed on)`` per example is the seed's own contribution, free
    of host learning (both forwards see the same host weights)."""
    params = [p for p in slot.seed_parameters() if p.requires_grad]
    inputs, targets = inputs.to(device), targets.to(device)
    with probe_mode(model, device):
        with slot.forced(on_mode(slot), 1.0):
            out = first_tensor(model(inputs))
            objective = per_example_loss(out, targets, loss_fn).mean()
            if distill is not None:
                soft, temperature, weight = distill
                objective = distill_objective(objective, out, soft, temperature, weight)
            grads: list[Tensor | None] = list(
                torch.autograd.grad(objective, params, allow_unused=True)
            )
            on = paired_losses(out.detach(), targets, loss_fn)
        with slot.forced(Mode.IDENTITY, 0.0), torch.no_grad():
            off = paired_losses(first_tensor(model(inputs)), targets, loss_fn)
    return grads, Paired.of(off - on)


def slot_facts(slot: SeedSlot) -> dict[str, float]:
    """G0's slot evidence, read from the slot itself: free (no seed, not a fossil, not embargoed,
    not terminated) and embargoed."""
    blocked = slot.stage in (EMBARGOED, TERMINATED) or slot.fossil  # a merged fossil: no seed
    return {
        ev.SLOT_FREE: float(slot.seed is None and not blocked),
        ev.SLOT_EMBARGOED: float(slot.stage == EMBARGOED),
    }


def on_mode(slot: SeedSlot) -> Mode:
    """The mode that puts the slot's seed fully in the forward (alpha 1, input still detached)."""
    if slot.fossil:
        return Mode.FOSSIL
    return Mode.CONVEX if slot.blend_mode == pb.BLEND_MODE_CONVEX else Mode.RESIDUAL


def isolation_probe(
    model: nn.Module,
    slots: Mapping[str, SeedSlot],
    active: list[SlotState],
    device: torch.device,
    batch: ProbeBatch,
    loss_fn: LossFn | None,
) -> dict[str, IsolationReport]:
    """One probe forward with every active seed at alpha 1: autograd isolation check per seed,
    ``||s|| / ||h||`` per seed, shadow loss (seeds on) and host loss (seeds off)."""
    inputs, targets = split_batch(batch)
    host = host_parameters(model, slots)
    modes = {s.slot: (on_mode(s.slot), 1.0) for s in active}
    reports: dict[str, IsolationReport] = {}
    with probe_mode(model, device):
        out, taps = run_probe(model, inputs, modes, [s.slot for s in active], grad=True)
        for state in active:
            tap = taps.get(state.slot.slot_id)
            if tap is None or tap.z is None:
                continue
            reports[state.slot.slot_id] = autograd_probe(tap.z, host)
            hn = float(tap.h.detach().float().norm())
            zn = float(tap.z.detach().float().norm())
            state.norm_ratio = zn / hn if hn > 0 else math.inf
            state.norm_ratio_n = int(tap.h.shape[0]) if tap.h.dim() else 1
        shadow = probe_loss(out.detach(), targets, loss_fn)
        if shadow is not None and targets is not None:
            _record_losses(model, inputs, targets, out.detach(), float(shadow), active, loss_fn)
    return reports


def _record_losses(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    out: Tensor,
    shadow: float,
    active: list[SlotState],
    loss_fn: LossFn | None,
) -> None:
    """Each active seed's shadow loss (``out``: the forward with the seeds on), the host loss
    (a forward with them off) and, for a TRAINING seed, the paired per-example gain."""
    off = {s.slot: (Mode.IDENTITY, None) for s in active}
    base, _ = run_probe(model, inputs, off, [], grad=False)
    host_loss = probe_loss(base, targets, loss_fn)
    gain = Paired.of(paired_losses(base, targets, loss_fn) - paired_losses(out, targets, loss_fn))
    for state in active:
        if math.isnan(state.seed_loss_first):
            state.seed_loss_first = shadow
        state.seed_loss_last = shadow
        state.host_probe_loss = float(host_loss) if host_loss is not None else math.nan
        if state.slot.stage == TRAINING:
            state.probe_gain = gain


def _is_classes(out: Tensor, targets: Tensor) -> bool:
    return (
        out.dim() == 2
        and targets.dim() == 1
        and not targets.is_floating_point()
        and targets.shape[0] == out.shape[0]
    )


Arm = tuple[Tensor, Tensor | None]  # per-pair losses, per-example hits (class targets)


def _arm(
    model: nn.Module,
    device: torch.device,
    validation: tuple[Tensor, Tensor],
    loss_fn: LossFn | None,
    size: int,
) -> Arm:
    """The paired losses (and hits for class targets) of one arm, ``size`` examples a forward."""
    inputs, targets = validation
    losses: list[Tensor] = []
    hits: list[Tensor] = []
    parts = max(1, math.ceil(int(inputs.shape[0]) / size))  # near-equal: never a lone example
    for x, y in zip(
        torch.tensor_split(inputs, parts), torch.tensor_split(targets, parts), strict=True
    ):
        x, y = x.to(device), y.to(device)
        out = first_tensor(model(x))
        losses.append(paired_losses(out, y, loss_fn).float().cpu())
        if _is_classes(out, y):
            hits.append((out.argmax(dim=1) == y).float().cpu())
    return torch.cat(losses), torch.cat(hits) if hits else None


def _paired_metrics(on: Arm, off: Arm) -> dict[str, float]:
    (loss_on, hit_on), (loss_off, hit_off) = on, off
    m = {ev.CF_LOSS_ON: float(loss_on.mean()), ev.CF_LOSS_OFF: float(loss_off.mean())}
    if hit_on is not None and hit_off is not None:
        d = hit_on - hit_off
        gain = Paired.of(d)
        m[ev.CF_ACC_ON] = float(hit_on.mean())
        m[ev.CF_ACC_OFF] = float(hit_off.mean())
        m[ev.VAL_ACC] = m[ev.CF_ACC_ON]
        m[ev.CF_GAIN_FIXES] = float((d > 0).sum())
        m[ev.CF_GAIN_BREAKS] = float((d < 0).sum())
        m[ev.CF_GAIN_ON_LOSS] = 0.0
    else:
        gain = Paired.of(loss_off - loss_on)
        m[ev.VAL_LOSS] = m[ev.CF_LOSS_ON]
        m[ev.CF_GAIN_ON_LOSS] = 1.0
    m[ev.CF_GAIN], m[ev.CF_GAIN_SE], m[ev.CF_GAIN_N] = gain.mean, gain.se, float(gain.n)
    return m


def paired_validation(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    validation: ProbeBatch,
    loss_fn: LossFn | None,
    chunk: int = 4096,
) -> dict[str, float]:
    """Validation metrics at alpha 1 and alpha 0 on the same examples, with the paired gain.

    The gain per example is ``correct(alpha 1) - correct(alpha 0)`` for class-index targets
    (with the counts of fixes and breaks), else ``loss(alpha 0) - loss(alpha 1)``
    (``cf_gain_on_loss`` = 1; a batch-mean ``loss_fn`` gives one pair per part of a forward's
    batch, see :func:`paired_losses`);
    ``cf_gain`` is its mean, ``cf_gain_se`` its standard error, ``cf_gain_n`` the pairs. With
    BatchNorm, each arm runs with statistics re-estimated on the validation inputs under its own
    forward (:mod:`actors.execution.recalibrate`); the host's are restored exactly."""
    inputs, targets = split_batch(validation)
    if targets is None or int(inputs.shape[0]) == 0:
        return {}
    norms = tracked_norms(model)
    arms: dict[bool, Arm] = {}
    with probe_mode(model, device), torch.no_grad(), kept_norms(norms):
        for on in (True, False):
            mode, alpha = (on_mode(slot), 1.0) if on else (Mode.IDENTITY, 0.0)
            with slot.forced(mode, alpha):
                recalibrate(model, norms, inputs, chunk, device)
                arms[on] = _arm(model, device, (inputs, targets), loss_fn, chunk)
    return _paired_metrics(arms[True], arms[False])


def counterfactual(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    evaluate: Callable[[nn.Module], tuple[float, float]] | None,
    validation: ProbeBatch | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:
    """Validation loss/accuracy with the seed at alpha 1 and at alpha 0: the paired per-example
    gain on ``validation`` when given, and the user's ``evaluate`` (which then wins for the
    ``cf_loss_*``/``cf_acc_*`` values) when given."""
    if slot.seed is None:
        return {}
    m: dict[str, float] = {}
    if validation is not None:
        m.update(paired_validation(model, slot, device, validation, loss_fn))
    if evaluate is not None:
        with probe_mode(model, device):
            with slot.forced(on_mode(slot), 1.0):
                loss1, acc1 = evaluate(model)
            with slot.forced(Mode.IDENTITY, 0.0):
                loss0, acc0 = evaluate(model)
        m.update(
            {
                ev.CF_LOSS_ON: float(loss1),
                ev.CF_ACC_ON: float(acc1),
                ev.CF_LOSS_OFF: float(loss0),
                ev.CF_ACC_OFF: float(acc0),
                ev.VAL_ACC: float(acc1),
            }
        )
    if m.get(ev.CF_GAIN_ON_LOSS) == 1.0:
        m[ev.VAL_LOSS] = m[ev.CF_LOSS_ON]
    return m


def reset_check(
    model: nn.Module,
    state: SlotState,
    device: torch.device,
    batch: ProbeBatch | None,
) -> dict[str, float]:
    """G5 evidence: nothing left in the slot and its output equals the host output exactly."""
    slot = state.slot
    m = {
        ev.MODULE_RELEASED: float(slot.seed is None),
        ev.HOOKS_RELEASED: float(not slot.hook_handles),
        ev.OPTIMIZER_RELEASED: float(state.optimizer is None),
        "params_remaining": float(sum(p.numel() for p in slot.parameters())),
    }
    if batch is not None:
        inputs, _ = split_batch(batch)
        with probe_mode(model, device):
            _, taps = run_probe(model, inputs, {}, [slot], grad=False)
        tap = taps.get(slot.slot_id)
        if tap is not None:
            delta = float((tap.out - tap.h).abs().max()) if tap.h.numel() else 0.0
            m[ev.RESET_MAX_ABS_DELTA] = delta
            m["output_equals_host"] = float(delta == 0.0 and tap.out.dtype == tap.h.dtype)
    return m


LATENCY_REPS = 5  # timed pairs of probe forwards behind ``latency_overhead``


def latency_overhead(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    batch: ProbeBatch,
    reps: int = LATENCY_REPS,
) -> float:
    """Relative forward-time overhead of the seed, ``(t_on - t_off) / t_off``: the best of
    ``reps`` no-grad probe forwards with the seed fully on and off, taken in alternation (on a
    shared machine a burst of contention then slows both sides, not one side's every rep)."""
    inputs, _ = split_batch(batch)

    def timed(mode: Mode) -> float:
        with slot.forced(mode, 1.0), torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

    seed_on = on_mode(slot)
    with probe_mode(model, device):
        timed(Mode.IDENTITY), timed(seed_on)  # warm-up
        pairs = [(timed(Mode.IDENTITY), timed(seed_on)) for _ in range(reps)]
    off, on = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return max(0.0, (on - off) / off) if off > 0 else 0.0
