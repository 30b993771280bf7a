"""Who is attached to a run: the latest heartbeat of every actor, trainers (ranks) included.

Every actor shell and every ExecutionActor (one per trainer rank, ``execution:RANK``) appends a
signed ``actor.heartbeat`` to the run's heartbeat stream every couple of seconds; an ExecutionActor's
beat carries the training step its runtime last reached. An actor is alive while its latest beat is
younger than :data:`ALIVE_S`.

Every rank's step confirmations (its ``exec.ack`` of each order it applied or refused) are on the
run's ``confirmations`` stream: :func:`confirmations` reads them, :func:`confirmed_by_rank` sums
them up per rank for ``kasmina status``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from actors.eventlog import BadEntry, read_log
from actors.logic import MAX_STEP
from bus import Bus
from contracts import KeyRing, Verifier, streams
from leyline import pb

__all__ = ["ALIVE_S", "Trainer", "confirmations", "confirmed_by_rank", "heartbeats", "trainers"]

ALIVE_S = 10.0


@dataclass(frozen=True, slots=True)
class Trainer:
    """One trainer rank as its heartbeats show it."""

    rank: str
    process: str
    step: int
    ts_ns: int
    alive: bool

    def as_dict(self, now_ns: int) -> dict[str, object]:
        """The ``status --json`` form."""
        return {
            "rank": self.rank,
            "process": self.process,
            "alive": self.alive,
            "last_step": self.step,
            "last_heartbeat_s": round(max(0, now_ns - self.ts_ns) / 1e9, 1),  # (stamped ahead: 0)
        }


async def heartbeats(
    bus: Bus, run: str, ring: KeyRing, *, now_ns: int | None = None
) -> dict[str, pb.Heartbeat]:
    """The latest verified heartbeat per actor name. A beat counts only from a key that may speak
    for the actor it names (``Verifier.speaks_for``: a trainer key beats for its own rank only),
    and only stamped (beat and envelope) no later than the clock tolerance ahead of ``now_ns``:
    a beat from the future would keep an actor "alive" for as long as its stamp lies ahead."""
    latest: dict[str, pb.Heartbeat] = {}
    tolerance = int(Verifier(ring).tolerance_s * 1e9)
    ahead = (time.time_ns() if now_ns is None else now_ns) + tolerance
    async for beat, stamped in _beats(bus, run, ring):
        if stamped <= ahead:
            latest[beat.actor] = beat
    return latest


async def _beats(bus: Bus, run: str, ring: KeyRing) -> AsyncIterator[tuple[pb.Heartbeat, int]]:
    """Every verified heartbeat of ``run`` from a key that may speak for the actor it names
    (``Verifier.speaks_for``), with the later of its two stamps (beat and envelope)."""
    verifier = Verifier(ring, replay=True)
    async for record in read_log(bus, streams.heartbeats(run), verifier):
        if isinstance(record, BadEntry) or not isinstance(record.message, pb.Heartbeat):
            continue
        beat, env = record.message, record.envelope
        if verifier.speaks_for(env, beat.actor):
            yield beat, max(beat.ts_ns, env.ts_ns)


async def last_step(bus: Bus, run: str, ring: KeyRing, *, before_ns: int) -> int:
    """The highest step any trainer rank of ``run`` beat with before ``before_ns`` (-1: none),
    from verified beats only (a trainer key beats for its own rank only)."""
    reached = -1
    async for beat, stamped in _beats(bus, run, ring):
        if beat.actor.startswith("execution:") and stamped < before_ns and beat.step < MAX_STEP:
            reached = max(reached, int(beat.step))
    return reached


async def trainers(
    bus: Bus, run: str, ring: KeyRing, *, now_ns: int | None = None
) -> list[Trainer]:
    """Every trainer rank that ever beat on the run, latest beat first per rank, by rank."""
    now = time.time_ns() if now_ns is None else now_ns
    out = []
    for name, beat in sorted((await heartbeats(bus, run, ring, now_ns=now)).items()):
        kind, _, rank = name.partition(":")
        if kind != "execution" or int(beat.step) >= MAX_STEP:  # (no run reaches 2**53 steps)
            continue
        alive = (now - beat.ts_ns) / 1e9 < ALIVE_S
        out.append(Trainer(rank, beat.process, int(beat.step), int(beat.ts_ns), alive))
    return out


async def confirmations(
    bus: Bus,
    run: str,
    verifier: Verifier,
    *,
    slot: str | None = None,
    order_id: str | None = None,
) -> list[pb.ExecutionAck]:
    """The verified step confirmations of the run, oldest first (only ``slot``'s, or only
    ``order_id``'s, when given); entries that do not verify, and confirmations whose key may
    not speak for the rank they name (a trainer key signs for its own rank only), are skipped.
    ``verifier``: one in replay mode (the MAC is checked, not freshness)."""
    out: list[pb.ExecutionAck] = []
    async for record in read_log(bus, streams.confirmations(run), verifier):
        if isinstance(record, BadEntry):
            continue
        ack = record.message
        if not isinstance(ack, pb.ExecutionAck):
            continue
        if not verifier.speaks_for(record.envelope, f"execution:{ack.rank}"):
            continue
        if (slot is None or ack.slot == slot) and (order_id is None or ack.order_id == order_id):
            out.append(ack)
    return out


def confirmed_by_rank(acks: list[pb.ExecutionAck]) -> dict[str, dict[str, Any]]:
    """Per rank: how many orders it applied, how many it refused, and its latest confirmation
    (the one at the highest step). An order counts once per rank: a copy of a confirmation
    (anyone who can write to Redis can append one) changes nothing."""
    once: dict[tuple[str, str], pb.ExecutionAck] = {}
    for a in acks:
        once.setdefault((str(a.rank), a.order_id), a)
    counts = Counter((rank, bool(a.ok)) for (rank, _), a in once.items())
    latest: dict[str, pb.ExecutionAck] = {}
    for (rank, _), a in once.items():  # stream order: a later one wins a tie
        if rank not in latest or a.applied_at_step >= latest[rank].applied_at_step:
            latest[rank] = a
    return {
        rank: {
            "confirmed": counts[(rank, True)],
            "refused": counts[(rank, False)],
            "last": {
                "order_id": ack.order_id,
                "slot": ack.slot,
                "stage": pb.SeedLifecycleStage.Name(ack.stage).removeprefix("SEED_STAGE_"),
                "step": int(ack.applied_at_step),
                "ok": bool(ack.ok),
            },
        }
        for rank, ack in sorted(latest.items())
    }
