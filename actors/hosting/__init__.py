"""What every actor host shares: the inbox frame and its checks, the ownership lease, fan-out
routing, rejections, housekeeping (heartbeats, retention, digests) and the lifecycle states; and
the lease-driven serving loop of the shells (:mod:`actors.hosting.serving`).

:class:`~actors.shell.ActorShell` (the pure cores' host) and
:class:`~actors.execution.actor.ExecutionActor` (the torch runtime's host) are both built from
these parts; neither keeps a copy of its own.
"""

from actors.hosting.inbox import (
    FRAME,
    Meta,
    committed_before,
    finite,
    inbox_consumer,
    verify_entries,
)
from actors.hosting.lease import OwnershipLease
from actors.hosting.lifecycle import Lifecycle
from actors.hosting.logic import ActorLogic
from actors.hosting.rejection import REJECTED_MAXLEN, Rejections
from actors.hosting.routing import ROUTE_TTL_S, Router

__all__ = [
    "FRAME",
    "REJECTED_MAXLEN",
    "ROUTE_TTL_S",
    "ActorLogic",
    "Lifecycle",
    "Meta",
    "OwnershipLease",
    "Rejections",
    "Router",
    "committed_before",
    "finite",
    "inbox_consumer",
    "verify_entries",
]
