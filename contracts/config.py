"""KasminaConfig: every threshold the design names, loadable from TOML and the environment.

Precedence (highest first): explicit keyword overrides, environment variables
``KASMINA__SECTION__FIELD`` (e.g. ``KASMINA__GATES__MIN_TRAINING_STEPS=50``), the TOML file, defaults.
"""

from __future__ import annotations

import os
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)


class GateThresholds(BaseModel):
    """Thresholds of gates G0-G5 (docs/design.md §3)."""

    model_config = _STRICT

    # G0 sanity
    max_seed_params: int = Field(1_000_000, ge=1)
    max_seed_memory_bytes: int = Field(64 * 2**20, ge=1)
    germination_max_abs_delta: float = Field(0.0, ge=0.0)
    # G1 gradient health
    min_training_steps: int = Field(100, ge=0)
    grad_norm_vanishing: float = Field(1e-7, ge=0.0)
    grad_norm_exploding: float = Field(1e3, gt=0.0)
    max_isolation_violations: int = Field(0, ge=0)
    # the seed's own shadow-loss gain (alpha 0 minus seed on, same examples): its lower
    # confidence bound must exceed this (absolute loss units)
    min_seed_loss_improvement: float = 0.0
    # G2 stability
    alpha_complete: float = Field(1.0, gt=0.0, le=1.0)
    loss_spike_sigma: float = Field(4.0, gt=0.0)
    # G3 interface
    seed_host_norm_ratio_min: float = Field(0.0, ge=0.0)
    seed_host_norm_ratio_max: float = Field(10.0, gt=0.0)
    max_latency_overhead: float = Field(0.5, ge=0.0)  # relative slot overhead
    # a seed adding at most this much time per probe forward costs no latency (G3 and G4's cost):
    # on a tiny host the slot's fixed cost is a large fraction of a forward of microseconds
    latency_floor_us: float = Field(1000.0, ge=0.0)
    counterfactual_loss_tolerance: float = Field(0.02, ge=0.0)
    # G4 system impact
    # paired per-example validation gain (alpha=1 minus alpha=0): its lower confidence bound
    # must exceed this (accuracy as a fraction; for non-class targets a fraction of the seed-off
    # validation loss, cf_gain_base: unit- and reduction-free)
    min_improvement: float = 0.0
    # gain charged per host-sized parameter addition, and per unit of relative latency (in the
    # gain's units: accuracy, or the fraction of the seed-off loss for non-class targets)
    param_cost: float = Field(0.002, ge=0.0)
    latency_cost: float = Field(0.002, ge=0.0)
    # G1 and G4: one-sided z of the lower confidence bounds (1.645: 95 %)
    confidence_z: float = Field(1.645, ge=0.0)
    # G1 and G4: the fewest pairs a continuous (loss) gain is judged on; fewer fail the check
    min_gain_pairs: int = Field(30, ge=2)
    max_regression: float = Field(0.01, ge=0.0)  # vs the pre-germination baseline
    max_open_strikes: int = Field(0, ge=0)
    # G5 reset
    reset_max_abs_delta: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> GateThresholds:
        if self.grad_norm_vanishing >= self.grad_norm_exploding:
            raise ValueError("grad_norm_vanishing must be below grad_norm_exploding")
        if self.seed_host_norm_ratio_min > self.seed_host_norm_ratio_max:
            raise ValueError("seed_host_norm_ratio_min must not exceed seed_host_norm_ratio_max")
        return self


class LifecycleConfig(BaseModel):
    """Stage budgets (in training steps) and the blend schedule."""

    model_config = _STRICT

    training_steps: int = Field(200, ge=1)  # TRAINING budget before G1 is requested
    blend_steps: int = Field(200, ge=1)  # alpha ramp 0 -> 1
    shadowing_steps: int = Field(50, ge=1)
    probationary_steps: int = Field(100, ge=1)
    embargo_steps: int = Field(200, ge=0)
    reset_retry_steps: int = Field(10, ge=1)  # a failed G5 / reset is retried after this many steps
    # an order refused because not every rank held it at its step (one rank's bus cut) is sent
    # again under a new id, 1, 2, 4, then every 8 barrier intervals later, at most this many
    # times (16: 111 intervals in all); then the refusal counts as a failure
    order_retries: int = Field(16, ge=0)
    alpha_schedule: Literal["linear", "cosine", "sigmoid"] = "linear"
    blend_mode: Literal["residual", "convex"] = "residual"


class SafetyConfig(BaseModel):
    """Circuit breakers and emergency stop."""

    model_config = _STRICT

    strikes_to_open: int = Field(3, ge=1)
    strike_window_steps: int = Field(100, ge=1)
    # the runtime's sampled isolation probe: a leaking seed strikes once per probe
    probe_every_steps: int = Field(25, ge=1)
    cooldown_steps: int = Field(200, ge=1)
    emergency_stop_open_fraction: float = Field(0.5, gt=0.0, le=1.0)
    emergency_stop_min_open: int = Field(2, ge=1)  # capped at the number of known slots
    rollback_on_isolation: bool = True  # a breaker opened by a leak rolls the host back
    reject_storm_count: int = Field(100, ge=1)  # rejects inside the window raise a signal
    reject_storm_window_s: float = Field(10.0, gt=0.0)
    reject_storm_quiet_s: float = Field(60.0, ge=0.0)  # after a signal, none for this long

    @model_validator(mode="after")
    def _breaker_can_open(self) -> SafetyConfig:
        span = (self.strikes_to_open - 1) * self.probe_every_steps
        if span >= self.strike_window_steps:
            raise ValueError(
                f"a leaking seed probed every {self.probe_every_steps} steps strikes"
                f" {self.strikes_to_open} times only over {span + 1} steps, more than"
                f" strike_window_steps={self.strike_window_steps}: the breaker could never open"
                " (lower probe_every_steps or strikes_to_open, or widen the window)"
            )
        return self


