"""An actor's inbox: the frame field, what a host knows of an input, and the checks every input
passes before a core sees it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from bus import Bus, Consumer
from contracts import Envelope, streams
from contracts.config import KasminaConfig

__all__ = ["FRAME", "Meta", "finite", "inbox_consumer"]

FRAME = "m"  # the stream field holding the signed frame


@dataclass(frozen=True, slots=True)
class Meta:
    """What the host knows about an input besides its body."""

    envelope: Envelope
    entry_id: str
    stream: str


def inbox_consumer(
    bus: Bus, config: KasminaConfig, run: str, inbox: str, group: str, name: str
) -> Consumer:
    """The consumer loop of an actor's inbox with the config's delivery parameters."""
    cfg = config.bus
    return Consumer(
        bus,
        inbox,
        group,
        name,
        batch=cfg.batch,
        block_ms=cfg.block_ms,
        lease_ms=cfg.lease_ms,
        max_deliveries=cfg.max_deliveries,
        dead_stream=streams.dead_letter(run),
    )


def _finite_value(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Message):
        return finite(value)
    return True


def finite(message: Message) -> bool:
    """True if every float field (recursively, maps included) is finite."""
    for desc, value in message.ListFields():
        if desc.type in (desc.TYPE_DOUBLE, desc.TYPE_FLOAT):
            values: Iterable[object] = value if desc.is_repeated else [value]
        elif desc.message_type is None:
            continue
        elif desc.message_type.GetOptions().map_entry:
            values = value.values()
        else:
            values = value if desc.is_repeated else [value]
        if not all(_finite_value(v) for v in values):
            return False
    return True
