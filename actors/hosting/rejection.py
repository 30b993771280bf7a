"""Rejections: bad input is recorded on the run's rejected stream with its reason code, counted,
and (past a rate) raised to the SafetyActor as a rejection storm. Nothing else changes."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from actors.hosting.admission import Claim
from actors.hosting.inbox import FRAME
from actors.safety import RejectStorm, note_reject, unnote_reject
from bus import Append, Entry
from contracts import ContractError, Envelope, Reason, Signer, Verifier, kinds, streams
from contracts.config import SafetyConfig
from leyline import pb

__all__ = ["OUTCOMES_MAXLEN", "REJECTED_MAXLEN", "Rejections", "written_by_its_actor"]

log = logging.getLogger("kasmina.actors")

REJECTED_MAXLEN = 200_000
OUTCOMES_MAXLEN = 100_000


def written_by_its_actor(
    record: pb.Rejection, envelope: Envelope, verifier: Verifier, run: str
) -> bool:
    """Whether a verified rejection record of ``run`` is its actor's own: its key may speak for
    the actor it names (:meth:`Verifier.speaks_for`: a trainer key for its own rank only), and the
    stream it names is an inbox of ``run`` that this actor reads. Only an actor rejects the
    entries of its own inbox, so a record naming another inbox (a trainer key claiming rejections
    on a SeedActor's inbox in its rank's name) is not believed."""
    if not verifier.speaks_for(envelope, record.actor):
        return False
    try:
        stream_run, _ = streams.address(record.stream)
    except ValueError:
        return False
    return stream_run == run and streams.inbox_actor(record.stream) == record.actor


class Rejections:
    """The rejections of one actor: ``counts`` by reason code, and the appends that record one.

    Records are signed as ``actor`` (``signer``'s keys): a client believes a shed run's record
    only from the actor that reads the inbox it covers (:func:`actors.delivery.shed_record`).
    ``storm`` (the safety thresholds) enables rejection-storm signals; None records only."""

    def __init__(
        self,
        run: str,
        actor: str,
        signer: Signer,
        storm: SafetyConfig | None = None,
        *,
        outcomes: bool = True,
    ) -> None:
        self.actor = actor
        #: a rejected command's REJECTED outcome is written (outcomes are the actors' to sign:
        #: an ExecutionActor, signing with the trainer's key, records only)
        self.tells_outcomes = outcomes
        self.signer = signer if signer.sender == actor else signer.as_sender(actor)
        self.stream = streams.rejected(run)
        self.outcomes = streams.outcomes(run)
        self.safety_inbox = streams.inbox(run, "safety")
        self.counts: Counter[str] = Counter()
        self._storm_config = storm
        self._storm = RejectStorm()
        # the storm window before and after the last count: what ``uncount`` restores
        self._undo: tuple[RejectStorm, RejectStorm] | None = None

    def record(
        self,
        entry: Entry,
        code: Reason,
        detail: str,
        env: Envelope | None = None,
        claimed: ContractError | None = None,
        *,
        outcome: bool = True,
    ) -> list[Append]:
        """Count one rejection of ``entry``; the appends that record it (and any storm signal).

        ``env`` is the verified envelope; without one, ``claimed`` (the verifier's error) carries
        what the frame said about itself: recorded so its sender can find it (docs/wire.md §5). A
        rejected command (``outcome``) also gets its REJECTED record on the outcomes stream."""
        if env is not None:
            mid, kind, sender, verified = env.id, env.kind, env.sender, True
        elif claimed is not None:
            mid, kind, sender = claimed.message_id, claimed.kind, claimed.sender
            verified = claimed.verified
        else:
            mid, kind, sender, verified = "", "", "", False
        cause = mid
        record = pb.Rejection(
            reason_code=code.value,
            stream=entry.stream,
            entry_id=entry.id,
            kind=kind,
            sender=sender,
            detail=detail[:500],
            message_id=mid,
            actor=self.actor,
            verified=verified,
        )
        log.debug("%s rejected %s: %s %s", self.actor, entry.id, code.value, detail)
        frame = self.signer.seal(kinds.REJECTION, record, stream=self.stream, causation_id=cause)
        fields = {FRAME: frame, "kind": kinds.REJECTION.encode(), "reason": code.value.encode()}
        appends = [Append(self.stream, fields, maxlen=REJECTED_MAXLEN)]
        if outcome and self.tells_outcomes and mid and kind == kinds.SEED_COMMAND:
            appends.append(self._outcome(record, cause))
        appends += self._count(code, 1, cause)
        return appends

    def uncount(self, code: Reason, n: int) -> None:
        """Take back the last count (``n`` rejections of ``code``) for records that were not
        written: from the counters, and from the storm window, which then stands as it was
        before that count (a storm signal it raised was in the unwritten appends too)."""
        self.counts[code.value] -= n
        undo, self._undo = self._undo, None
        if undo is not None and self._storm is undo[1]:
            self._storm = undo[0]
        else:  # counted since (not done by the shells): take the rejections out of the window
            self._storm = unnote_reject(self._storm, n)

    def _count(self, code: Reason, n: int, cause: str) -> list[Append]:
        """Count ``n`` rejections of ``code``; the storm signal they raise, if any."""
        self.counts[code.value] += n
        if self._storm_config is None:
            return []
        before = self._storm
        self._storm, storm = note_reject(
            before,
            time.monotonic(),
            self._storm_config,
            detail=f"{self.actor}: rejection storm",
            count=n,
        )
        self._undo = (before, self._storm)
        if storm is None:
            return []
        # too many rejections in the window: tell the SafetyActor, and the operator what and where
        window = self._storm_config.reject_storm_window_s
        log.warning("%s: %d rejections in %g s, the last one %s; counts so far: %s", storm.detail,
                    int(storm.value), window, code.value, dict(self.counts))  # fmt: skip
        return [self._signal(storm, cause)]

    def _signal(self, storm: pb.SafetySignal, cause: str) -> Append:
        frame = self.signer.seal(
            kinds.SAFETY_SIGNAL, storm, stream=self.safety_inbox, causation_id=cause
        )
        return Append(self.safety_inbox, {FRAME: frame, "kind": kinds.SAFETY_SIGNAL.encode()})

    def record_run(
        self, code: Reason, detail: str, entries: Sequence[Entry], claims: Sequence[Claim] = ()
    ) -> list[Append]:
        """Count ``entries`` (one stream, in order) as rejected with ``code``: see
        :meth:`record_range`."""
        first, last = entries[0], entries[-1]
        return self.record_range(
            code, detail, (first.stream, first.id, last.id, len(entries)), claims
        )

    def record_range(
        self,
        code: Reason,
        detail: str,
        span: tuple[str, str, str, int],
        claims: Sequence[Claim] = (),
    ) -> list[Append]:
        """Count the entries of ``span`` (stream, first id, last id, how many) as rejected with
        ``code``; the appends: one record for all of them (``count``, first and last entry id,
        nothing claimed) and an unverified REJECTED outcome for each command id in ``claims``."""
        stream, first, last, count = span
        record = pb.Rejection(
            reason_code=code.value,
            stream=stream,
            entry_id=first,
            detail=f"{count} entries; first: {detail}"[:500],
            actor=self.actor,
            verified=False,
            count=count,
            last_entry_id=last,
        )
        log.debug("%s rejected %d entries: %s %s", self.actor, count, code.value, detail)
        frame = self.signer.seal(kinds.REJECTION, record, stream=self.stream)
        fields = {FRAME: frame, "kind": kinds.REJECTION.encode(), "reason": code.value.encode()}
        appends = [Append(self.stream, fields, maxlen=REJECTED_MAXLEN)]
        for claim in claims if self.tells_outcomes else ():
            one = pb.Rejection(
                reason_code=code.value,
                detail=detail[:500],
                message_id=claim.message_id,
                entry_id=claim.entry_id,
            )
            appends.append(self._outcome(one, claim.message_id))
        return appends + self._count(code, count, "")

    def _outcome(self, rejection: pb.Rejection, cause: str) -> Append:
        """The REJECTED ``command.outcome`` record of a rejected command."""
        record = pb.CommandOutcome(
            command_id=rejection.message_id,
            result=pb.OUTCOME_REJECTED,
            reason=rejection.reason_code,
            detail=rejection.detail,
            verified=rejection.verified,
            actor=self.actor,
            entry_id=rejection.entry_id,
        )
        frame = self.signer.seal(
            kinds.COMMAND_OUTCOME, record, stream=self.outcomes, causation_id=cause
        )
        fields = {FRAME: frame, "kind": kinds.COMMAND_OUTCOME.encode()}
        return Append(self.outcomes, fields, maxlen=OUTCOMES_MAXLEN)
