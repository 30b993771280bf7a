"""Kasmina's composition root: wiring (actors, bus, keys), ``kasmina.attach`` and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Attached", "StepConfirmation", "attach"]

if TYPE_CHECKING:
    from kasmina.integration import Attached, StepConfirmation, attach


def __getattr__(name: str) -> Any:
    """``attach``, ``Attached`` and ``StepConfirmation`` load torch, so they are imported on first use (the CLI's other
    commands start without torch)."""
    if name in __all__:
        from kasmina import integration as module

        return getattr(module, name)
    raise AttributeError(f"module 'kasmina' has no attribute {name!r}")
