"""A germination's artifact fetched on the ExecutionActor's event loop, off the training thread.

The artifact is offered to the runtime's kernel cache unverified (the cache verifies it before
loading). A missing or unreadable artifact (not in the store, a file that cannot be read, a key
a Redis writer replaced with another type) is left for the germination to refuse with its
reason; an outage of Redis is raised, so the order is read again and fetched again.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.artifacts import ArtifactError, ArtifactStore
from bus.errors import BusProtocolError
from leyline import pb

log = logging.getLogger("kasmina.execution")

__all__ = ["prefetch"]


async def prefetch(store: ArtifactStore | None, kernels: Any, order: pb.ExecutionOrder) -> None:
    """Offer ``order``'s artifact (if it germinates one) to ``kernels`` unless it holds it."""
    artifact = order.germinate.artifact_id if order.HasField("germinate") else ""
    if not artifact or store is None or kernels is None or artifact in kernels:
        return
    try:
        sealed = await store.get(artifact)
    except (ArtifactError, OSError, BusProtocolError) as exc:
        log.warning("artifact %s not fetched: %s", artifact[:12], exc)
        return
    if sealed is not None:
        kernels.offer(sealed)
