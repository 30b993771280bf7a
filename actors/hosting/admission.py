"""Admission per inbox: how much of a batch an actor verifies, what it sheds as ``overloaded``,
and which rejections it records in aggregate.

A flooded inbox must not take its process down with it: an actor does a bounded amount of work
per turn, and when the entries of its inbox that it has not decided (the batch in hand plus the
group's lag) exceed ``bus.admission_backlog``, it sheds the excess: those entries are acked
without being decided and recorded as ``overloaded`` in one record per shed run, with a count.
It still verifies ``bus.admission_verify`` entries per turn, so legitimate traffic keeps being
decided during the flood, and nothing is shed while the backlog stays within the bound. On a
bus that sheds inside the store (Redis, :class:`bus.Shedding`) the shells never read the
excess: the group skips it and its record is written in the same script, and the batch in hand
is decided whole (:func:`kept_ahead`).

Rejections of one reason that reach ``bus.aggregate_from`` in one batch are recorded as one
record with a count as well (``Rejection.count``; ``entry_id`` and ``last_entry_id`` bound the
run), so a flood cannot amplify itself into the rejected stream. The counters stay exact.

The functions here are pure; the shell (``actors/shell.py``) does the reads and the commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.hosting.inbox import FRAME
from actors.hosting.recent import AnsweredRanges
from bus import Bus, Entry, Fence, Fenced, Handled, Shedding, contiguous
from contracts import ContractError, Envelope, Reason, kinds, unpack
from contracts.config import KasminaConfig

if TYPE_CHECKING:
    from actors.hosting.rejection import Rejections

__all__ = [
    "SHED_LIMIT",
    "SHED_OUTCOMES",
    "Admission",
    "Claim",
    "Run",
    "aggregated",
    "claim_of",
    "claims_of",
    "group_lag",
    "kept_ahead",
    "runs_in",
    "shed_count",
]

SHED_OUTCOMES = 16  # claimed command ids answered `overloaded` per shed run, at most
SHED_LIMIT = 4096  # entries shed inside the store per turn, at most
_COMMAND = kinds.SEED_COMMAND.encode()  # a frame claiming this kind holds these bytes verbatim


def shed_count(batch: int, lag: int | None, *, bound: int, verify: int) -> int:
    """How many entries at the start (the oldest) of a batch of ``batch`` entries to shed.

    ``lag`` is the inbox's entries not yet delivered to the group (None: unknown, nothing is
    shed). The backlog is the batch plus the lag; only its excess over ``bound`` is shed, and at
    least ``verify`` entries of the batch are always kept. Shedding the oldest, never more than
    the excess, keeps the newest ``bound`` entries of the inbox: they are all decided."""
    if lag is None or batch <= verify:
        return 0
    excess = batch + lag - bound
    return max(0, min(batch - verify, excess))


def kept_ahead(batch: int, *, bound: int) -> int:
    """How many undelivered entries of the inbox to keep when the store sheds the rest: the
    bound less the batch in hand, which is decided whole (the backlog is then the bound)."""
    return max(0, bound - batch)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a frame says about itself, unverified: message id, kind, sender."""

    message_id: str
    kind: str
    sender: str
    entry_id: str = ""  # where the frame claiming it was


def claim_of(entry: Entry, frame_field: str, max_bytes: int) -> Claim | None:
    """The command a shed entry claims to be (bounded decode, no MAC), or None if it does not
    claim to be a command: its sender can then be told it was shed. A frame over ``max_bytes``,
    or without the command kind's bytes (msgpack stores a string verbatim), is not decoded."""
    frame = entry.fields.get(frame_field)
    if frame is None or len(frame) > max_bytes or _COMMAND not in frame:
        return None
    try:
        env = unpack(frame, max_bytes=max_bytes)
    except ContractError as exc:
        mid, kind, sender = exc.message_id, exc.kind, exc.sender
    else:
        mid, kind, sender = env.id, env.kind, env.sender
    if kind != kinds.SEED_COMMAND or not mid:
        return None
    return Claim(mid, kind, sender, entry.id)


@dataclass(frozen=True, slots=True)
class Run:
    """Entries recorded as one rejection: reason, first detail, the entries in order."""

    reason: Reason
    detail: str
    entries: tuple[Entry, ...]

    @property
    def count(self) -> int:
        return len(self.entries)


def aggregated(
    batch: Sequence[Entry],
    checked: Sequence[Envelope | ContractError | None],
    *,
    threshold: int,
    skip: Collection[str] = (),
) -> dict[str, Run]:
    """Entry id -> the aggregated run it belongs to, for the rejections the verifier (or a
    missing frame) produced in this batch whose reason reaches ``threshold``; entries in
    ``skip`` (committed before: acked without a record) are in no run."""
    by_reason: dict[Reason, list[tuple[Entry, str]]] = {}
    for entry, result in zip(batch, checked, strict=True):
        if skip and entry.id in skip:
            continue
        if result is None:
            by_reason.setdefault(Reason.BAD_FRAME, []).append((entry, "no frame field"))
        elif isinstance(result, ContractError):
            by_reason.setdefault(result.code, []).append((entry, result.detail))
    out: dict[str, Run] = {}
    for reason, items in by_reason.items():
        if len(items) < threshold:
            continue
        run = Run(reason, items[0][1], tuple(e for e, _ in items))
        out.update((e.id, run) for e in run.entries)
    return out