class TelemetryConfig(BaseModel):
    """Three-tier aggregation."""

    model_config = _STRICT

    region_ratio: int = Field(32, ge=32)  # raw metrics per region summary (at least 32:1)
    global_ratio: int = Field(32, ge=2)  # region summaries per global summary
    rate_per_s: float = Field(50_000.0, gt=0.0)  # token bucket per region
    burst: int = Field(100_000, ge=1)
    prometheus_port: int | None = None


class BarrierConfig(BaseModel):
    """Epoch-aligned barriers across ranks."""

    model_config = _STRICT

    frequency: int = Field(10, ge=1)  # barrier every N steps; orders apply on these boundaries
    world_size: int = Field(1, ge=1)
    timeout_steps: int = Field(20, ge=1)  # a rank missing this many steps after the barrier
    timeout_s: float = Field(30.0, gt=0.0)  # ... or this long after the barrier's proposal
    tick_s: float = Field(0.25, gt=0.0)  # how often the BarrierActor's timer reads the clock


class SecurityConfig(BaseModel):
    """Envelope checks."""

    model_config = _STRICT

    clock_tolerance_s: float = Field(60.0, gt=0.0)  # also how long a nonce outlives its stamp
    max_message_bytes: int = Field(1 << 20, ge=256)
    key_grace_s: float = Field(3600.0, ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        """``nonce_ttl_s`` (a nonce now expires at its own message's deadline) is accepted and
        ignored with a warning, so a configuration written for an earlier version still loads."""
        if isinstance(data, Mapping) and "nonce_ttl_s" in data:
            warnings.warn(
                "security.nonce_ttl_s is no longer used: each nonce expires at its message's "
                "stamp + security.clock_tolerance_s",
                DeprecationWarning,
                stacklevel=2,
            )
            data = {k: v for k, v in data.items() if k != "nonce_ttl_s"}
        return data


class BusConfig(BaseModel):
    """Delivery parameters."""

    model_config = _STRICT

    batch: int = Field(256, ge=1)
    block_ms: int = Field(1000, ge=1)
    lease_ms: int = Field(30_000, ge=1)
    max_deliveries: int = Field(5, ge=1)
    telemetry_maxlen: int = Field(100_000, ge=1000)
    # markers of the message ids each actor committed (Handled.dedupe_key, written atomically with
    # the commit): at least the freshness window (2 x security.clock_tolerance_s), after which
    # the verifier refuses the message as stale anyway
    processed_ttl_s: float = Field(300.0, gt=0.0)
    # ownership lease of each actor: one process serves it, others stand by; after a crash a
    # standby (or the restarted process) takes over once the lease expires
    owner_ttl_s: float = Field(10.0, gt=0.0)
    inbox_retention_s: float = Field(
        3600.0, ge=0.0
    )  # acked inbox entries older than this are trimmed
    trim_every_s: float = Field(60.0, gt=0.0)
    # admission per inbox (actors/hosting/admission.py): an inbox whose undecided entries exceed
    # admission_backlog sheds the excess as `overloaded` (still verifying admission_verify
    # entries per turn); rejections of one reason reaching aggregate_from in one batch are
    # recorded as one record with a count
    admission_backlog: int = Field(1024, ge=1)
    admission_verify: int = Field(32, ge=1)
    aggregate_from: int = Field(8, ge=2)


class ArtifactsConfig(BaseModel):
    """Blueprint artifacts: where they are stored and the kernel cache on each execution device."""

    model_config = _STRICT

    # "" = the run's own Redis; a directory path or file:///path; or a bus URL (redis://…)
    store: str = ""
    cache_bytes: int = Field(256 * 2**20, ge=0)  # loaded kernels kept per device (LRU budget)
    cache_ttl_s: float = Field(3600.0, gt=0.0)  # a kernel unused this long is dropped
    # larger payloads are refused before they are hashed or loaded (fetched all the same: set
    # it near your largest blueprint's payload)
    max_artifact_bytes: int = Field(1 << 30, ge=1)


class KasminaConfig(BaseModel):
    """All of Kasmina's tunables."""

    model_config = _STRICT

    gates: GateThresholds = Field(default_factory=GateThresholds)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    barrier: BarrierConfig = Field(default_factory=BarrierConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)

    @model_validator(mode="after")
    def _dedupe_window(self) -> KasminaConfig:
        if self.bus.processed_ttl_s < 2 * self.security.clock_tolerance_s:
            raise ValueError(
                "bus.processed_ttl_s must be at least twice security.clock_tolerance_s "
                "(a committed message must stay marked while it could still verify)"
            )
        return self

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> KasminaConfig:
        """Load from an optional TOML file, then ``KASMINA__SECTION__FIELD`` variables, then overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        env = os.environ if env is None else env
        for name, raw in env.items():
            if not name.startswith("KASMINA__"):
                continue
            parts = name[len("KASMINA__") :].lower().split("__")
            if len(parts) != 2:
                raise ValueError(f"{name}: expected KASMINA__SECTION__FIELD")
            data.setdefault(parts[0], {})[parts[1]] = raw
        for dotted, value in (overrides or {}).items():
            section, _, field = dotted.partition(".")
            data.setdefault(section, {})[field] = value
        return cls.model_validate(data)
