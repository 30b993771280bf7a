"""A Redis writer without keys doctors a live run's streams: actors keep serving, nothing is
folded twice, and `status` / `replay` report what happened instead of crashing or being fooled."""

from __future__ import annotations

import time

import pytest

from actors.assemble import live_verifier
from actors.client import KasminaClient, Outcome
from actors.eventlog import BadEntry, read_log, read_verified
from actors.shell import FRAME, ActorShell
from bus import Bus, Entry
from bus.testing import purge_prefix
from contracts import KeyRing, Reason, Signer, Verifier, streams
from kasmina.commands.status import collect
from leyline import pb
from scenarios.cluster import Cluster, running_cluster

SLOT = "l0.s0"
pytestmark = pytest.mark.anyio


def _seed_shell(cl: Cluster) -> ActorShell:
    (shell,) = [s for s in cl.supervisor.shells if s.logic.name == f"seed:{SLOT}"]
    return shell


async def _cull(cl: Cluster) -> Outcome:
    outcome = await cl.client.command(SLOT, "cull", wait=True, timeout_s=20)
    assert isinstance(outcome, Outcome)
    return outcome


async def test_a_duplicated_genuine_event_is_quarantined(bus: Bus, run_id: str) -> None:
    """A copy of a genuine lifecycle event appended to the log is set aside by the rebuild (its
    own stream, counted by status); the SeedActor keeps serving and its sequence stays whole."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        await _cull(cl)
        log = await bus.range(streams.events(run_id))
        (genuine,) = [e for e in log if e.fields.get("kind") == b"lifecycle.refused"]
        await bus.publish(streams.events(run_id), dict(genuine.fields))  # no key needed
        shell = _seed_shell(cl)
        await shell.rebuild()  # what a restart or a bus failure does
        assert len(shell.quarantined) == 1
        assert shell.regressions == 0  # nothing the host committed is missing
        second = await _cull(cl)  # still serving, on a state that folded the event once
        assert second.kind == "lifecycle.refused"
        status = await collect(bus, run_id, ring)
        assert status["quarantined"] == 1
        assert (await bus.info(streams.quarantine(run_id))).length == 1


async def _regressions(bus: Bus, run_id: str) -> list[str]:
    entries = await bus.range(streams.quarantine(run_id))
    return [e.fields.get("reason", b"").decode() for e in entries]


async def test_a_deleted_event_log_never_rolls_a_live_actor_back(bus: Bus, run_id: str) -> None:
    """The whole event log deleted, then a rebuild (a restart of serving, a lost lease): the
    SeedActor keeps the state it committed, records the loss, and its next event follows on; the
    gap it leaves in the log is what status then reports."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        for _ in range(3):
            await _cull(cl)
        shell = _seed_shell(cl)
        seq = shell.logic.state.seq
        await bus.delete(streams.events(run_id))
        await shell.rebuild()
        assert shell.logic.state.seq == seq and shell.regressions == 1
        assert await _regressions(bus, run_id) == ["log_regressed"]
        await _cull(cl)
        assert shell.logic.state.seq == seq + 1
        status = await collect(bus, run_id, ring)
        assert status["quarantined"] >= 1 and status["log_regressions"] == 1


