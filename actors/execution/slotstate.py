"""Execution-side bookkeeping of one slot: seed optimizer, blend ramp, and gate evidence."""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from actors.execution.blueprints import SlotShape, param_count
from actors.execution.evidence import Paired, pooled_tail
from actors.execution.slot import SeedSlot
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.memory import SeedMemory

_EVIDENCE = (
    "grad_steps",
    "training_steps",
    "grad_sum",
    "grad_min",
    "grad_max",
    "grad_last",
    "grad_nonfinite",
    "output_nonfinite",
    "isolation_violations",
    "isolation_probes",
    "seed_loss_first",
    "seed_loss_last",
    "host_probe_loss",
    "norm_ratio",
    "norm_ratio_n",
    "shadow_gains",
    "probe_gain",
    "phase",
    "phase_changes",
)


_PAIRS = ("shadow_gains", "probe_gain")


def loaded_evidence(saved: Any) -> dict[str, Any]:
    """A checkpoint's measurements (:meth:`SlotState.saved_evidence`), typed and checked; an
    older checkpoint without them gives none. Raises ``ValueError``/``TypeError`` if malformed."""
    if saved is None:
        return {}
    if not isinstance(saved, dict):
        raise TypeError("evidence is not a mapping")
    counts = {f.name for f in fields(SlotState) if isinstance(f.default, int)}
    out: dict[str, Any] = {}
    for name in _EVIDENCE:
        if name in saved and name not in _PAIRS:
            out[name] = int(saved[name]) if name in counts else float(saved[name])
    out["shadow_gains"] = [
        Paired(int(n), float(t), float(q)) for n, t, q in saved.get("shadow_gains", [])
    ]
    gain = saved.get("probe_gain")
    out["probe_gain"] = (
        None if gain is None else Paired(int(gain[0]), float(gain[1]), float(gain[2]))
    )
    out["attach_evidence"] = {str(k): float(v) for k, v in saved.get("attach_evidence", {}).items()}
    return out


