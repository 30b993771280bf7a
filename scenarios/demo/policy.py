"""A Tamiyo stand-in: germinate on evidence that the host is short of capacity, where it is short.

The rule is deliberately simple and explainable:

- *when*: the best validation loss has not improved by ``min_delta`` (relative) for ``patience``
  steps (a plateau), after a warm-up of ``warmup`` steps, **and** the host cannot fit its own
  training data (training loss at least ``fit_loss``). A host that has driven its training loss
  to about zero is not short of capacity (more of it would only memorise faster), so no seed is
  germinated however flat the validation loss is. In a short run whose validation loss is still
  falling when only a whole lifecycle's worth of steps, plus ``payoff_steps`` for the grown model
  to use its seed, is left, the capacity evidence alone (training loss at least ``fit_loss``)
  germinates the first seed;
- *where*: every candidate plan is scored by a capacity signal (:mod:`scenarios.demo.capacity`:
  the gradient norm a seed's zero output weights would receive at that slot, on a training batch),
  and the plan with the largest signal is germinated; the scores are quoted in the plan's reason;
- *again*: after a cull (the culled slot's embargo blocks only that slot), or after a seed
  fossilizes and the loss plateaus again, the best untried plan is germinated in its own slot,
  but only while a whole lifecycle and its payoff still fit in the remaining steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from actors.execution import stages as st


@dataclass(frozen=True)
class Plan:
    """One germination: slot, blueprint and its parameters, and why."""

    slot: str
    blueprint: str
    params: dict[str, float]
    why: str


def plans_for(d_in: int, hidden: int, lr: float) -> list[Plan]:
    """The candidate plans for a ``d_in -> hidden`` hidden layer: more units (a ``width`` seed on
    the ``units`` slot, from the layer's input, fan-out zero) or more depth (a ``residual_mlp``
    seed on the ``hidden`` slot, ``h + W2 relu(W1 h)``)."""
    width = Plan(
        "units",
        "width",
        {"hidden": float(hidden), "lr": lr, "weight_decay": 0.0},
        f"add {hidden} hidden units next to the {hidden} of the host",
    )
    depth = Plan(
        "hidden",
        "residual_mlp",
        {"hidden": float(hidden), "lr": lr, "weight_decay": 0.0},
        f"add a residual block ({hidden}->{hidden}->{hidden}) after the hidden layer",
    )
    return [width, depth]


_BUSY = frozenset({st.GERMINATED, st.TRAINING, st.BLENDING, st.SHADOWING, st.PROBATIONARY})
"""A seed's lifecycle is under way: one seed at a time. A culled slot's embargo blocks only that
slot (its seed is not retried there); the other slot may take the next-best plan."""

Scores = Callable[[Sequence[Plan]], Mapping[str, float]]
"""Capacity signal of candidate plans, by slot (larger: more capacity lacking there)."""


@dataclass
class Tamiyo:
    """Plateau and capacity detector plus candidate plans; ``decide`` returns the plan to
    germinate now, if any, and records why (also why not, once)."""

    plans: list[Plan]
    warmup: int
    patience: int
    lifecycle_steps: int
    total_steps: int
    payoff_steps: int = 0
    min_delta: float = 0.01
    fit_loss: float = 0.05
    max_germinations: int = 2
    best: float = math.inf
    best_step: int = 0
    train_loss: float = math.inf
    germinated: list[tuple[int, Plan]] = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)

    def observe(self, step: int, val_loss: float, train_loss: float = math.inf) -> None:
        """Feed one validation loss and the mean training loss since the last call."""
        self.train_loss = train_loss
        if val_loss < self.best * (1.0 - self.min_delta):
            self.best, self.best_step = val_loss, step

    def plateaued(self, step: int) -> bool:
        """True when the validation loss has stalled for ``patience`` steps after the warm-up."""
        return step >= self.warmup and step - self.best_step >= self.patience

    def short_of_capacity(self) -> bool:
        """True when the host cannot fit its training data (training loss >= ``fit_loss``)."""
        return self.train_loss >= self.fit_loss

    def _note(self, step: int, text: str) -> None:
        if not self.notes or self.notes[-1][1] != text:
            self.notes.append((step, text))

    def decide(
        self, step: int, stages: Mapping[str, int], scores: Scores | None = None
    ) -> Plan | None:
        """The plan to germinate at ``step`` given each slot's stage, or None; ``scores`` gives
        the capacity signal of the candidates (without it, the first candidate is taken)."""
        if not self._due(step, stages):
            return None
        if not self.short_of_capacity():
            self._note(
                step,
                f"validation loss flat, but the host fits its training data (train loss "
                f"{self.train_loss:.3g} < {self.fit_loss:g}): no growth",
            )
            return None
        tried = {p.slot for _, p in self.germinated}
        candidates = [
            p for p in self.plans if p.slot not in tried and stages.get(p.slot) == st.DORMANT
        ]
        if not candidates:
            return None
        plan = self._choose(step, candidates, scores)
        self.germinated.append((step, plan))
        self.best, self.best_step = math.inf, step  # a fresh plateau is needed next time
        return plan

    def _due(self, step: int, stages: Mapping[str, int]) -> bool:
        """Whether growing is considered at ``step``: a germination left, a plateau (or the last
        chance), no seed in its lifecycle, and time for another lifecycle and its payoff."""
        deadline = self.total_steps - self.lifecycle_steps - self.payoff_steps
        last_chance = not self.germinated and step >= max(deadline, self.warmup)
        if len(self.germinated) >= self.max_germinations:
            return False
        if not (self.plateaued(step) or last_chance):
            return False
        if any(stage in _BUSY for stage in stages.values()):
            return False
        return not (self.germinated and step > deadline)  # it must finish and pay off

    def _choose(self, step: int, candidates: list[Plan], scores: Scores | None) -> Plan:
        """The candidate with the largest capacity signal, its ``why`` saying what decided."""
        signal = dict(scores(candidates)) if scores is not None else {}
        best = max(candidates, key=lambda p: signal.get(p.slot, 0.0)) if signal else candidates[0]
        quoted = ", ".join(f"{p.slot} {signal[p.slot]:.3g}" for p in candidates if p.slot in signal)
        when = (
            f"validation loss flat for {step - self.best_step} steps"
            if self.plateaued(step)
            else "no plateau yet, but only a lifecycle's worth of steps and its payoff are left"
        )
        why = (
            f"{when} and train loss "
            f"{self.train_loss:.3g} >= {self.fit_loss:g} (the host cannot fit its data)"
            + (f"; capacity signal ||dL/dW_out|| {quoted}" if quoted else "")
            + f": {best.why}"
        )
        return replace(best, why=why)