async def test_a_cut_tail_of_the_log_never_rolls_a_live_actor_back(bus: Bus, run_id: str) -> None:
    """The actor's last two events deleted from the log (XDEL, their state digests kept), then a
    rebuild: the rebuilt state falls short of the committed one, which is kept and the loss
    recorded; a rebuild on an untouched log records nothing."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no XDEL from outside")
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        for _ in range(3):
            await _cull(cl)
        shell = _seed_shell(cl)
        await shell.rebuild()
        assert shell.regressions == 0
        seq = shell.logic.state.seq
        log = await bus.range(streams.events(run_id))
        refused = [e.id for e in log if e.fields.get("kind") == b"lifecycle.refused"]
        await client.xdel(streams.events(run_id), *refused[-2:])
        await shell.rebuild()
        assert shell.logic.state.seq == seq and shell.regressions == 1
        assert await _regressions(bus, run_id) == ["log_regressed"]


async def test_status_counts_rejections_from_signed_records_only(bus: Bus, run_id: str) -> None:
    """Unsigned entries written to the rejected stream are counted as unverified, not under the
    reason code they claim."""
    ring = KeyRing.generate()
    for _ in range(5):
        await bus.publish(streams.rejected(run_id), {"reason": b"bad_signature", FRAME: b"x"})
    status = await collect(bus, run_id, ring)
    assert status["rejected"] == {"unverified_record": 5}


async def test_foreign_inboxes_in_the_registry_are_never_routed_to(bus: Bus, run_id: str) -> None:
    """A registry member naming another run's inbox (one SADD by anyone who can write to Redis)
    receives none of this run's fanned-out orders; the run's own instances still do."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        registry = streams.registry(run_id, "execution")
        own = streams.inbox(run_id, "execution", "0")
        foreign = streams.inbox("someone-else", "execution", "0")
        await bus.register(registry, own, foreign, "kasmina:{x}:not-an-inbox")
        routes = await _seed_shell(cl).router.inboxes("execution", None)
        assert routes == [own]


async def test_a_command_from_a_free_text_sender_is_rejected(bus: Bus, run_id: str) -> None:
    """A signed command whose sender name carries a newline is rejected (reason invalid), and
    the slot's state does not move."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        config = cl.config
        odd = KasminaClient(
            bus, run_id, Signer(ring, "tamiyo\nadmin"), live_verifier(bus, run_id, ring, config)
        )
        outcome = await odd.command(SLOT, "cull", wait=True, timeout_s=20)
        assert isinstance(outcome, Outcome) and outcome.kind == "rejection"
        assert outcome.message.reason == "invalid"


async def _unverified(bus: Bus, run: str, ring: KeyRing) -> list[str]:
    """The reasons of the event log's entries that do not verify, as read and counted by status."""
    _, bad = await read_verified(bus, streams.events(run), ring)
    status = await collect(bus, run, ring)
    assert (status["unverified_events"], status["quarantined"]) == (len(bad), 0)
    return [b["reason"] for b in bad]


async def _events_of(bus: Bus, run: str, kind: bytes) -> list[Entry]:
    return [e for e in await bus.range(streams.events(run)) if e.fields.get("kind") == kind]


async def test_a_genuine_event_of_another_run_is_quarantined_not_folded(
    bus: Bus, run_id: str
) -> None:
    """Two runs share a key file; a genuine event copied from the other run's log into this
    run's log (no key needed) does not verify there (``wrong_run``): the rebuild folds nothing of
    it, the SeedActor keeps serving with its sequence whole, and status counts the entry."""
    ring, other = KeyRing.generate(), f"{run_id}-other"
    try:
        async with running_cluster(bus, run=other, slots=[SLOT], ring=ring) as cl:
            for _ in range(3):  # the other run's slot is three events ahead of this one
                await _cull(cl)
        foreign = (await _events_of(bus, other, b"lifecycle.refused"))[-1]
        async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
            await _cull(cl)
            shell = _seed_shell(cl)
            seq, digest = shell.logic.state.seq, shell.logic.digests()
            await bus.publish(streams.events(run_id), dict(foreign.fields))
            await shell.rebuild()
            assert await _unverified(bus, run_id, ring) == ["wrong_run"]
            assert shell.regressions == 0
            assert (shell.logic.state.seq, shell.logic.digests()) == (seq, digest)
            assert (await _cull(cl)).kind == "lifecycle.refused"
            assert shell.logic.state.seq == seq + 1
    finally:
        await purge_prefix(bus, streams.prefix(other))


