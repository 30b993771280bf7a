"""Inbox retention never drops unread or pending entries; rotated keys still verify old logs in replay."""

from __future__ import annotations

import uuid

import pytest

from actors.assemble import build_shells
from bus import Handled, open_bus
from contracts import KasminaConfig, KeyRing, Reason, Signer, Verifier, streams
from contracts.errors import ContractError
from leyline import pb


async def test_inbox_trim_keeps_pending_and_unread_entries() -> None:
    """With zero retention only acked entries before the oldest pending one are trimmed."""
    bus = open_bus(f"memory://{uuid.uuid4().hex}")
    config = KasminaConfig.load(env={}, overrides={"bus.inbox_retention_s": 0})
    ring = KeyRing.generate()
    (shell,) = build_shells(
        bus=bus,
        run="ret",
        config=config,
        signer=Signer(ring, "t"),
        verifier=Verifier(ring),
        actors=["gate"],
    )
    inbox = streams.inbox("ret", "gate")
    ids = [await bus.publish(inbox, {"m": f"{i}".encode()}) for i in range(6)]
    await bus.ensure_group(inbox, shell.group)
    got = await bus.read(inbox, shell.group, "c", count=4, block_ms=1)
    await bus.commit([Handled(e, shell.group) for e in got[:2]])  # ack 0, 1; 2, 3 stay pending
    last_ms = int(ids[-1].split("-")[0])
    removed = await shell.trim_inbox(now_ms=last_ms + 1)
    remaining = [e.id for e in await bus.range(inbox)]
    assert removed == 2
    assert remaining == ids[2:]
    await bus.close()


INBOX = streams.inbox("keys", "seed", "s")


def test_rotated_out_key_verifies_old_logs_in_replay_until_pruned() -> None:
    """An expired key no longer verifies live traffic but still verifies a recording, until pruned."""
    ring = KeyRing.generate(now_ns=0)
    old = Signer(ring, "t", clock=lambda: 0).seal(
        "seed.command", pb.SeedCommand(slot="s", cull=pb.Cull()), stream=INBOX
    )
    rotated = ring.rotate(grace_s=1, now_ns=0)
    later = 10 * 10**9
    with pytest.raises(ContractError) as info:
        Verifier(rotated, clock=lambda: later, tolerance_s=3600).open(old, stream=INBOX)
    assert info.value.code == Reason.EXPIRED_KEY
    assert (
        Verifier(rotated, clock=lambda: later, replay=True).open(old, stream=INBOX).key_id
        == ring.active.id
    )
    pruned = rotated.prune(before_ns=later)
    with pytest.raises(ContractError) as info:
        Verifier(pruned, replay=True).open(old, stream=INBOX)
    assert info.value.code == Reason.UNKNOWN_KEY