def claims_of(entries: Sequence[Entry], frame_field: str, max_bytes: int) -> list[Claim]:
    """The first :data:`SHED_OUTCOMES` commands that ``entries`` claim to be."""
    out: list[Claim] = []
    for entry in entries:
        claim = claim_of(entry, frame_field, max_bytes)
        if claim is not None:
            out.append(claim)
            if len(out) >= SHED_OUTCOMES:
                break
    return out


async def group_lag(bus: Bus, stream: str, group: str) -> int | None:
    """Entries of ``stream`` not yet delivered to ``group`` (None: unknown)."""
    for g in (await bus.info(stream, oldest=False, group=group)).groups:
        if g.name == group:
            return g.lag
    return None


class Admission:
    """The admission of one inbox read by ``group``: what to shed, and the shed entries'
    commit items; ``shed`` counts the entries shed so far.

    With ``shed_inside`` and a bus that sheds inside the store (:class:`bus.Shedding`), the
    excess is never read: the group skips it, its record written in the same script; else the
    oldest entries of a full batch are shed by the actor."""

    def __init__(
        self,
        bus: Bus,
        inbox: str,
        group: str,
        config: KasminaConfig,
        rejections: Rejections,
        *,
        shed_inside: bool = False,
    ) -> None:
        self.bus, self.inbox, self.group = bus, inbox, group
        self.config = config
        self.rejections = rejections
        self.shed = 0
        self.shedder = bus if shed_inside and isinstance(bus, Shedding) else None
        #: runs shed, so that a rewound group's redelivery of them is not decided
        self.answered = AnsweredRanges(config.security.clock_tolerance_s)

    async def cut(self, batch: Sequence[Entry], fence: Fence | None = None) -> int:
        """How many entries at the start of ``batch`` to shed. The lag is read only when the
        batch is full, the one case where the inbox may hold more than it. A bus that sheds
        inside the store sheds the undelivered excess there instead (nothing to cut)."""
        cfg = self.config.bus
        if len(batch) < cfg.batch:
            return 0
        if self.shedder is not None:
            await self._shed_ahead(len(batch), fence)
            return 0
        if len(batch) <= cfg.admission_verify or not contiguous(batch):
            return 0  # a re-read or claim may have gaps: its record could name ids not shed
        lag = await group_lag(self.bus, self.inbox, self.group)
        return shed_count(len(batch), lag, bound=cfg.admission_backlog, verify=cfg.admission_verify)

    async def _shed_ahead(self, in_hand: int, fence: Fence | None) -> int:
        """The inbox's undelivered entries but the newest :func:`kept_ahead` skipped by the
        group inside the store, with their record (one ``overloaded`` run); the number shed."""
        assert self.shedder is not None
        bound = self.config.bus.admission_backlog
        shed = await self.shedder.shed(
            self.inbox, self.group,
            keep=kept_ahead(in_hand, bound=bound), limit=SHED_LIMIT, claims=SHED_OUTCOMES,
            needle=_COMMAND, max_bytes=self.config.security.max_message_bytes, field=FRAME,
        )  # fmt: skip
        if not shed.count:
            return 0
        limit = self.config.security.max_message_bytes
        claims = claims_of(shed.claims, FRAME, limit)
        appends = self.rejections.record_range(
            Reason.OVERLOADED, f"inbox backlog over {bound} entries",
            (shed.stream, shed.first, shed.last, shed.count), claims,
        )  # fmt: skip
        try:
            skipped = await self.shedder.skip(shed, self.group, appends, fence=fence)
        except Fenced:  # another host holds the lease: nothing was written
            self.rejections.uncount(Reason.OVERLOADED, shed.count)
            raise
        if not skipped:
            self.rejections.uncount(Reason.OVERLOADED, shed.count)  # the group moved: not shed
            return 0
        self.shed += shed.count
        self.answered.add(shed.first, shed.last)
        return shed.count

    def shed_items(
        self, entries: Sequence[Entry], batch: Sequence[Entry] | None = None
    ) -> list[Handled]:
        """``entries`` acked undecided, recorded as ``overloaded``: one record per run of them
        that follow each other in ``batch`` (a contiguous one; default: ``entries`` are one
        run), so a record covers exactly the ids shed; an unverified outcome for the first
        commands they claim to be rides on the first record."""
        self.shed += len(entries)
        limit = self.config.security.max_message_bytes
        detail = f"inbox backlog over {self.config.bus.admission_backlog} entries"
        claims = claims_of(entries, FRAME, limit)
        items: list[Handled] = []
        for run in runs_in(entries, entries if batch is None else batch):
            self.answered.add(run[0].id, run[-1].id)
            appends = self.rejections.record_run(Reason.OVERLOADED, detail, run, claims)
            claims = []
            items += [Handled(e, self.group, appends if n == 0 else ()) for n, e in enumerate(run)]
        return items


def runs_in(entries: Sequence[Entry], batch: Sequence[Entry]) -> list[list[Entry]]:
    """``entries`` (a subsequence of ``batch``) split into runs of entries adjacent in
    ``batch``."""
    position = {e.id: n for n, e in enumerate(batch)}
    runs: list[list[Entry]] = []
    for entry in entries:
        at = position[entry.id]
        if runs and position[runs[-1][-1].id] == at - 1:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs
