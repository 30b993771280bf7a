"""Every command gets an outcome on the run's outcomes stream, findable by its id (wire.md §9)."""

from __future__ import annotations

import msgpack
import pytest

from actors.client import CommandTimeout, KasminaClient, Outcome
from actors.eventlog import read_log
from actors.hosting import FRAME
from bus import Bus
from contracts import KasminaConfig, KeyRing, Signer, Verifier, streams, unpack
from leyline import pb
from scenarios.cluster import Cluster, running_cluster
from scenarios.sim import SimRuntime

A, B = "l1.s0", "l1.s1"
R = pb.OutcomeResult


def _config() -> KasminaConfig:
    """A seed that stays in TRAINING (pause, resume, adjust need a seed in a stage)."""
    return KasminaConfig.load(
        env={}, overrides={"lifecycle.training_steps": 10_000, "barrier.frequency": 5}
    )


async def _records(cl: Cluster, command_id: str) -> list[pb.CommandOutcome]:
    out = []
    verifier = cl.verifier(replay=True)
    async for record in read_log(cl.bus, streams.outcomes(cl.run), verifier):
        message = getattr(record, "message", None)
        if isinstance(message, pb.CommandOutcome) and message.command_id == command_id:
            out.append(message)
    return out


async def _walk(cl: Cluster, start: int, steps: int) -> int:
    for step in range(start, start + steps):
        await cl.step(step)
        await cl.settle()
    return start + steps


async def _send(cl: Cluster, slot: str, action: str, **params: object) -> str:
    sent = await cl.client.command(slot, action, **params)  # type: ignore[arg-type]
    assert isinstance(sent, str)
    return sent


def _shape(records: list[pb.CommandOutcome]) -> list[tuple[str, str]]:
    return [(R.Name(r.result), r.awaiting) for r in records]


async def test_every_command_kind_has_its_outcome(bus: Bus, run_id: str) -> None:
    """germinate (to TRAINING), pause, resume, adjust_optimizer, cull, terminate, emergency_stop
    and an illegal command each get the records the spec lists, under the command's id."""
    sim = SimRuntime([A, B], report_every=5, barrier_frequency=5)
    async with running_cluster(
        bus, run=run_id, slots=[A, B], runtimes=[sim], config=_config()
    ) as cl:
        step = await _walk(cl, 0, 1)
        pause_dormant = await _send(cl, B, "pause")
        illegal = await _send(cl, B, "germinate", blueprint="residual_mlp")  # B is paused
        germ = await _send(cl, A, "germinate", blueprint="residual_mlp")
        step = await _walk(cl, step, 25)
        assert await cl.stage(A) == pb.SEED_STAGE_TRAINING
        records = await _records(cl, germ)
        assert _shape(records)[:2] == [
            ("OUTCOME_ACCEPTED", "g0_evidence"),
            ("OUTCOME_ACCEPTED", "gate:G0_SANITY"),
        ]
        moved = [(r.from_stage, r.to_stage) for r in records if r.result == R.OUTCOME_TRANSITION]
        assert moved == [
            (pb.SEED_STAGE_DORMANT, pb.SEED_STAGE_GERMINATED),
            (pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TRAINING),
        ]
        assert records[0].action == "germinate" and records[0].awaiting_text
        assert {r.actor for r in records} == {f"seed:{A}"}  # who decided, on every record
        assert _shape(await _records(cl, pause_dormant)) == [("OUTCOME_ACCEPTED", "")]
        refused = await _records(cl, illegal)
        assert _shape(refused) == [("OUTCOME_REFUSED", "")] and refused[0].reason == "slot paused"
        for action, params in (
            ("pause", {}),
            ("resume", {}),
            ("adjust_optimizer", {"lr_scale": 0.5}),
        ):
            command_id = await _send(cl, A, action, **params)
            step = await _walk(cl, step, 12)
            shape = _shape(await _records(cl, command_id))
            assert shape[0][0] == "OUTCOME_ACCEPTED" and shape[0][1].startswith("ack:TRAINING")
            assert shape[-1] == ("OUTCOME_ACCEPTED", ""), (action, shape)
        cull = await _send(cl, A, "cull")
        stop = await _send(cl, A, "emergency_stop")  # nothing left to stop once culled
        resume = await _send(cl, B, "resume")
        terminate = await _send(cl, B, "terminate")
        step = await _walk(cl, step, 12)
        (culled, *_) = await _records(cl, cull)
        assert (culled.result, culled.to_stage) == (R.OUTCOME_TRANSITION, pb.SEED_STAGE_CULLED)
        assert _shape(await _records(cl, stop)) == [("OUTCOME_REFUSED", "")]
        assert _shape(await _records(cl, resume)) == [("OUTCOME_ACCEPTED", "")]
        (ended,) = await _records(cl, terminate)
        assert (ended.result, ended.to_stage) == (R.OUTCOME_TRANSITION, pb.SEED_STAGE_TERMINATED)


