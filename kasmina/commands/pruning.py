"""``kasmina publish prune --masks FILE``: sign a pruning order and send it to every rank.

The masks file is JSON: ``{"module name": [1, 0, 1, ...], ...}`` with one keep flag (1/0 or
true/false) per unit of the module. The order goes to every attached rank's execution inbox and
applies at ``--at-step`` (default: the attached trainers' latest step + :data:`LEAD_STEPS`, so
every rank holds it in time). With ``--wait`` it reads the run's pruning stream until every rank
it was sent to has acknowledged it.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio

from actors.attached import trainers
from actors.client import KasminaClient
from actors.eventlog import LogRecord, read_log
from actors.hosting import Router
from bus import Bus
from contracts import Verifier, streams
from kasmina.common import CliError
from kasmina.wiring import Wiring
from leyline import pb

LEAD_STEPS = 20  # default distance from the trainers' latest step to the order's step
MAX_UNITS = 1 << 20  # flags per module a masks file may hold


def load_masks(path: str | None) -> list[pb.UnitMask]:
    """The masks of a JSON masks file (raises CliError saying what is wrong)."""
    if not path:
        raise CliError("prune needs --masks FILE")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"--masks {path}: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise CliError(f"--masks {path}: expected a non-empty object of module -> keep flags")
    masks = []
    for module, flags in doc.items():
        ok = isinstance(flags, list) and 0 < len(flags) <= MAX_UNITS
        if not ok or not all(f in (0, 1) for f in flags):  # True == 1, False == 0
            raise CliError(f"--masks {path}: {module!r} needs a list of 0/1 keep flags")
        masks.append(pb.UnitMask(module=str(module), keep=[bool(f) for f in flags]))
    return masks


async def _next_step(wiring: Wiring) -> int:
    alive = [t for t in await trainers(wiring.bus, wiring.run, wiring.ring) if t.alive]
    if not alive:
        raise CliError(f"no trainer attached to run {wiring.run}: give --at-step")
    return max(t.step for t in alive) + LEAD_STEPS


async def _mark(bus: Bus, stream: str) -> str:
    info = await bus.info(stream)
    return info.last_id if info.length else "0-0"


def counted_rank(rec: object, order_id: str, ranks: set[str], verifier: Verifier) -> str | None:
    """The rank (``execution:R``) a pruning-stream record acks ``order_id`` for, or None: only
    for a rank the order went to, and only from a key that may speak for that rank (a trainer
    key signs for its own rank only)."""
    if not isinstance(rec, LogRecord) or not isinstance(rec.message, pb.PruningAck):
        return None
    rank = f"execution:{rec.message.rank}"
    if rec.message.order_id != order_id or rank not in ranks:
        return None
    return rank if verifier.speaks_for(rec.envelope, rank) else None


async def _acks(
    wiring: Wiring, order_id: str, after: str, ranks: set[str], found: dict[str, pb.PruningAck]
) -> None:
    """Poll the pruning stream until each of ``ranks`` (the ``execution:R`` actors the order
    went to) acked the order (:func:`counted_rank`), into ``found`` (kept if the wait is cut
    off)."""
    verifier = Verifier(wiring.ring, replay=True)
    stream = streams.pruning(wiring.run)
    while len(found) < len(ranks):
        async for rec in read_log(wiring.bus, stream, verifier, start=f"({after}"):
            after = rec.entry_id
            rank = counted_rank(rec, order_id, ranks, verifier)
            if rank is not None and isinstance(rec, LogRecord):
                found[rank] = rec.message  # type: ignore[assignment]
        await anyio.sleep(0.1)


async def _say_if_no_trainer(wiring: Wiring) -> None:
    """On stderr: no trainer ever attached to the run (the order waits in rank 0's inbox)."""
    if not await wiring.bus.members(streams.registry(wiring.run, "execution")):
        print(f"kasmina publish: no trainer has attached to run {wiring.run}: the order waits in "
              "rank 0's inbox for one (start `kasmina train`, or attach your loop)",
              file=sys.stderr)  # fmt: skip


async def publish(args: argparse.Namespace, wiring: Wiring) -> dict[str, Any]:
    """Send the order; with ``--wait``, also wait for every rank's ack."""
    masks = load_masks(args.masks)
    at = args.at_step if args.at_step is not None else await _next_step(wiring)
    if at < 0:
        raise CliError("--at-step must be >= 0")
    order = pb.PruningOrder(order_id=uuid.uuid4().hex, apply_at_step=at, masks=masks,
                            reason=args.reason)  # fmt: skip
    inboxes = await Router(wiring.bus, wiring.run).inboxes("execution", None)
    await _say_if_no_trainer(wiring)
    client = KasminaClient(wiring.bus, wiring.run, wiring.signer(args.sender), wiring.verifier())
    mark = await _mark(wiring.bus, streams.pruning(wiring.run))
    for inbox in inboxes:
        await client.publish(inbox, order)
    out: dict[str, Any] = {"order_id": order.order_id, "action": "prune", "apply_at_step": at,
                           "ranks": len(inboxes), "modules": [m.module for m in masks]}  # fmt: skip
    if args.wait:
        out.update(await _waited(args, wiring, order.order_id, mark, inboxes))
    return out


async def _waited(
    args: argparse.Namespace, wiring: Wiring, order_id: str, mark: str, inboxes: list[str]
) -> dict[str, Any]:
    """``acks`` and ``result`` after waiting for every rank's ack (at most ``--timeout``; the
    acks that did arrive are kept, and ``missing`` names the ranks that did not answer)."""
    found: dict[str, pb.PruningAck] = {}
    ranks = {name for name in map(streams.inbox_actor, inboxes) if name is not None}
    with anyio.move_on_after(args.timeout):
        await _acks(wiring, order_id, mark, ranks, found)
    acks = sorted(found.values(), key=lambda a: a.rank)
    out: dict[str, Any] = {"acks": [
        {"rank": a.rank, "ok": a.ok, "error": a.error, "applied_at_step": a.applied_at_step,
         "pruned_units": a.pruned_units, "total_units": a.total_units}
        for a in acks
    ]}  # fmt: skip
    if len(acks) < len(inboxes):
        out["result"] = "timed_out"
        out["missing"] = sorted(ranks - set(found)) or sorted(inboxes)
    else:
        out["result"] = "accepted" if all(a.ok for a in acks) else "refused"
    return out
