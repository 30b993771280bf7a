"""An actor's inbox: the frame field, what a host knows of an input, and the checks every input
passes before a core sees it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import isfinite

import anyio.lowlevel
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bus import Bus, Consumer, Entry
from contracts import ContractError, Envelope, Verifier, streams
from contracts.config import KasminaConfig

__all__ = ["FRAME", "VERIFY_CHUNK", "Meta", "finite", "inbox_consumer", "verify_entries"]

FRAME = "m"  # the stream field holding the signed frame
VERIFY_CHUNK = 64  # entries verified between turns given to the other actors of the process


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


async def verify_entries(
    verifier: Verifier, batch: Sequence[Entry], scope: str, *, chunk: int = VERIFY_CHUNK
) -> list[Envelope | ContractError | None]:
    """Each entry's verified envelope, the verifier's error, or None (no frame field).

    ``chunk`` entries are verified together (one nonce round trip), with a turn for the other
    actors of the process between chunks: a flooded inbox never holds the process for a whole
    batch of verifications."""
    out: list[Envelope | ContractError | None] = []
    for start in range(0, len(batch), chunk):
        if start:
            await anyio.lowlevel.checkpoint()
        part = batch[start : start + chunk]
        framed = [e.fields.get(FRAME) for e in part]
        checks = iter(
            await verifier.verify_many(
                [
                    (f, e.stream, f"{e.stream}/{e.id}")
                    for e, f in zip(part, framed, strict=True)
                    if f is not None
                ],
                scope=scope,
            )
        )
        out += [next(checks) if f is not None else None for f in framed]
    return out


_DOUBLE, _FLOAT, _MESSAGE = (
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_MESSAGE,
)
_MAP_ENTRY: dict[FieldDescriptor, bool] = {}  # field -> whether it is a map (cached)


def _is_map(desc: FieldDescriptor) -> bool:
    known = _MAP_ENTRY.get(desc)
    if known is None:
        entry = desc.message_type
        known = _MAP_ENTRY[desc] = entry is not None and bool(entry.GetOptions().map_entry)
    return known


def _all_finite(values: Iterable[object]) -> bool:
    for v in values:
        if isinstance(v, float):
            if not isfinite(v):
                return False
        elif isinstance(v, Message) and not finite(v):
            return False
    return True


def finite(message: Message) -> bool:
    """True if every float field (recursively, maps included) is finite."""
    for desc, value in message.ListFields():
        kind = desc.type
        if kind in (_DOUBLE, _FLOAT):
            if desc.is_repeated:
                if not _all_finite(value):
                    return False
            elif not isfinite(value):
                return False
        elif kind == _MESSAGE:
            if _is_map(desc):
                if not _all_finite(value.values()):
                    return False
            elif desc.is_repeated:
                if not _all_finite(value):
                    return False
            elif not finite(value):
                return False
    return True
