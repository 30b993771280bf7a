"""Recording bad input: one signed record on the run's rejected stream per rejection (what the
entry was, what its frame said about itself, who refused it and why), a REJECTED outcome for a
command, counts by reason, and a rejection storm raised to the SafetyActor past its threshold."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from actors.client import build_command
from actors.hosting import FRAME
from actors.hosting.admission import Claim
from actors.hosting.rejection import Rejections
from bus import Append, Entry
from contracts import ContractError, Envelope, KeyRing, Reason, Signer, Verifier, kinds
from contracts.config import SafetyConfig
from leyline import pb

RUN = "r-rej"
INBOX = f"kasmina:{{{RUN}}}:inbox:seed:l0.s0"
REJECTED = f"kasmina:{{{RUN}}}:rejected"
OUTCOMES = f"kasmina:{{{RUN}}}:outcomes"
SAFETY = f"kasmina:{{{RUN}}}:inbox:safety"


def _open(ring: KeyRing, append: Append) -> Envelope:
    """The verified envelope of an append (signed for its own stream)."""
    return Verifier(ring, replay=True).open(append.fields[FRAME], stream=append.stream)


def _command(ring: KeyRing) -> Envelope:
    frame = Signer(ring, "tamiyo").seal(
        kinds.SEED_COMMAND, build_command("l0.s0", "cull"), stream=INBOX
    )
    return Verifier(ring, replay=True).open(frame, stream=INBOX)


def test_a_verified_command_is_recorded_with_its_outcome() -> None:
    """A rejected verified command: a signed record naming the entry, the frame's id, kind and
    sender, the actor and the reason, with the REJECTED outcome its sender waits for (naming the
    entry too); both caused by the command."""
    ring = KeyRing.generate()
    env = _command(ring)
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    record, outcome = rejections.record(Entry(INBOX, "5-1"), Reason.INVALID, "bad", env)
    assert (record.stream, record.maxlen) == (REJECTED, 200_000)
    assert record.fields["kind"] == b"rejection" and record.fields["reason"] == b"invalid"
    signed = _open(ring, record)
    assert (signed.kind, signed.sender, signed.causation_id) == ("rejection", "seed:l0.s0", env.id)
    assert pb.Rejection.FromString(signed.body) == pb.Rejection(
        reason_code="invalid", stream=INBOX, entry_id="5-1", kind="seed.command",
        sender="tamiyo", detail="bad", message_id=env.id, actor="seed:l0.s0", verified=True,
    )  # fmt: skip
    assert (outcome.stream, outcome.maxlen) == (OUTCOMES, 100_000)
    assert outcome.fields["kind"] == b"command.outcome"
    signed = _open(ring, outcome)
    assert signed.causation_id == env.id
    assert pb.CommandOutcome.FromString(signed.body) == pb.CommandOutcome(
        command_id=env.id, result=pb.OUTCOME_REJECTED, reason="invalid", detail="bad",
        verified=True, actor="seed:l0.s0", entry_id="5-1",
    )  # fmt: skip
    assert dict(rejections.counts) == {"invalid": 1}


def test_a_command_whose_decision_carries_its_own_outcome_gets_no_second_one() -> None:
    """With ``outcome=False`` only the rejection is recorded; a rejected message of another kind
    never gets an outcome."""
    ring = KeyRing.generate()
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    appends = rejections.record(
        Entry(INBOX, "5-1"), Reason.INVALID, "x", _command(ring), outcome=False
    )
    assert [a.stream for a in appends] == [REJECTED]
    frame = Signer(ring, "trainer").seal(kinds.STEP_REPORT, pb.StepReport(), stream=INBOX)
    report = Verifier(ring, replay=True).open(frame, stream=INBOX)
    appends = rejections.record(Entry(INBOX, "5-2"), Reason.UNEXPECTED_KIND, "x", report)
    assert [a.stream for a in appends] == [REJECTED]


@pytest.mark.parametrize("verified", [True, False])
def test_an_unverified_frame_is_recorded_with_what_it_claimed(verified: bool) -> None:
    """Without an envelope, the record carries what the verifier's error says the frame claimed
    (and whether that was authenticated); a claimed command gets its outcome, marked the same."""
    ring = KeyRing.generate()
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    error = ContractError("late").claim("m-1", "seed.command", "tamiyo", verified=verified)
    record, outcome = rejections.record(Entry(INBOX, "7-0"), Reason.STALE, "late", None, error)
    body = pb.Rejection.FromString(_open(ring, record).body)
    assert (body.message_id, body.kind, body.sender, body.verified) == (
        "m-1", "seed.command", "tamiyo", verified,
    )  # fmt: skip
    assert _open(ring, record).causation_id == "m-1"
    done = pb.CommandOutcome.FromString(_open(ring, outcome).body)
    assert (done.command_id, done.reason, done.verified) == ("m-1", "stale", verified)


def test_a_frame_that_said_nothing_is_recorded_unverified_and_its_detail_is_capped() -> None:
    """An entry whose frame could not be read is recorded with no id, kind or sender, unverified,
    with no outcome; a detail is kept to its first 500 characters."""
    ring = KeyRing.generate()
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    (record,) = rejections.record(Entry(INBOX, "8-0"), Reason.BAD_FRAME, "y" * 600)
    signed = _open(ring, record)
    body = pb.Rejection.FromString(signed.body)
    assert (body.message_id, body.kind, body.sender, body.verified) == ("", "", "", False)
    assert body.detail == "y" * 500 and signed.causation_id == ""
    assert (body.stream, body.entry_id, body.reason_code) == (INBOX, "8-0", "bad_frame")


def test_a_run_of_rejections_is_one_record_with_an_outcome_per_claimed_command() -> None:
    """A flood's run: one record with the count, the first and last entry ids and the first's
    detail; an unverified REJECTED outcome for each command id claimed; every entry counted."""
    ring = KeyRing.generate()
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    entries = [Entry(INBOX, f"9-{i}") for i in range(3)]
    claims = [Claim("c-1", "seed.command", "x"), Claim("c-2", "seed.command", "y")]
    record, *outcomes = rejections.record_run(Reason.OVERLOADED, "queue full", entries, claims)
    assert (record.stream, record.fields["reason"]) == (REJECTED, b"overloaded")
    assert record.maxlen == 200_000
    assert pb.Rejection.FromString(_open(ring, record).body) == pb.Rejection(
        reason_code="overloaded", stream=INBOX, entry_id="9-0", last_entry_id="9-2", count=3,
        detail="3 entries; first: queue full", actor="seed:l0.s0", verified=False,
    )  # fmt: skip
    got = [pb.CommandOutcome.FromString(_open(ring, o).body) for o in outcomes]
    assert [(o.command_id, o.result, o.reason, o.detail, o.verified) for o in got] == [
        ("c-1", pb.OUTCOME_REJECTED, "overloaded", "queue full", False),
        ("c-2", pb.OUTCOME_REJECTED, "overloaded", "queue full", False),
    ]
    assert [_open(ring, o).causation_id for o in outcomes] == ["c-1", "c-2"]
    assert dict(rejections.counts) == {"overloaded": 3}


def test_past_the_storm_threshold_the_safety_actor_is_told_once() -> None:
    """With a storm threshold of 3, the fourth rejection inside the window adds one signed
    reject-storm signal for the SafetyActor, naming the actor; the next ones (quiet period) and a
    host without thresholds add none."""
    ring = KeyRing.generate()
    storm = SafetyConfig(reject_storm_count=3, reject_storm_window_s=600, reject_storm_quiet_s=600)
    rejections = Rejections(RUN, "gate", Signer(ring, "gate"), storm)
    entry = Entry(INBOX, "1-0")
    sizes = [len(rejections.record(entry, Reason.INVALID, "x")) for _ in range(6)]
    assert sizes == [1, 1, 1, 2, 1, 1]
    (_, raised) = Rejections(RUN, "gate", Signer(ring, "gate"), storm).record_run(
        Reason.INVALID, "x", [entry] * 4
    )
    assert (raised.stream, raised.fields["kind"]) == (SAFETY, b"safety.signal")
    body = pb.SafetySignal.FromString(_open(ring, raised).body)
    assert body.kind == pb.SafetySignalKind.SAFETY_SIGNAL_REJECT_STORM
    assert body.detail == "gate: rejection storm" and body.value == 4.0
    quiet = Rejections(RUN, "gate", Signer(ring, "gate"))
    assert [len(quiet.record(entry, Reason.INVALID, "x")) for _ in range(6)] == [1] * 6
    assert quiet.counts["invalid"] == 6


def test_a_storm_signal_is_caused_by_the_rejection_that_raised_it() -> None:
    """The reject-storm signal raised by a verified message's rejection names that message as
    its cause, and the storm is logged as a warning with how many, the reason and the counts."""
    ring = KeyRing.generate()
    storm = SafetyConfig(reject_storm_count=1, reject_storm_window_s=600, reject_storm_quiet_s=600)
    rejections = Rejections(RUN, "gate", Signer(ring, "gate"), storm)
    env = _command(ring)
    rejections.record(Entry(INBOX, "1-0"), Reason.INVALID, "x", env, outcome=False)
    with _logged(logging.WARNING) as lines:
        (_, signal) = rejections.record(
            Entry(INBOX, "1-1"), Reason.INVALID, "x", env, outcome=False
        )
    assert signal.stream == SAFETY and _open(ring, signal).causation_id == env.id
    assert lines == [
        "gate: rejection storm: 2 rejections in 600 s, the last one invalid; "
        "counts so far: {'invalid': 2}"
    ]


def test_long_details_of_a_run_are_capped_at_500_characters() -> None:
    """A run's record and its claimed commands' outcomes keep 500 characters of detail."""
    ring = KeyRing.generate()
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    entries = [Entry(INBOX, "9-0"), Entry(INBOX, "9-1")]
    record, outcome = rejections.record_run(
        Reason.OVERLOADED, "z" * 600, entries, [Claim("c-1", "seed.command", "x")]
    )
    detail = pb.Rejection.FromString(_open(ring, record).body).detail
    assert detail == ("2 entries; first: " + "z" * 600)[:500] and len(detail) == 500
    assert pb.CommandOutcome.FromString(_open(ring, outcome).body).detail == "z" * 500


def test_rejections_are_logged_at_debug_with_what_was_refused() -> None:
    """Each rejection is logged at debug level with the actor, the entry (or the run's count),
    the reason code and the detail."""
    ring = KeyRing.generate()
    rejections = Rejections(RUN, "seed:l0.s0", Signer(ring, "seed:l0.s0"))
    with _logged(logging.DEBUG) as lines:
        rejections.record(Entry(INBOX, "5-1"), Reason.INVALID, "bad sender")
        rejections.record_run(Reason.OVERLOADED, "full", [Entry(INBOX, "9-0")] * 3)
    assert lines == [
        "seed:l0.s0 rejected 5-1: invalid bad sender",
        "seed:l0.s0 rejected 3 entries: overloaded full",
    ]


@contextmanager
def _logged(level: int) -> Iterator[list[str]]:
    """The messages the actors' logger emits at ``level`` or above inside the block."""
    lines: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("kasmina.actors")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def test_a_count_taken_back_is_subtracted() -> None:
    """Rejections counted and then taken back (a shed the group's move made moot) leave only the
    rest counted."""
    rejections = Rejections(RUN, "seed:l0.s0", Signer(KeyRing.generate(), "seed:l0.s0"))
    rejections.record_run(Reason.OVERLOADED, "full", [Entry(INBOX, f"9-{i}") for i in range(5)])
    rejections.uncount(Reason.OVERLOADED, 2)
    assert dict(rejections.counts) == {"overloaded": 3}
