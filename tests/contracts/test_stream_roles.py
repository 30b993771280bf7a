"""The run's own logs are signed for by role and name, not by kind alone (contracts.roles)."""

from __future__ import annotations

import pytest

from contracts import ContractError, KeyRing, Reason, Signer, Verifier, kinds, streams
from contracts.registry import REGISTRY
from leyline import pb
from scenarios.cluster import role_rings

RUN = "roles"


def _open(signs: KeyRing, every: KeyRing, kind: str, message: object, to: str, sender: str):
    stream = f"{streams.prefix(RUN)}{to}"
    frame = Signer(signs, sender).seal(kind, message, stream=stream)  # type: ignore[arg-type]
    return Verifier(every).open(frame, stream=stream)


@pytest.mark.parametrize(
    ("kind", "message", "to"),
    [
        (kinds.BARRIER_VOTE, pb.BarrierVote(barrier_step=10, rank=7), "events"),
        (kinds.TELEMETRY_CRITICAL, pb.CriticalEvent(), "events"),
        (kinds.REJECTION, pb.Rejection(reason_code="log_regressed", actor="seed:a"), "quarantine"),
        (kinds.REJECTION, pb.Rejection(reason_code="bad_signature", actor="gate"), "rejected"),
        (kinds.HEARTBEAT, pb.Heartbeat(actor="gate"), "heartbeats"),
    ],
)
def test_a_trainer_key_may_not_sign_for_the_actors_logs_in_their_names(
    kind: str, message: object, to: str
) -> None:
    """A trainer key signs its kinds for an actor's inbox, but for the event log, the quarantine
    stream, or (in any name but a rank's) the rejected and heartbeat streams it is refused."""
    every, signs = role_rings()
    with pytest.raises(ContractError) as caught:
        _open(signs["trainer"], every, kind, message, to, "gate")
    assert caught.value.code is Reason.FORBIDDEN_KIND
    assert caught.value.verified  # the MAC held: the key is known, its role is not enough


def test_the_actor_key_and_a_rank_in_its_own_name_still_sign_for_their_streams() -> None:
    """What the run writes itself still verifies: the actor key on every log, the trainer key's
    records and heartbeats as ``execution:RANK``, the trainer's vote to the barrier's inbox."""
    every, signs = role_rings()
    vote = pb.BarrierVote(barrier_step=10, rank=0)
    assert _open(signs["actor"], every, kinds.BARRIER_VOTE, vote, "events", "kasmina-run:r")
    beat = pb.Heartbeat(actor="execution:0")
    assert _open(signs["trainer"], every, kinds.HEARTBEAT, beat, "heartbeats", "execution:0")
    rec = pb.Rejection(reason_code="invalid", actor="execution:0")
    assert _open(signs["trainer"], every, kinds.REJECTION, rec, "rejected", "execution:0")
    assert _open(signs["trainer"], every, kinds.BARRIER_VOTE, vote, "inbox:barrier", "execution:0")


def test_speaks_for_binds_a_record_to_its_signer() -> None:
    """A trainer key speaks for its own rank only; the actor key for every actor."""
    every, signs = role_rings()
    beat = pb.Heartbeat(actor="execution:1")
    env = _open(signs["trainer"], every, kinds.HEARTBEAT, beat, "heartbeats", "execution:0")
    verifier = Verifier(every)
    assert verifier.speaks_for(env, "execution:0")
    assert not verifier.speaks_for(env, "execution:1")
    env = _open(signs["actor"], every, kinds.HEARTBEAT, beat, "heartbeats", "kasmina-run:r")
    assert verifier.speaks_for(env, "gate") and verifier.speaks_for(env, "execution:1")


def test_unknown_fields_of_a_received_message_are_dropped() -> None:
    """Fields a receiver does not know are never kept, so a copy of the message into an event
    carries no padding (a vote padded with a megabyte stays a few bytes)."""
    padding = b"\xfa\x3f" + bytes([0x80, 0x80, 0x04]) + bytes(65536)  # field 1023, 64 KiB
    body = pb.BarrierVote(barrier_step=3, rank=1).SerializeToString() + padding
    vote = REGISTRY.parse(kinds.BARRIER_VOTE, body)
    assert isinstance(vote, pb.BarrierVote) and (vote.barrier_step, vote.rank) == (3, 1)
    assert len(vote.SerializeToString()) < 16


@pytest.mark.parametrize("name", ["units\n", "a\nb", "run\n"])
def test_a_name_with_a_newline_is_no_slot_or_run(name: str) -> None:
    """Slot and run names match their pattern in whole: a trailing newline is refused too."""
    with pytest.raises(ValueError):
        streams.check_slot(name)
    with pytest.raises(ValueError):
        streams.prefix(name)
