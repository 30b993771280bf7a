"""An actor's inbox: the frame field, what a host knows of an input, and the checks every input
passes before a core sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import anyio.lowlevel

from bus import Bus, Consumer, Entry, Handled, processed_key
from contracts import ContractError, Envelope, Verifier, streams
from contracts.config import KasminaConfig
from contracts.errors import Stale

from .finite import finite

__all__ = [
    "FRAME",
    "VERIFY_CHUNK",
    "Checked",
    "IdPair",
    "Meta",
    "Prepared",
    "committed_before",
    "committed_ids",
    "finite",
    "inbox_consumer",
    "keyed",
    "turn_weight",
    "verify_entries",
]

FRAME = "m"  # the stream field holding the signed frame
TURN_BYTES = 64 * 1024  # a frame of this many bytes weighs one more entry between turns
VERIFY_CHUNK = 64  # entries verified between turns given to the other actors of the process
IdPair = tuple[int, int]  # an entry id, parsed (``bus.parse_id``)
Checked = Envelope | ContractError | None  # a verified entry, its refusal, or no frame field


class Prepared(NamedTuple):
    """A batch ready to be decided: the ``cut`` entries at its start to shed, and each other
    entry's verification (``checked``, in order)."""

    batch: Sequence[Entry]
    cut: int
    checked: Sequence[Checked]


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


async def committed_before(
    bus: Bus,
    group: str,
    batch: Sequence[Entry],
    ids: Sequence[IdPair],
    committed: Sequence[str],
    high: IdPair | None,
) -> set[str]:
    """Entry ids of ``batch`` (``ids``: parsed) whose message ``group`` already committed.

    ``committed``: per entry, the message id it may have been committed under
    (:func:`committed_ids`). Only an entry at or below ``high``, the highest id decided since
    the rebuild (a rewound group, a pending re-read), or any entry when there is none (the first
    batch after a rebuild), can be one; for those the commit markers (written atomically with
    each commit) are read, in one round trip."""
    found: list[str] = []
    keys: list[str] = []
    for entry, at, message_id in zip(batch, ids, committed, strict=True):
        if message_id and (high is None or at <= high):
            found.append(entry.id)
            keys.append(processed_key(entry.stream, group, message_id))
    values = await bus.get_values(keys) if keys else []
    return {entry_id for entry_id, value in zip(found, values, strict=True) if value}


def committed_ids(
    batch: Sequence[Entry], checked: Sequence[Checked], tolerance_s: float
) -> list[str]:
    """Per entry, the message id it may have been committed under ("" for none): a verified
    entry's, and a stale one's whose signature verified and that was added to the stream while
    it was fresh. That is a command decided once and delivered again by a rewound group after
    the clock tolerance: refused as stale now, yet committed then, so it must be acked without
    a record. A copy added later (an old frame written again) is no such entry: it is refused
    and recorded as stale."""
    tolerance_ms = int(tolerance_s * 1000)
    out: list[str] = []
    for entry, c in zip(batch, checked, strict=True):
        if type(c) is Envelope:
            out.append(c.id)
        elif isinstance(c, Stale) and c.verified and c.ts_ns:
            added_ms = int(entry.id.partition("-")[0])
            out.append(c.message_id if added_ms <= c.ts_ns // 1_000_000 + tolerance_ms else "")
        else:
            out.append("")
    return out


def turn_weight(entry: Entry) -> int:
    """What deciding ``entry`` weighs against the turns the shell gives the process's other
    actors: one, and one more per :data:`TURN_BYTES` of its frame (a 1 MiB telemetry batch costs
    tens of milliseconds to parse, check and fold, like some sixteen small entries)."""
    return 1 + len(entry.fields.get(FRAME, b"")) // TURN_BYTES


def keyed(item: Handled, checked: Checked) -> Handled:
    """``item`` marked with its message id: committed ids are marked with the commit, so a
    rewound group (XGROUP SETID) or a re-added entry is never decided twice."""
    if item.dedupe_key is None and isinstance(checked, Envelope):
        return Handled(item.entry, item.group, item.appends, dedupe_key=checked.id)
    return item
