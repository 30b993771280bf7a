"""Paired evidence: sums of paired differences, per-example (or per-part) losses that pair up
across two forwards of the same batch, and the per-example verdicts of one arm of the paired
validation (losses, and hits where the targets are classes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution.probing import LossFn, first_tensor
from contracts import evidence as ev


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


def binary_threshold(targets: Tensor, loss_fn: LossFn | None) -> float | None:
    """The decision threshold of a one-output binary classifier, or None when ``targets`` are
    not binary classes (integer or boolean, every value 0 or 1). The output is taken as a logit
    (class 1 when above 0), unless ``loss_fn`` is the probability form of binary cross-entropy
    (``F.binary_cross_entropy``, ``nn.BCELoss``): class 1 when above 0.5."""
    if targets.is_floating_point() or targets.is_complex() or targets.numel() == 0:
        return None
    if not bool(((targets == 0) | (targets == 1)).all()):
        return None
    if loss_fn is F.binary_cross_entropy or isinstance(loss_fn, nn.BCELoss):
        return 0.5
    return 0.0


def hits(out: Tensor, targets: Tensor, threshold: float | None) -> Tensor | None:
    """Per-example correctness, or None when the targets are not classes of ``out``: the argmax
    over two or more output columns for class-index targets, and, for one output per example
    (shape ``(n,)`` or ``(n, 1)``) with binary targets, the output above ``threshold``."""
    n = int(targets.shape[0]) if targets.dim() else -1
    if out.dim() == 0 or int(out.shape[0]) != n or targets.is_floating_point():
        return None
    if out.dim() == 2 and out.shape[1] >= 2 and targets.dim() == 1:
        return out.argmax(dim=1) == targets
    if threshold is not None and out.dim() <= 2 and out.numel() == n and targets.numel() == n:
        return (out.reshape(-1) > threshold).long() == targets.reshape(-1).long()
    return None


Arm = tuple[Tensor, Tensor | None]  # per-pair losses, per-example hits (class targets)


def arm(
    model: nn.Module,
    device: torch.device,
    validation: tuple[Tensor, Tensor],
    loss_fn: LossFn | None,
    size: int,
) -> Arm:
    """The paired losses (and hits for class targets) of one arm, ``size`` examples a forward."""
    inputs, targets = validation
    threshold = binary_threshold(targets, loss_fn)
    losses: list[Tensor] = []
    found: list[Tensor] = []
    classes = True
    parts = max(1, math.ceil(int(inputs.shape[0]) / size))  # near-equal: never a lone example
    for x, y in zip(
        torch.tensor_split(inputs, parts), torch.tensor_split(targets, parts), strict=True
    ):
        x, y = x.to(device), y.to(device)
        out = first_tensor(model(x))
        losses.append(paired_losses(out, y, loss_fn).float().cpu())
        h = hits(out, y, threshold)
        classes = classes and h is not None
        if h is not None:
            found.append(h.float().cpu())
    return torch.cat(losses), torch.cat(found) if classes and found else None


def paired_metrics(on: Arm, off: Arm) -> dict[str, float]:
    """The validation metrics of the two arms and their paired gain: accuracy (with fixes and
    breaks) for class targets, else the loss decrease with the seed-off loss it is relative to."""
    (loss_on, hit_on), (loss_off, hit_off) = on, off
    m = {ev.CF_LOSS_ON: float(loss_on.mean()), ev.CF_LOSS_OFF: float(loss_off.mean())}
    m[ev.CF_LOSS_N] = float(loss_on.numel())
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
        m[ev.CF_GAIN_BASE] = m[ev.CF_LOSS_OFF]
        m[ev.CF_GAIN_ON_LOSS] = 1.0
    m[ev.CF_GAIN], m[ev.CF_GAIN_SE], m[ev.CF_GAIN_N] = gain.mean, gain.se, float(gain.n)
    return m