def _forged(ring: KeyRing) -> KeyRing:
    """Another secret under the ring's key id: its frames fail the MAC."""
    data = ring.to_json()
    return KeyRing.from_json({**data, "keys": [{**data["keys"][0], "secret": "QUFB" * 11}]})


def _reframe(frame: bytes, index: int, value: object) -> bytes:
    items = msgpack.unpackb(frame, raw=False)
    items[index] = value
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("case", "reason", "verified"),
    [
        ("forged", "bad_signature", False),
        ("unknown key", "unknown_key", False),
        ("v1 frame", "unsupported_version", False),
        ("short signature", "bad_frame", False),
        ("stale", "stale", True),
        ("other run", "wrong_run", True),
        ("other slot", "wrong_destination", True),
        ("replayed", "replayed", True),
    ],
)
async def test_a_rejected_command_is_found_by_the_id_it_claims(
    bus: Bus, run_id: str, case: str, reason: str, verified: bool
) -> None:
    """Each rejection, before or after the MAC check, writes one REJECTED record under the
    command's (claimed) id, marked verified only when the MAC checked out; nothing changes."""
    ring = KeyRing.generate()
    sim = SimRuntime([A, B], report_every=5, barrier_frequency=5)
    async with running_cluster(
        bus, run=run_id, slots=[A, B], runtimes=[sim], ring=ring, config=_config()
    ) as cl:
        await _walk(cl, 0, 1)
        before = (await cl.state()).digests()
        inbox = streams.inbox(run_id, "seed", A)
        body = pb.SeedCommand(slot=A, cull=pb.Cull())
        target, signer, extra = inbox, Signer(ring, "tamiyo"), {}
        if case == "forged":
            signer = Signer(_forged(ring), "tamiyo")
        elif case == "unknown key":
            signer = Signer(KeyRing.generate(), "tamiyo")
        elif case == "stale":
            extra = {"ts_ns": 10**18}
        elif case == "other run":
            target = streams.inbox("another-run", "seed", A)
        elif case == "other slot":
            body = pb.SeedCommand(slot=B, cull=pb.Cull())
            target = streams.inbox(run_id, "seed", B)
        frame = signer.seal("seed.command", body, stream=target, **extra)  # type: ignore[arg-type]
        claimed = unpack(frame).id
        if case == "v1 frame":
            frame = msgpack.packb(
                [1, "seed.command", claimed, "tamiyo", ring.active.id, 0, "", b"", b"\0" * 32],
                use_bin_type=True,
            )
        elif case == "short signature":
            frame = _reframe(frame, 10, b"\0" * 31)
        await bus.publish(inbox, {FRAME: frame, "kind": b"seed.command"})
        if case == "replayed":  # the same envelope again under a new entry
            await cl.settle()
            await bus.publish(inbox, {FRAME: frame, "kind": b"seed.command"})
        await cl.settle()
        records = await _records(cl, claimed)
        rejected = [r for r in records if r.result == R.OUTCOME_REJECTED]
        assert [(r.reason, r.verified) for r in rejected] == [(reason, verified)]
        if case != "replayed":  # the replay's first copy culled nothing (A is dormant): refused
            assert records == rejected
            assert (await cl.state()).digests() == before
        outcome = await cl.client.wait(claimed, timeout_s=5)
        assert isinstance(outcome, Outcome) and outcome.final
        if case != "replayed":
            assert (outcome.result, outcome.message.verified) == ("rejected", verified)


