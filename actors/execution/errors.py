"""The error an order is refused with."""

from __future__ import annotations

from collections.abc import Mapping


class OrderError(Exception):
    """An order that cannot be applied (acked with ok=False, the reason and any evidence)."""

    def __init__(self, reason: str, evidence: Mapping[str, float] | None = None) -> None:
        super().__init__(reason)
        self.evidence = dict(evidence or {})