@dataclass
class SlotState:
    """What execution tracks for a slot besides the module itself."""

    slot: SeedSlot
    optimizer: torch.optim.Optimizer | None = None
    shape: SlotShape | None = None
    params: dict[str, float] = field(default_factory=dict)
    stage_since: int = 0
    blend_start: int = 0
    blend_steps: int = 0
    schedule: int = pb.ALPHA_SCHEDULE_LINEAR
    paused: bool = False
    artifact: str = ""  # the blueprint artifact the seed was germinated from ("" = none)
    forward_since: int | None = None  # last step at whose end a seed entered the forward
    activation_bytes: int = 0  # the seed's activation estimate (memory budget)
    # evidence, reset when a new seed is attached
    grad_steps: int = 0
    training_steps: int = 0
    grad_sum: float = 0.0
    grad_min: float = math.inf
    grad_max: float = 0.0
    grad_last: float = 0.0
    grad_nonfinite: int = 0
    output_nonfinite: int = 0
    isolation_violations: int = 0
    isolation_probes: int = 0
    seed_loss_first: float = math.nan
    seed_loss_last: float = math.nan
    host_probe_loss: float = math.nan
    norm_ratio: float = math.nan
    norm_ratio_n: int = 0  # examples of the probe batch the ratio was measured on
    # the seed's own contribution in TRAINING: paired shadow-loss gains per step batch, and the
    # latest probe batch's (used when no step batch was given)
    shadow_gains: list[Paired] = field(default_factory=list)
    probe_gain: Paired | None = None
    # alpha hysteresis: the blend phase (stages.EARLY/MID/LATE) and how often it changed
    phase: int = 0
    phase_changes: int = 0
    attach_evidence: dict[str, float] = field(default_factory=dict)

    def reset_evidence(self) -> None:
        """Forget every measurement (a new seed starts from scratch)."""
        fresh = SlotState(self.slot)
        for name in _EVIDENCE:
            setattr(self, name, getattr(fresh, name))
        self.attach_evidence = {}

    def saved_evidence(self) -> dict[str, Any]:
        """Every measurement as a checkpoint keeps it (:func:`loaded_evidence` reads it back):
        a resumed run's gates judge the seed on what it measured before."""
        out: dict[str, Any] = {n: getattr(self, n) for n in _EVIDENCE if n not in _PAIRS}
        out["shadow_gains"] = [[p.n, p.total, p.squares] for p in self.shadow_gains]
        gain = self.probe_gain
        out["probe_gain"] = None if gain is None else [gain.n, gain.total, gain.squares]
        out["attach_evidence"] = dict(self.attach_evidence)
        return out

    def load_evidence(self, saved: dict[str, Any]) -> None:
        """Take the measurements :func:`loaded_evidence` checked (none: start from scratch)."""
        self.reset_evidence()
        for name, value in saved.items():
            setattr(self, name, value)

    def release(self, device: torch.device) -> None:
        """Drop the slot's seed, optimizer and hooks (and give cached device memory back)."""
        self.slot.release()
        self.optimizer = None
        self.shape = None
        self.paused = False
        self.artifact = ""
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def retire(self, memory: SeedMemory, step: int) -> None:
        """Take a culled seed out of the slot: its tensors are released at once, or held by
        ``memory`` until ``release_ttl_steps`` have passed (the slot is empty either way)."""
        seed, optimizer = self.slot.seed, self.optimizer
        if memory.ttl <= 0 or seed is None:
            self.release(memory.device)
            return
        self.slot.release()
        self.optimizer = None
        self.shape = None
        self.paused = False
        memory.hold(self.slot.slot_id, seed, optimizer, step)

    def record_grad(self, norm: float, *, training: bool) -> None:
        """Fold one seed gradient norm into the running statistics."""
        if not math.isfinite(norm):
            self.grad_nonfinite += 1
            return
        self.grad_steps += 1
        self.training_steps += int(training)
        self.grad_sum += norm
        self.grad_last = norm
        self.grad_min = min(self.grad_min, norm)
        self.grad_max = max(self.grad_max, norm)

    def metrics(self, step: int) -> dict[str, float]:
        """Named measurements for reports and gate evidence (booleans as 0.0/1.0); the gate
        metrics carry the names of :mod:`contracts.evidence`."""
        slot = self.slot
        seed = slot.seed
        m = {
            "stage_steps": float(max(0, step - self.stage_since)),
            ev.ALPHA: float(slot.alpha),
            ev.SEED_PARAMS: float(param_count(seed)) if seed is not None else 0.0,
            "has_seed": float(seed is not None),
            "paused": float(self.paused),
            "grad_steps": float(self.grad_steps),
            ev.TRAINING_STEPS: float(self.training_steps),
            "grad_norm_last": self.grad_last,
            "grad_norm_mean": self.grad_sum / self.grad_steps if self.grad_steps else 0.0,
            ev.GRAD_NORM_MIN: self.grad_min if self.grad_steps else 0.0,
            ev.GRAD_NORM_MAX: self.grad_max,
            "grad_nonfinite": float(self.grad_nonfinite),
            ev.GRAD_FINITE: float(self.grad_nonfinite == 0),
            "output_nonfinite": float(self.output_nonfinite),
            ev.OUTPUT_FINITE: float(self.output_nonfinite == 0),
            ev.NONFINITE_COUNT: float(self.output_nonfinite + self.grad_nonfinite),
            ev.ISOLATION_VIOLATIONS: float(self.isolation_violations),
            "isolation_probes": float(self.isolation_probes),
            "blend_phase": float(self.phase),
            "blend_phase_changes": float(self.phase_changes),
        }
        for name, value in (
            (ev.SEED_LOSS_INITIAL, self.seed_loss_first),
            (ev.SEED_LOSS_FINAL, self.seed_loss_last),
            ("host_probe_loss", self.host_probe_loss),
            (ev.SEED_HOST_NORM_RATIO, self.norm_ratio),
        ):
            if not math.isnan(value):
                m[name] = value
        if not math.isnan(self.norm_ratio):
            m[ev.SEED_HOST_NORM_N] = float(self.norm_ratio_n)
        gain = self.seed_loss_gain()
        if gain is not None:
            m[ev.SEED_LOSS_GAIN] = gain.mean
            m[ev.SEED_LOSS_GAIN_SE] = gain.se
            m[ev.SEED_LOSS_GAIN_N] = float(gain.n)
        m.update(self.attach_evidence)
        return m

    def seed_loss_gain(self) -> Paired | None:
        """G1's statistic: the pooled paired gains of the latest half of the TRAINING step
        batches, else those of the latest probe batch, else None (no measurement yet)."""
        if self.shadow_gains:
            return pooled_tail(self.shadow_gains)
        return self.probe_gain