async def test_a_client_without_the_actor_key_is_told_why_it_sees_no_outcome(
    bus: Bus, run_id: str
) -> None:
    """A client whose key file holds only its controller key cannot verify the actors' outcome
    records: its wait times out saying how many records did not verify and that the key file
    must hold the actor key (not a silent timeout)."""
    actor = KeyRing.generate(roles=["actor"])
    controller = KeyRing.generate(roles=["controller"])
    both = KeyRing([*actor.members(), *controller.members()], actor.active.id)
    async with running_cluster(bus, run=run_id, slots=[A], ring=both):
        client = KasminaClient(
            bus, run_id, Signer(controller, "tamiyo"), Verifier(controller), poll_s=0.02
        )
        with pytest.raises(CommandTimeout) as info:
            await client.command(A, "pause", wait=True, timeout_s=3)
    assert info.value.unverified >= 1
    assert "unknown_key" in str(info.value) and "actor key" in str(info.value)


@pytest.mark.parametrize("copy", ["broken signature", "exact"])
async def test_a_rejected_copy_of_a_command_is_not_its_outcome(
    bus: Bus, run_id: str, copy: str
) -> None:
    """A Redis writer who copies a genuine germinate right after it (its signature zeroed, or
    byte for byte) gets the copy rejected under the command's id, but the sender's wait passes
    over that rejection (it names another entry) and returns the command's own outcome."""
    sim = SimRuntime([A], report_every=5, barrier_frequency=5)
    async with running_cluster(bus, run=run_id, slots=[A], runtimes=[sim], config=_config()) as cl:
        await _walk(cl, 0, 1)
        mark = await cl.client.outcomes_mark()
        command_id, entry = await cl.client.send(A, "germinate", blueprint="residual_mlp")
        (written,) = await bus.range(entry[0], entry[1], entry[1])
        frame = written.fields[FRAME]
        if copy == "broken signature":
            frame = _reframe(frame, 10, b"\0" * 32)
        await bus.publish(entry[0], {FRAME: frame, "kind": b"seed.command"})
        await cl.settle()
        rejected = [r for r in await _records(cl, command_id) if r.result == R.OUTCOME_REJECTED]
        assert len(rejected) == 1 and rejected[0].entry_id not in ("", entry[1])
        await _walk(cl, 1, 25)
        outcome = await cl.client.wait(command_id, after=mark, timeout_s=10, entry=entry)
        assert outcome.result == "transition" and outcome.message.verified
        assert outcome.message.to_stage == pb.SEED_STAGE_GERMINATED


async def test_a_copy_rejected_in_another_inbox_under_the_same_entry_id_is_not_its_outcome(
    bus: Bus, run_id: str
) -> None:
    """A Redis writer who copies a genuine command into another slot's inbox under the same
    entry id (XADD with an explicit id) gets it rejected there as wrong_destination, verified and
    naming that entry id; the sender's wait passes over it (another actor rejected it)."""
    if not hasattr(bus, "client"):
        pytest.skip("the memory bus takes no explicit entry ids")
    sim = SimRuntime([A, B], report_every=5, barrier_frequency=5)
    async with running_cluster(
        bus, run=run_id, slots=[A, B], runtimes=[sim], config=_config()
    ) as cl:
        await _walk(cl, 0, 1)
        mark = await cl.client.outcomes_mark()
        command_id, entry = await cl.client.send(A, "germinate", blueprint="residual_mlp")
        (written,) = await bus.range(entry[0], entry[1], entry[1])
        other = streams.inbox(run_id, "seed", B)
        await bus.client.xadd(other, dict(written.fields), id=entry[1])  # type: ignore[attr-defined]
        await cl.settle()
        copies = [r for r in await _records(cl, command_id) if r.result == R.OUTCOME_REJECTED]
        assert [(r.reason, r.entry_id, r.actor, r.verified) for r in copies] == [
            ("wrong_destination", entry[1], f"seed:{B}", True)
        ]
        await _walk(cl, 1, 25)
        outcome = await cl.client.wait(command_id, after=mark, timeout_s=10, entry=entry)
        assert outcome.result == "transition" and outcome.message.actor == f"seed:{A}"
