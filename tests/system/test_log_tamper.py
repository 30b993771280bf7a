"""A Redis writer without keys doctors a live run's streams: actors keep serving, nothing is
folded twice, and `status` / `replay` report what happened instead of crashing or being fooled."""

from __future__ import annotations

import pytest

from actors.assemble import live_verifier
from actors.client import KasminaClient, Outcome
from actors.shell import FRAME, ActorShell
from bus import Bus
from contracts import KeyRing, Signer, streams
from kasmina.commands.status import collect
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
