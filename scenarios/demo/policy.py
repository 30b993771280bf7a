"""A Tamiyo stand-in: germinate when validation loss plateaus, where the host's capacity is short.

The rule is deliberately simple and explainable:

- *plateau*: the best validation loss has not improved by ``min_delta`` (relative) for
  ``patience`` steps, and at least ``earliest`` steps have run (the first seed is germinated at
  the latest when only a whole lifecycle's worth of steps is left);
- *where*: a hidden layer narrower than its input is short of **features**: add units there
  (a ``width`` seed on the ``units`` slot, new hidden units from the layer's input, fan-out zero);
  a layer at least as wide as its input is short of **nonlinearity**: add depth (a
  ``residual_mlp`` seed on the ``hidden`` slot, ``h + W2 relu(W1 h)``);
- *again*: after a cull, or after a seed fossilizes and the loss plateaus again, the next untried
  plan is germinated, but only while a whole lifecycle still fits in the remaining steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from actors.execution import stages as st


@dataclass(frozen=True)
class Plan:
    """One germination: slot, blueprint and its parameters, and why."""

    slot: str
    blueprint: str
    params: dict[str, float]
    why: str


def plans_for(d_in: int, hidden: int, lr: float) -> list[Plan]:
    """The germination plans in order of preference for a ``d_in -> hidden`` hidden layer."""
    width = Plan(
        "units",
        "width",
        {"hidden": float(hidden), "lr": lr, "weight_decay": 1e-2},
        f"hidden layer is short of features ({hidden} units for {d_in} inputs): add units",
    )
    depth = Plan(
        "hidden",
        "residual_mlp",
        {"hidden": float(hidden), "lr": lr, "weight_decay": 1e-2},
        f"hidden layer is short of nonlinearity ({hidden} units >= {d_in} inputs): add depth",
    )
    return [width, depth] if hidden < d_in else [depth, width]


_BUSY = frozenset(
    {
        st.GERMINATED,
        st.TRAINING,
        st.BLENDING,
        st.SHADOWING,
        st.PROBATIONARY,
        st.CULLED,
        st.EMBARGOED,
        st.RESETTING,
    }
)


@dataclass
class Tamiyo:
    """Plateau detector plus plan list; ``decide`` returns the plan to germinate now, if any."""

    plans: list[Plan]
    earliest: int
    patience: int
    lifecycle_steps: int
    total_steps: int
    min_delta: float = 0.01
    max_germinations: int = 2
    best: float = math.inf
    best_step: int = 0
    germinated: list[tuple[int, Plan]] = field(default_factory=list)

    def observe(self, step: int, val_loss: float) -> None:
        """Feed one validation loss."""
        if val_loss < self.best * (1.0 - self.min_delta):
            self.best, self.best_step = val_loss, step

    def plateaued(self, step: int) -> bool:
        """True when the validation loss has stalled for ``patience`` steps."""
        return step >= self.earliest and step - self.best_step >= self.patience

    def decide(self, step: int, stages: Mapping[str, int]) -> Plan | None:
        """The plan to germinate at ``step`` given each slot's stage, or None."""
        if len(self.germinated) >= self.max_germinations or step < self.earliest:
            return None
        deadline = self.total_steps - self.lifecycle_steps
        first_due = not self.germinated and step >= deadline
        if not (self.plateaued(step) or first_due):
            return None
        if any(stage in _BUSY for stage in stages.values()):
            return None
        if self.germinated and step > deadline:
            return None  # another seed would not finish its lifecycle
        tried = {p.slot for _, p in self.germinated}
        for plan in self.plans:
            if plan.slot not in tried and stages.get(plan.slot) == st.DORMANT:
                self.germinated.append((step, plan))
                self.best, self.best_step = math.inf, step  # a fresh plateau is needed next time
                return plan
        return None
