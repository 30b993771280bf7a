"""The error an order is refused with."""

from __future__ import annotations

from collections.abc import Mapping


class OrderError(Exception):
    """An order that cannot be applied (acked with ok=False, the reason and any evidence)."""

    def __init__(self, reason: str, evidence: Mapping[str, float] | None = None) -> None:
        super().__init__(reason)
        self.evidence = dict(evidence or {})


_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error: ``torch.OutOfMemoryError``, ``MemoryError`` or an
    allocator's ``RuntimeError`` (device "out of memory", CPU "can't allocate memory")."""
    import torch  # local: this module stays importable without torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(t in text for t in _OOM_TEXT)


def torch_control_flow() -> tuple[type[BaseException], ...]:
    """Exceptions torch raises through user code to steer itself, never a failure of the code
    they pass through: non-reentrant activation checkpointing stops a recompute early by
    raising through every module of the checkpointed region (a seed's forward included). A
    handler that catches a seed's errors re-raises these."""
    from torch.utils import checkpoint  # local: this module stays importable without torch

    found = getattr(checkpoint, "_StopRecomputationError", None)
    return (found,) if isinstance(found, type) and issubclass(found, BaseException) else ()
