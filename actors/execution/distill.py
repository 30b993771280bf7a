"""Knowledge distillation: a seed in TRAINING learns against a teacher's soft targets.

The trainer hands the runtime a teacher (``ExecutionRuntime(..., teacher=module)``, or
``kasmina.attach(..., teacher=module)``); :func:`load_teacher` fills a module's weights from a
tensor-only file (safetensors, or a ``torch.save`` state dict read with ``weights_only=True``),
never from a pickle. On the shadow-loss path (``on_step(..., batch=...)``) the teacher's logits are
computed once per step, in eval mode under ``no_grad`` (optionally under autocast and in
micro-batches), on a forked RNG, and each distilling seed's shadow gradient becomes that of

    ``(1 - w) * task_loss + w * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``  (batchmean KL)

with ``T`` = ``kd_temperature`` and ``w`` = ``kd_weight`` (RuntimeConfig, overridable per seed
by the germinate parameters of the same names; ``kd_weight = 0`` turns it off for that seed).
The teacher never touches the host: the host stays bit-identical to a run without seeds.

Activation checkpointing of the teacher is deliberately not offered: under ``no_grad`` a forward
saves no tensor for backward, so checkpointing it has nothing to drop. ``teacher_chunk`` (a
micro-batch size) is what bounds the teacher's activation memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution.errors import OrderError
from actors.execution.probing import first_tensor

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime
    from actors.execution.slotstate import SlotState

__all__ = [
    "AUTOCAST_DTYPES",
    "KD_PARAMS",
    "check_germinate_kd",
    "check_kd_settings",
    "check_teacher",
    "distill_objective",
    "kd_settings",
    "load_teacher",
    "soft_targets",
]

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: germinate parameters that override the runtime's distillation settings for one seed
KD_PARAMS = ("kd_weight", "kd_temperature")
MAX_TEMPERATURE = 100.0


def check_kd_settings(temperature: float, weight: float, autocast: str, chunk: int) -> None:
    """Raise ``ValueError`` unless the distillation settings are usable."""
    if not (math.isfinite(temperature) and 0.0 < temperature <= MAX_TEMPERATURE):
        raise ValueError(f"kd_temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"kd_weight must be in [0, 1], got {weight}")
    if autocast and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"teacher_autocast must be '' or one of {sorted(AUTOCAST_DTYPES)}")
    if chunk < 0:
        raise ValueError(f"teacher_chunk must be >= 0, got {chunk}")


def load_teacher(
    module: nn.Module, path: str | Path, *, device: str | torch.device | None = None
) -> nn.Module:
    """Fill ``module``'s weights from a tensor-only file and return it frozen, in eval mode.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(...,
    weights_only=True)`` and must hold a ``{name: tensor}`` state dict. Every key and shape must
    match ``module`` and every value be finite, else ``ValueError`` and ``module`` is unchanged."""
    state = _read_tensors(Path(path))
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"teacher file does not fit the module: missing {missing}, extra {extra}")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(
                f"teacher tensor {name}: shape {tuple(tensor.shape)}, module has "
                f"{tuple(own[name].shape)}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"teacher tensor {name} holds non-finite values")
    module.load_state_dict(state, strict=True)
    module.requires_grad_(False)
    if device is not None:
        module.to(device)
    return module.eval()


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of code, a corrupt file: never loaded
        raise ValueError(f"teacher file {path} is not a tensor-only state dict: {exc}") from None
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"teacher file {path} is not a {{name: tensor}} state dict")
    return dict(obj)


def check_teacher(teacher: nn.Module, model: nn.Module) -> None:
    """Refuse a teacher that is not a module or shares a module or tensor with the host."""
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    host_modules = {id(m) for m in model.modules()}
    host_tensors = {id(t) for t in (*model.parameters(), *model.buffers())}
    if any(id(m) in host_modules for m in teacher.modules()) or any(
        id(t) in host_tensors for t in (*teacher.parameters(), *teacher.buffers())
    ):
        raise ValueError("the teacher shares modules or tensors with the host model")


def soft_targets(
    teacher: nn.Module,
    inputs: Tensor,
    device: torch.device,
    *,
    autocast: str = "",
    chunk: int = 0,
) -> Tensor:
    """The teacher's logits (float32) in eval mode under ``no_grad``, on a forked RNG, optionally
    under autocast and ``chunk`` examples at a time; the teacher's training flags are restored."""
    flags = [(m, m.training) for m in teacher.modules()]
    ctx = (
        torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[autocast])
        if autocast
        else nullcontext()
    )
    n = int(inputs.shape[0])
    step = chunk if chunk > 0 else max(n, 1)
    outs: list[Tensor] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        teacher.eval()
        try:
            with torch.no_grad(), ctx:
                for i in range(0, n, step):
                    outs.append(first_tensor(teacher(inputs[i : i + step].to(device))).float())
        finally:
            for m, flag in flags:
                m.training = flag
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def distill_objective(
    task_loss: Tensor, student: Tensor, teacher: Tensor, temperature: float, weight: float
) -> Tensor:
    """``(1 - w) * task_loss + w * T^2 * KL(softmax(teacher/T) || softmax(student/T))``."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, dim=-1),
        F.softmax(teacher.detach().float() / t, dim=-1),
        reduction="batchmean",
    )
    out: Tensor = (1.0 - weight) * task_loss + weight * t * t * kl
    return out


def kd_settings(rt: ExecutionRuntime, state: SlotState) -> tuple[float, float] | None:
    """``(temperature, weight)`` the seed distills with, or None (no teacher, or weight 0)."""
    if rt.teacher is None:
        return None
    cfg = rt.config
    weight = float(state.params.get("kd_weight", cfg.kd_weight))
    temperature = float(state.params.get("kd_temperature", cfg.kd_temperature))
    return (temperature, weight) if weight > 0 else None


def check_germinate_kd(
    rt: ExecutionRuntime, params: Mapping[str, float], inputs: Tensor, base: Tensor
) -> None:
    """Refuse a germination whose distillation cannot work: KD parameters without a teacher,
    out-of-range ones, or a teacher whose output does not have the model's output shape."""
    asked = [k for k in KD_PARAMS if k in params]
    if rt.teacher is None:
        if asked and float(params.get("kd_weight", 1.0)) > 0:
            raise OrderError(f"{', '.join(asked)} given but the runtime has no teacher")
        return
    cfg = rt.config
    try:
        check_kd_settings(
            float(params.get("kd_temperature", cfg.kd_temperature)),
            float(params.get("kd_weight", cfg.kd_weight)),
            "",
            0,
        )
    except ValueError as exc:
        raise OrderError(str(exc)) from None
    if float(params.get("kd_weight", cfg.kd_weight)) == 0:
        return
    probe = soft_targets(rt.teacher, inputs[:2], rt.device, autocast=cfg.teacher_autocast)
    if probe.shape[1:] != base.shape[1:]:
        raise OrderError(
            f"teacher output shape {tuple(probe.shape[1:])} differs from the model's "
            f"{tuple(base.shape[1:])}"
        )
