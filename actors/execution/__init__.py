"""Torch execution: seed slots, blueprints, gradient isolation, seed optimisers, the runtime."""

from actors.execution.blueprints import (
    ArtifactError,
    Blueprint,
    ProbeResult,
    SlotShape,
    blueprint_names,
    get_blueprint,
    load_artifact,
    param_count,
    register_blueprint,
    save_artifact,
    shape_probe,
    signed_off,
    unregister_blueprint,
)
from actors.execution.config import RuntimeConfig, default_device
from actors.execution.errors import OrderError
from actors.execution.isolation import IsolationReport, autograd_probe, graph_walk, isolation_signal
from actors.execution.optim import kd_loss, teacher_logits
from actors.execution.protocol import Runtime
from actors.execution.runtime import ExecutionRuntime
from actors.execution.slot import SeedSlot, SlottedModule, host_parameters, insert_slots
from actors.execution.stages import Mode, adaptive_clip, alpha_at

__all__ = [
    "ArtifactError",
    "Blueprint",
    "ExecutionRuntime",
    "IsolationReport",
    "Mode",
    "OrderError",
    "ProbeResult",
    "Runtime",
    "RuntimeConfig",
    "SeedSlot",
    "SlotShape",
    "SlottedModule",
    "adaptive_clip",
    "alpha_at",
    "autograd_probe",
    "blueprint_names",
    "default_device",
    "get_blueprint",
    "graph_walk",
    "host_parameters",
    "insert_slots",
    "isolation_signal",
    "kd_loss",
    "load_artifact",
    "param_count",
    "register_blueprint",
    "save_artifact",
    "shape_probe",
    "signed_off",
    "teacher_logits",
    "unregister_blueprint",
]