async def test_an_event_of_an_earlier_run_of_the_same_name_is_quarantined_not_folded(
    bus: Bus, run_id: str
) -> None:
    """A run name used again with the same key file: a genuine event of the earlier run (stamped
    minutes before this run's events, by the same sender) appended to this run's log is out of its
    sender's time order (``stale``): the rebuild sets it aside instead of folding it (it moved the
    slot before), and replay and status count it."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        await _cull(cl)
        shell = _seed_shell(cl)
        seq, digest = shell.logic.state.seq, shell.logic.digests()
        last = (await _events_of(bus, run_id, b"lifecycle.refused"))[-1]
        env = Verifier(ring, replay=True).open(last.fields[FRAME], stream=last.stream)
        earlier = pb.LifecycleRefused.FromString(env.body)
        earlier.seq = seq + 1  # the next event of the slot, as far as its sequence goes
        stamp = time.time_ns() - 300 * 10**9  # the earlier run, five minutes ago
        frame = Signer(ring, env.sender).seal(env.kind, earlier, stream=last.stream, ts_ns=stamp)
        await bus.publish(streams.events(run_id), {FRAME: frame, "kind": b"lifecycle.refused"})
        await shell.rebuild()
        assert (shell.logic.state.seq, shell.logic.digests()) == (seq, digest)
        assert len(shell.quarantined) == 1 and shell.regressions == 0
        _, bad = await read_verified(bus, streams.events(run_id), ring)
        assert [b["reason"] for b in bad] == ["stale"]
        assert (await _cull(cl)).kind == "lifecycle.refused"
        assert shell.logic.state.seq == seq + 1


async def test_an_event_signed_with_a_retired_key_is_quarantined_not_folded(
    bus: Bus, run_id: str
) -> None:
    """The run's key was rotated and the old one expired; an event signed with the old key after
    its expiry (a leaked retired key), numbered as the slot's next event, does not verify
    (``expired_key``): the rebuild folds nothing of it, the actor's next event takes that number,
    and status counts the entry."""
    now = time.time_ns()
    retired = KeyRing.generate(now_ns=now - 3_600 * 10**9)
    ring = retired.rotate(grace_s=0, now_ns=now - 600 * 10**9)  # the old key expired 10 min ago
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        await _cull(cl)
        shell = _seed_shell(cl)
        seq, digest = shell.logic.state.seq, shell.logic.digests()
        genuine = (await _events_of(bus, run_id, b"lifecycle.refused"))[-1]
        env = Verifier(ring, replay=True).open(genuine.fields[FRAME], stream=streams.events(run_id))
        forged = pb.LifecycleRefused()
        forged.ParseFromString(env.body)
        forged.seq = seq + 1
        frame = Signer(retired, env.sender).seal(
            "lifecycle.refused", forged, stream=streams.events(run_id)
        )
        await bus.publish(streams.events(run_id), {**genuine.fields, FRAME: frame})
        await shell.rebuild()
        assert await _unverified(bus, run_id, ring) == ["expired_key"]
        assert shell.regressions == 0
        assert (shell.logic.state.seq, shell.logic.digests()) == (seq, digest)
        await _cull(cl)
        assert shell.logic.state.seq == seq + 1  # the forged number is not taken


def _fresh_seed_shell(bus: Bus, run_id: str, ring: KeyRing, slot: str) -> ActorShell:
    """A fresh SeedActor shell for ``slot`` verifying with ``ring``."""
    from actors.assemble import build_shells
    from contracts import KasminaConfig

    config = KasminaConfig()
    (shell,) = build_shells(
        bus=bus, run=run_id, config=config, signer=Signer(ring, "seed"),
        verifier=live_verifier(bus, run_id, ring, config), actors=["seed"], slots=[slot],
    )  # fmt: skip
    return shell


async def test_a_log_whose_older_events_a_revoked_key_signed_is_not_served(
    bus: Bus, run_id: str
) -> None:
    """Events signed by a key later rotated out and then revoked no longer verify: every
    SeedActor rebuilding with that ring refuses to serve (UnverifiableLog, nothing written),
    the one whose own events go on under the new key and the one that wrote nothing since the
    rotation alike, instead of deciding on an old state and numbering its events again from 1;
    with the ring before the revocation both rebuild their whole state."""
    from actors.hosting.quarantine import UnverifiableLog

    idle = "l1.s0"
    first = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT, idle], ring=first) as cl:
        await _cull(cl)  # bootstrap + refusal of each slot, signed by the first key
        outcome = await cl.client.command(idle, "cull", wait=True, timeout_s=20)
        assert isinstance(outcome, Outcome)
    rotated = first.rotate(grace_s=600)
    async with running_cluster(bus, run=run_id, slots=[SLOT, idle], ring=rotated) as cl:
        await _cull(cl)  # SLOT's next event, signed by the new key; the idle slot writes none
    revoked = rotated.revoke(first.active.id)
    events = (await bus.info(streams.events(run_id))).length
    for slot in (SLOT, idle):
        with pytest.raises(UnverifiableLog, match=r"entries signed by a key this key ring revokes"):
            await _fresh_seed_shell(bus, run_id, revoked, slot).rebuild()
    assert (await bus.info(streams.events(run_id))).length == events
    for slot in (SLOT, idle):
        shell = _fresh_seed_shell(bus, run_id, rotated, slot)
        await shell.rebuild()
        assert shell.quarantined == set()


async def test_a_writers_frame_under_a_revoked_key_id_does_not_stop_an_actor(
    bus: Bus, run_id: str
) -> None:
    """A Redis writer who appends a frame naming a revoked key's id (its MAC not that key's:
    the writer has no key) cannot stop the actors: the rebuild skips it like any forgery."""
    first = KeyRing.generate()
    ring = first.rotate(grace_s=600)
    revoked = ring.revoke(first.active.id)
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        await _cull(cl)
    forged = KeyRing.generate()  # the writer's own key, under the revoked key's id
    fake = Signer(forged, "seed").seal(
        "lifecycle.refused", pb.LifecycleRefused(slot=SLOT), stream=streams.events(run_id)
    )
    fake = fake.replace(forged.active.id.encode(), first.active.id.encode())
    await bus.publish(streams.events(run_id), {FRAME: bytes(fake), "kind": b"lifecycle.refused"})
    bad = [
        r async for r in read_log(bus, streams.events(run_id), Verifier(revoked, replay=True))
        if isinstance(r, BadEntry)
    ]  # fmt: skip
    assert [(b.reason, b.signed) for b in bad] == [(Reason.REVOKED_KEY, False)]
    shell = _fresh_seed_shell(bus, run_id, revoked, SLOT)
    await shell.rebuild()  # the forged entry skipped: the actor serves
    assert shell.rebuilds == 1


async def test_entries_of_one_sender_from_hosts_a_tolerance_apart_are_not_stale(
    bus: Bus, run_id: str
) -> None:
    """Processes signing under one name (a run's `kasmina run` processes) on hosts each within
    the clock tolerance of their readers, 70 s apart from each other: their interleaved
    entries all read (the order check allows twice the tolerance); one more than that behind
    is refused as ``stale``."""
    ring, stream = KeyRing.generate(), streams.events(run_id)
    signer, now = Signer(ring, f"kasmina-run:{run_id}"), time.time_ns()
    stamps = [now + 35 * 10**9, now - 35 * 10**9, now + 35 * 10**9, now - 86 * 10**9]
    for ts in stamps:
        frame = signer.seal("lifecycle.refused", pb.LifecycleRefused(slot=SLOT), stream=stream,
                            ts_ns=ts)  # fmt: skip
        await bus.publish(stream, {FRAME: frame, "kind": b"lifecycle.refused"})
    read = [r async for r in read_log(bus, stream, Verifier(ring, replay=True))]
    assert [isinstance(r, BadEntry) for r in read] == [False, False, False, True]
    assert isinstance(read[3], BadEntry) and read[3].reason is Reason.STALE
    await purge_prefix(bus, streams.prefix(run_id))
