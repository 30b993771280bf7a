"""A shed command's sender finds the ``overloaded`` record covering its entry (``shed_record``):
only a verified record of its inbox whose range holds the entry counts; a forged one is logged."""

from __future__ import annotations

import logging

import pytest

from actors.delivery import shed_record
from actors.hosting import FRAME
from actors.hosting.rejection import Rejections
from bus import Bus
from contracts import KeyRing, Reason, Signer, Verifier, streams

INBOX_SLOT = "l0.s0"


async def _record(bus: Bus, run: str, ring: KeyRing, span: tuple[str, str, str, int]) -> None:
    """One signed ``overloaded`` run record (and nothing claimed) on the run's rejected stream."""
    rejections = Rejections(run, "seed:" + INBOX_SLOT, Signer(ring, "seed"))
    await bus.publish_many(rejections.record_range(Reason.OVERLOADED, "test", span))


async def test_a_verified_record_covering_the_entry_is_found_and_others_are_not(
    bus: Bus, run_id: str
) -> None:
    """Records of another inbox or a range that misses the entry are passed over; the covering
    one is returned with its entry id, and the cursor moves past every record read."""
    ring = KeyRing.generate()
    inbox = streams.inbox(run_id, "seed", INBOX_SLOT)
    before = await bus.publish(inbox, {FRAME: b"x"})
    mine = await bus.publish(inbox, {FRAME: b"y"})
    verifier = Verifier(ring, replay=True)
    await _record(bus, run_id, ring, (streams.inbox(run_id, "seed", "other"), mine, mine, 1))
    await _record(bus, run_id, ring, (inbox, before, before, 1))
    found, cursor = await shed_record(bus, run_id, verifier, (inbox, mine), None)
    assert found is None
    await _record(bus, run_id, ring, (inbox, before, mine, 2))
    found, cursor = await shed_record(bus, run_id, verifier, (inbox, mine), cursor)
    assert found is not None
    entry_id, record = found
    assert (record.entry_id, record.last_entry_id, record.count) == (before, mine, 2)
    assert entry_id == cursor == (await bus.range(streams.rejected(run_id)))[-1].id


async def test_a_forged_record_covering_the_entry_is_not_believed_and_is_logged(
    bus: Bus, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record signed with a key the run does not know is no outcome: passed over, with a
    warning naming its entry and why."""
    ring = KeyRing.generate()
    inbox = streams.inbox(run_id, "seed", INBOX_SLOT)
    mine = await bus.publish(inbox, {FRAME: b"y"})
    await _record(bus, run_id, KeyRing.generate(), (inbox, mine, mine, 1))
    with caplog.at_level(logging.WARNING, logger="kasmina.actors"):
        found, cursor = await shed_record(
            bus, run_id, Verifier(ring, replay=True), (inbox, mine), None
        )
    (forged,) = await bus.range(streams.rejected(run_id))
    assert found is None and cursor == forged.id
    lines = [r.getMessage() for r in caplog.records if r.name == "kasmina.actors"]
    assert len(lines) == 1 and lines[0].startswith(f"unverified overloaded record {forged.id}: ")


@pytest.mark.parametrize(
    ("actor", "sender"),
    [("seed:other", "seed:other"), ("seed:" + INBOX_SLOT, "gate"), ("gate", "gate")],
)
async def test_a_record_signed_by_another_actor_is_forged_and_not_believed(
    bus: Bus, run_id: str, caplog: pytest.LogCaptureFixture, actor: str, sender: str
) -> None:
    """A genuine record covering the entry, signed with the run's key (which every actor may
    sign rejections with) but by an actor other than the inbox's own, is passed over as forged
    with its reason; the inbox's actor's record after it is the one found."""
    ring = KeyRing.generate()
    inbox = streams.inbox(run_id, "seed", INBOX_SLOT)
    mine = await bus.publish(inbox, {FRAME: b"y"})
    other = Rejections(run_id, actor, Signer(ring, sender))
    other.signer = Signer(ring, sender)  # whatever name the key holder chooses to sign as
    await bus.publish_many(other.record_range(Reason.OVERLOADED, "forged", (inbox, mine, mine, 1)))
    verifier = Verifier(ring, replay=True)
    with caplog.at_level(logging.WARNING, logger="kasmina.actors"):
        found, cursor = await shed_record(bus, run_id, verifier, (inbox, mine), None)
    (forged,) = await bus.range(streams.rejected(run_id))
    assert found is None and cursor == forged.id
    lines = [r.getMessage() for r in caplog.records if r.name == "kasmina.actors"]
    assert len(lines) == 1 and lines[0].startswith(
        f"forged overloaded record {forged.id} (invalid)"
    )
    assert f"not by the inbox's actor 'seed:{INBOX_SLOT}'" in lines[0]
    await _record(bus, run_id, ring, (inbox, mine, mine, 1))
    found, _ = await shed_record(bus, run_id, verifier, (inbox, mine), cursor)
    assert found is not None and found[1].actor == "seed:" + INBOX_SLOT


def test_records_are_signed_as_the_actor_that_sheds() -> None:
    """A shell's rejections are signed in the actor's own name, whatever its process signs as."""
    rejections = Rejections("r", "seed:a", Signer(KeyRing.generate(), "kasmina-run:r"))
    assert rejections.signer.sender == "seed:a"
    assert (streams.inbox_actor(streams.inbox("r", "seed", "a")), streams.inbox_actor("x")) == (
        "seed:a",
        None,
    )
    assert streams.inbox_actor(streams.inbox("r", "gate")) == "gate"
    assert streams.inbox_actor(streams.events("r")) is None
