"""Pacing on every backend: a trainer's settle waits for its run's inboxes, each drained by its
own actor's group, and for nothing another writer adds."""

from __future__ import annotations

import time
import uuid

import pytest

from bus import Bus, Handled
from contracts import KeyRing, Signer, Verifier, streams
from leyline import pb
from scenarios.pacing import run_inboxes, wait_quiet
from scenarios.quiet import Settle

pytestmark = pytest.mark.anyio


async def test_a_settle_waits_for_the_runs_own_inboxes_and_groups_only(bus: Bus) -> None:
    """A phantom inbox with a group and an entry, a phantom rank in the registry and a second
    group lagging on a real inbox hold nothing up; an entry the slot's own group has not read,
    or an inbox whose actor has not created its group yet, does."""
    run = "pace" + uuid.uuid4().hex[:8]
    served = run_inboxes(run, ["s0"], 1)
    assert [g for _, g in served] == [
        "actor:seed:s0", "actor:gate", "actor:safety", "actor:telemetry", "actor:barrier",
        "actor:execution:0",
    ]  # fmt: skip
    phantom = streams.inbox(run, "seed", "phantom")
    seed_inbox = served[0][0]
    made = [phantom, *(inbox for inbox, _ in served)]
    try:
        await bus.publish(seed_inbox, {"m": b"before any group"})
        assert not await wait_quiet(bus, served, timeout_s=0.3)  # its actor has not started
        for inbox, group in served:
            await bus.ensure_group(inbox, group, start="$")
        assert await wait_quiet(bus, served, timeout_s=5.0)
        await bus.publish(phantom, {"m": b"x"})
        await bus.ensure_group(phantom, "actor:seed:phantom", start="0")
        await bus.register(streams.registry(run, "execution"), streams.inbox(run, "execution", "7"))
        await bus.ensure_group(seed_inbox, "evil", start="0")  # lags by the entry above
        assert await wait_quiet(bus, served, timeout_s=5.0)
        await bus.publish(seed_inbox, {"m": b"unread"})
        assert not await wait_quiet(bus, served, timeout_s=0.3)
        (entry,) = await bus.read(seed_inbox, "actor:seed:s0", "c", count=10, block_ms=0)
        assert not await wait_quiet(bus, served, timeout_s=0.3)  # read, not yet acked
        await bus.commit([Handled(entry, "actor:seed:s0")])
        assert await wait_quiet(bus, served, timeout_s=5.0)
    finally:
        await bus.delete(*made, streams.registry(run, "execution"))


async def test_a_trainers_settle_waits_only_for_entries_of_effect(bus: Bus) -> None:
    """With the trainer's ``Settle``, junk in an inbox (nobody's frame), a genuine frame stamped
    beyond twice the clock tolerance, a copy of a genuine frame, and entries a writer holds pending in
    the actor's group under a consumer name of its own hold nothing up, while a fresh genuine
    frame is waited for until its actor has read and acked it."""
    run = "pace" + uuid.uuid4().hex[:8]
    served = run_inboxes(run, ["s0"], 1)
    ring = KeyRing.generate()
    settle, signer = Settle(Verifier(ring)), Signer(ring, "actor:gate")
    seed_inbox, group = served[0]
    try:
        for inbox, g in served:
            await bus.ensure_group(inbox, g, start="$")
        await bus.publish(seed_inbox, {"m": b"junk, unread"})
        assert not await wait_quiet(bus, served, timeout_s=0.3)  # without a verifier it counts
        assert await wait_quiet(bus, served, timeout_s=5.0, settle=settle)
        old = signer.seal("seed.command", pb.SeedCommand(slot="s0"), stream=seed_inbox,
                          ts_ns=time.time_ns() - int(121e9))  # fmt: skip
        await bus.publish(seed_inbox, {"m": old})
        assert await wait_quiet(bus, served, timeout_s=5.0, settle=settle)
        fresh = signer.seal("seed.command", pb.SeedCommand(slot="s0"), stream=seed_inbox)
        await bus.publish(seed_inbox, {"m": fresh})
        assert not await wait_quiet(bus, served, timeout_s=0.3, settle=settle)
        entries = await bus.read(seed_inbox, group, "c", count=10, block_ms=0)
        assert not await wait_quiet(bus, served, timeout_s=0.3, settle=settle)
        await bus.commit([Handled(e, group) for e in entries])
        assert await wait_quiet(bus, served, timeout_s=5.0, settle=settle)
        await bus.publish(seed_inbox, {"m": fresh})  # a copy: its actor refuses it
        assert await wait_quiet(bus, served, timeout_s=5.0, settle=settle)
        await bus.publish(seed_inbox, {"m": b"junk, held pending by a writer"})
        held = await bus.read(seed_inbox, group, "writer", count=10, block_ms=0)
        assert len(held) == 2 and (await bus.info(seed_inbox)).groups[0].pending == 2
        assert await wait_quiet(bus, served, timeout_s=5.0, settle=settle)
        assert not await wait_quiet(bus, served, timeout_s=0.3)  # without: pending holds it
        later = signer.seal("seed.command", pb.SeedCommand(slot="s0"), stream=seed_inbox)
        await bus.publish(seed_inbox, {"m": later})  # genuine work after the held junk
        assert not await wait_quiet(bus, served, timeout_s=0.3, settle=settle)
        entries = await bus.read(seed_inbox, group, "c", count=10, block_ms=0)
        await bus.commit([Handled(e, group) for e in entries])  # the junk stays pending
        assert await wait_quiet(bus, served, timeout_s=5.0, settle=settle)
    finally:
        await bus.delete(*(inbox for inbox, _ in served), streams.registry(run, "execution"))
