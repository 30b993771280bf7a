"""Rejections: bad input is recorded on the run's rejected stream with its reason code, counted,
and (past a rate) raised to the SafetyActor as a rejection storm. Nothing else changes."""

from __future__ import annotations

import logging
import time
from collections import Counter

from actors.hosting.inbox import FRAME
from actors.safety import RejectStorm, note_reject
from bus import Append, Entry
from contracts import ContractError, Envelope, Reason, Signer, kinds, streams
from contracts.config import SafetyConfig
from leyline import pb

__all__ = ["OUTCOMES_MAXLEN", "REJECTED_MAXLEN", "Rejections"]

log = logging.getLogger("kasmina.actors")

REJECTED_MAXLEN = 200_000
OUTCOMES_MAXLEN = 100_000


class Rejections:
    """The rejections of one actor: ``counts`` by reason code, and the appends that record one.

    ``storm`` (the safety thresholds) enables rejection-storm signals; None records only."""

    def __init__(
        self, run: str, actor: str, signer: Signer, storm: SafetyConfig | None = None
    ) -> None:
        self.actor = actor
        self.signer = signer
        self.stream = streams.rejected(run)
        self.outcomes = streams.outcomes(run)
        self.safety_inbox = streams.inbox(run, "safety")
        self.counts: Counter[str] = Counter()
        self._storm_config = storm
        self._storm = RejectStorm()

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
        self.counts[code.value] += 1
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
        if outcome and mid and kind == kinds.SEED_COMMAND:
            appends.append(self._outcome(record, cause))
        if self._storm_config is not None:
            self._storm, storm = note_reject(
                self._storm,
                time.monotonic(),
                self._storm_config,
                detail=f"{self.actor}: rejection storm",
            )
            if storm is not None:  # too many rejections in the window: tell the SafetyActor
                log.warning("%s", storm.detail)
                frame = self.signer.seal(
                    kinds.SAFETY_SIGNAL, storm, stream=self.safety_inbox, causation_id=cause
                )
                appends.append(
                    Append(self.safety_inbox, {FRAME: frame, "kind": kinds.SAFETY_SIGNAL.encode()})
                )
        return appends

    def _outcome(self, rejection: pb.Rejection, cause: str) -> Append:
        """The REJECTED ``command.outcome`` record of a rejected command."""
        record = pb.CommandOutcome(
            command_id=rejection.message_id,
            result=pb.OUTCOME_REJECTED,
            reason=rejection.reason_code,
            detail=rejection.detail,
            verified=rejection.verified,
            actor=self.actor,
        )
        frame = self.signer.seal(
            kinds.COMMAND_OUTCOME, record, stream=self.outcomes, causation_id=cause
        )
        fields = {FRAME: frame, "kind": kinds.COMMAND_OUTCOME.encode()}
        return Append(self.outcomes, fields, maxlen=OUTCOMES_MAXLEN)
