"""The actor shell: read inbox -> verify -> dedupe -> decide -> one atomic commit -> ack.

A shell hosts an :class:`ActorLogic` (a pure core plus its state) and does all the I/O with the
parts in :mod:`actors.hosting`: consumer loop, signatures, ownership lease, rejections,
housekeeping; its serving loop (lease, rebuild, serve, stand by, stop) is
:class:`~actors.hosting.serving.LeasedHost`. It takes the core's :class:`~actors.core.Decision`
as it is: events appended and folded, outgoing messages routed, a refusal recorded with the
core's own reason code. Bad input is rejected, counted and acked; the state is untouched and the
actor keeps running. A bus failure rebuilds the state from the event stream and re-reads the
pending entries: nothing lost, nothing applied twice (its :class:`~actors.hosting.Lifecycle`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
from google.protobuf.message import Message

from actors.core import Decision, ReplayError
from actors.eventlog import BadEntry, LogRecord, read_log
from actors.hosting import (
    FRAME,
    ActorLogic,
    Lifecycle,
    Meta,
    OwnershipLease,
    Rejections,
    Router,
    committed_before,
    finite,
    inbox_consumer,
    verify_entries,
)
from actors.hosting.admission import Admission, Run, aggregated
from actors.hosting.housekeeping import Housekeeping, digest_appends
from actors.hosting.inbox import Checked, IdPair, Prepared, committed_ids, keyed, turn_weight
from actors.hosting.merging import OpenEvents
from actors.hosting.quarantine import Skipped, note_regressed, note_unfoldable
from actors.hosting.recent import RecentIds
from actors.hosting.rejection import OUTCOMES_MAXLEN
from actors.hosting.serving import LeasedHost
from bus import (
    Append,
    Bus,
    Entry,
    Handled,
    parse_id,
)
from contracts import REGISTRY, ContractError, Envelope, Reason, Signer, Verifier, streams
from contracts.config import KasminaConfig
from contracts.roles import valid_sender
from leyline import pb

__all__ = ["FRAME", "ActorLogic", "ActorShell", "Meta", "inbox_consumer"]

log = logging.getLogger("kasmina.actors")

SENDER = "[A-Za-z0-9_.:-]{1,128}"
Digests = dict[tuple[str, str], bytes]  # an actor's state digests by (actor, key)
YIELD_EVERY = 16  # entries (or 16 × 64 KiB of frames) decided between turns given to the others


class ActorShell(LeasedHost):
    """Runs one :class:`ActorLogic` on its inbox stream."""

    def __init__(
        self,
        logic: ActorLogic,
        *,
        bus: Bus,
        run: str,
        inbox: str,
        signer: Signer,
        verifier: Verifier,
        config: KasminaConfig,
        consumer_name: str | None = None,
        process: str = "",
        heartbeat_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.logic = logic
        self.bus = bus
        self.run_id = run
        self.inbox = inbox
        self.group = streams.group(logic.name)
        self.consumer_name = consumer_name or logic.name
        self.signer = signer
        self.verifier = verifier
        self.config = config
        self.process = process
        self.heartbeat_s = heartbeat_s
        self.events_stream = streams.events(run)
        self.telemetry_stream = streams.telemetry(run)
        self.outcomes_stream = streams.outcomes(run)
        self.lease = OwnershipLease(
            bus, run, self.group, process=process, ttl_s=config.bus.owner_ttl_s, name=logic.name
        )
        self.router = Router(bus, run, world_size=config.barrier.world_size)
        self.rejections = Rejections(run, logic.name, signer, config.safety)
        self.admission = Admission(
            bus, inbox, self.group, config, self.rejections, shed_inside=True
        )
        self.processed = self.rebuilds = self.regressions = 0  # regressions: see _regressed
        self.housekeeping = Housekeeping(
            bus, run, inbox, signer, config, name=logic.name, process=process,
            heartbeat_s=heartbeat_s, counters=lambda: (self.processed, dict(self.rejected)),
            timer=getattr(logic, "timer", None), timer_s=config.barrier.tick_s,
            decided=lambda: self._high)  # fmt: skip
        self.quarantined: set[str] = set()  # event entry ids this actor could not fold
        self.duplicates = 0  # deliveries of messages already committed (a rewound group, ...)
        self._high: tuple[int, int] | None = None  # highest inbox id decided since the rebuild
        self.recent = RecentIds(verifier.tolerance_s)  # committed ids, in case Redis forgets them
        self._committed: tuple[object, Digests] | None = None  # a rebuild must pass through it
        self._batch_digests: Digests | None = None  # after the batch's last change, if any
        self.merging = OpenEvents(logic)  # the batch's lone events, merged where they may be

    # -- what tests and status read -------------------------------------------------------------
    @property
    def shed(self) -> int:
        """Inbox entries shed as ``overloaded`` (acked undecided)."""
        return self.admission.shed

    @property
    def rejected(self) -> Counter[str]:
        """Rejections by reason code."""
        return self.rejections.counts

    # -- state --------------------------------------------------------------------------------
    async def rebuild(self) -> int:
        """Re-fold this actor's state from the event stream; returns the events folded.

        Until it completes the state is marked stale, and no input is decided on a stale state: a
        rebuild cut short by a bus failure is redone before the next batch."""
        self._stale = True
        self.logic.reset()
        count = 0
        if self.lifecycle is Lifecycle.SERVING:
            self._enter(Lifecycle.REBUILDING)
        target = None if self._committed is None else self._committed[1]
        reached = target is None or self.logic.digests() == target
        skipped = Skipped(self.logic.name)
        async for record in read_log(self.bus, self.events_stream, self.verifier.with_replay()):
            if isinstance(record, BadEntry):  # a tampered or foreign entry is no part of the state
                if record.copy is not None:  # a genuine event appended again: set aside
                    await self._quarantine(record.copy, ReplayError(record.detail))
                else:
                    skipped.add(record)
                continue
            try:
                mine = self.logic.fold(record.kind, record.message)
            except ReplayError as exc:  # a duplicate or a gap in the log: set it aside
                await self._quarantine(record, exc)
                continue
            count += 1
            if not mine:
                continue
            self.recent.add_caused(record.envelope.causation_id, record.envelope.ts_ns)
            if not reached:
                reached = self.logic.digests() == target
        skipped.end()  # the run's past signed by a key the ring no longer trusts: UnverifiableLog
        if not reached:  # the log lost events this host committed: keep what it committed
            await self._regressed()
        # serve only a state the replicas hold (a write whose WAIT failed was read: wait for it)
        await self.lease.renew(durable=True)
        self._committed = (self.logic.snapshot(), self.logic.digests())
        self.rebuilds += 1
        self._stale = False
        self._high = None  # the first batch after a rebuild is checked for committed messages
        if self.lifecycle is Lifecycle.REBUILDING:
            self._enter(Lifecycle.SERVING)
        return count

    async def _regressed(self) -> None:
        """The rebuilt state never passed through the state this host committed last: events it
        committed are gone from the log (deleted, or lost by a Redis without persistence). The
        committed state is kept, and the loss recorded on the quarantine stream."""
        assert self._committed is not None
        self.regressions += 1
        self.logic.restore(self._committed[0])
        log.error(
            "%s: the event log lacks events this host committed; serving the committed state",
            self.logic.name,
        )
        await note_regressed(self.bus, self.signer, self.run_id, self.logic.name)

    async def _quarantine(self, record: LogRecord, exc: ReplayError) -> None:
        """Record an event this actor's core refused to fold (once per entry and shell) on the
        run's quarantine stream; the rebuild goes on without it."""
        if record.entry_id in self.quarantined:
            return
        self.quarantined.add(record.entry_id)
        log.warning("%s: event %s quarantined: %s", self.logic.name, record.entry_id, exc)
        why = f"{type(exc).__name__}: {exc}"
        await note_unfoldable(self.bus, self.signer, self.run_id, self.logic.name, record, why)

    # -- handling -----------------------------------------------------------------------------
    def _append(
        self, stream: str, message: Message, causation: str, maxlen: int | None = None
    ) -> Append:
        """``message`` signed for ``stream`` (envelope v2 binds each frame to its stream)."""
        kind = REGISTRY.kind_of(message)
        frame = self.signer.seal(kind, message, stream=stream, causation_id=causation)
        return Append(stream, {FRAME: frame, "kind": kind.encode()}, maxlen=maxlen)

    def _reject(
        self,
        entry: Entry,
        code: Reason,
        detail: str,
        env: Envelope | None,
        claimed: ContractError | None = None,
    ) -> Handled:
        appends = self.rejections.record(entry, code, detail, env, claimed)
        return Handled(entry, self.group, appends)

    def _check(self, entry: Entry, checked: Envelope | ContractError | None) -> Handled | Message:
        """The parsed message of a verified entry, or its rejection."""
        if checked is None:
            return self._reject(entry, Reason.BAD_FRAME, "no frame field", None)
        if isinstance(checked, ContractError):
            return self._reject(entry, checked.code, checked.detail, None, checked)
        try:
            message = REGISTRY.parse(checked.kind, checked.body)
        except ContractError as exc:
            return self._reject(entry, exc.code, exc.detail, checked)
        if checked.kind not in self.logic.accepts:
            return self._reject(entry, Reason.UNEXPECTED_KIND, checked.kind, checked)
        if not valid_sender(checked.sender):  # names are recorded and shown: no free text
            return self._reject(entry, Reason.INVALID, "sender name is not " + SENDER, checked)
        if not finite(message):
            return self._reject(entry, Reason.NON_FINITE, "non-finite value in message", checked)
        return message

    def _decide(self, entry: Entry, checked: Checked, at: int) -> tuple[Handled | None, Any]:
        """The commit item of one entry and its decision (None: rejected before decide); no
        item yet (None) for a decision that is not a lone event: :meth:`_finish` builds it."""
        message = self._check(entry, checked)
        if isinstance(message, Handled):
            return message, None
        assert isinstance(checked, Envelope)
        env = checked
        try:
            decision = self.logic.handle(env.kind, message, Meta(env, entry.id, entry.stream))
        except ContractError as exc:
            return self._reject(entry, exc.code, exc.detail, env), None
        except Exception as exc:  # a core that cannot decide an input rejects it, never crashes
            log.exception("%s: deciding %s %s failed", self.logic.name, env.kind, env.id)
            detail = f"the actor could not decide it: {type(exc).__name__}: {exc}"[:500]
            return self._reject(entry, Reason.INVALID, detail, env), None
        if self.merging.take(decision, at, env.id):  # its event is sealed at the batch's end
            return Handled(entry, self.group, (), env.id), decision
        return None, decision

    async def _finish(self, entry: Entry, env: Envelope, decision: Decision) -> Handled:
        """The commit item of a decision that is not a lone event: its refusal recorded, its
        events applied and signed, its outcomes, messages (routed) and telemetry."""
        appends: list[Append] = []
        if decision.rejected is not None:  # the decision's own outcome records say it, if any
            appends += self.rejections.record(
                entry, decision.rejected, decision.detail, env, outcome=not decision.outcomes
            )
        self.logic.apply(decision)  # a refusal's events keep the per-key sequence in step
        appends += [self._append(self.events_stream, e, env.id) for e in decision.events]
        for m in decision.outcomes:  # who decided, as a rejection's record says who rejected
            if isinstance(m, pb.CommandOutcome) and not m.actor:
                m.actor = self.logic.name
        appends += [
            self._append(self.outcomes_stream, m, env.id, OUTCOMES_MAXLEN)
            for m in decision.outcomes
        ]
        if decision.rejected is not None:
            return Handled(entry, self.group, appends)
        for out in decision.outgoing:  # one frame per destination
            targets = await self.router.inboxes(out.to, out.key)
            appends += [self._append(s, out.message, env.id) for s in targets]
        maxlen = self.config.bus.telemetry_maxlen
        appends += [
            self._append(self.telemetry_stream, m, env.id, maxlen) for m in decision.telemetry
        ]
        return Handled(entry, self.group, appends)

    def _with_digests(self, item: Handled, env_id: str) -> Handled:
        """``item`` plus the state digests now (after the batch's last change), kept as the batch's."""
        self._batch_digests = digests = self.logic.digests()
        records = digest_appends(self.events_stream, self.signer, digests, env_id)
        return Handled(item.entry, item.group, [*item.appends, *records], item.dedupe_key)

    async def _prepare(self, batch: Sequence[Entry]) -> Prepared:
        """Shed the excess beyond the bound, verify the rest (no state: during the last commit)."""
        cut = await self.admission.cut(batch, self.lease.fence)
        return Prepared(batch, cut, await self._verify(batch[cut:]))

    async def _complete(self, prepared: Prepared) -> None:
        batch, cut = prepared.batch, prepared.cut
        if self._stale:  # an earlier rebuild was cut short: never decide on a partial state
            await self.rebuild()
        ids = [parse_id(e.id) for e in batch]
        handled, decided = await self._decide_batch(batch[cut:], ids[cut:], prepared.checked)
        if cut:
            handled += self.admission.shed_items(batch[:cut])
            decided += [False] * cut
        # exactly once by the ack: an entry committed before comes back False, nothing written
        results = await self.bus.commit(handled, fence=self.lease.fence)
        self.processed += len(handled)
        high = max(ids)
        self._high = high if self._high is None else max(self._high, high)
        await self._committed_now(handled, results, decided)

    async def _committed_now(
        self, handled: Sequence[Handled], results: Sequence[bool], decided: Sequence[bool]
    ) -> None:
        """After a commit: its message ids remembered, and the state it committed noted, or the
        state rebuilt where it counted a message a rival had already committed."""
        self.recent.add_committed(
            h.dedupe_key for h, ok in zip(handled, results, strict=True) if ok and h.dedupe_key
        )
        lost = self.merging.committed(results)  # a merged event kept out of the log is owed
        if lost or any(not ok and d for ok, d in zip(results, decided, strict=True)):
            # a redelivered message was already committed: our tentative state double-counted it
            await self.rebuild()
        elif self._batch_digests is not None:  # the batch changed the state: now committed
            self._committed = (self.logic.snapshot(), self._batch_digests)

    async def _decide_batch(
        self, batch: Sequence[Entry], ids: Sequence[IdPair], checked_all: Sequence[Checked]
    ) -> tuple[list[Handled], list[bool]]:
        """Each entry (``ids``: their ids parsed) verified, decided and turned into its commit
        item (plus whether it went through decide), with the state digests after the batch's last
        change."""
        self._batch_digests = None
        mids = committed_ids(batch, checked_all, self.config.security.clock_tolerance_s)
        done = await committed_before(self.bus, self.group, batch, ids, mids, self._high)
        done.update(self.recent.entries(batch, mids), self.admission.answered.entries(batch))
        runs = aggregated(batch, checked_all, threshold=self.config.bus.aggregate_from, skip=done)
        handled: list[Handled] = []
        decided: list[bool] = []  # the item went through decide (and may have changed the state)
        reissued = self.merging.start(reissue=bool(batch))  # owed events ride on the first item
        last_change, last_cause = (0, reissued[-1][1]) if reissued else (-1, "")
        weight = 0  # entries since the last turn given to the others (a large one counts more)
        for entry, checked in zip(batch, checked_all, strict=True):
            weight += turn_weight(entry)
            if weight >= YIELD_EVERY:  # a flooded inbox never starves the others served by
                weight = 0  # this process, nor do a few large entries (fair turns)
                await anyio.lowlevel.checkpoint()
            run = runs.get(entry.id)
            if run is not None:  # one of a flood's rejections: one record for the run
                handled.append(self._run_item(entry, run))
                decided.append(False)
            elif entry.id in done:  # committed before: acked, never decided again
                handled.append(self._duplicate(entry, checked))
                decided.append(False)
            else:
                item, decision = self._decide(entry, checked, len(handled))
                if item is None:  # not a lone event: refusal, routing, outcomes
                    item = await self._finish(entry, checked, decision)  # type: ignore[arg-type]
                if decision is not None and decision.events:
                    last_change = len(handled)
                    last_cause = checked.id if isinstance(checked, Envelope) else ""
                handled.append(keyed(item, checked))
                decided.append(decision is not None)
        self.merging.seal(handled, lambda e, cause: self._append(self.events_stream, e, cause))
        if last_change >= 0:  # one digest per batch, after the last event that changed the state
            handled[last_change] = self._with_digests(handled[last_change], last_cause)
        return handled, decided

    async def _verify(self, batch: Sequence[Entry]) -> list[Envelope | ContractError | None]:
        """Each entry's verified envelope, the verifier's error, or None (no frame field)."""
        return await verify_entries(self.verifier, batch, self.group)

    def _run_item(self, entry: Entry, run: Run) -> Handled:
        """The commit item of one entry of a flood's run: the run's record rides on its first."""
        appends: list[Append] = []
        if run.entries[0] is entry:
            appends = self.rejections.record_run(run.reason, run.detail, run.entries)
        return Handled(entry, self.group, appends)

    def _duplicate(self, entry: Entry, checked: Envelope | ContractError | None) -> Handled:
        """The commit item of a message committed before: acked, nothing written."""
        self.duplicates += 1
        key = checked.id if isinstance(checked, Envelope) else getattr(checked, "message_id", "")
        return Handled(entry, self.group, (), dedupe_key=key)  # (a stale one: its claimed id)

    # -- housekeeping -------------------------------------------------------------------------
    async def trim_inbox(self, now_ms: int | None = None) -> int:
        """Trim acked inbox entries older than the retention (never a pending or unread one)."""
        return await self.housekeeping.trim_inbox(now_ms)

    @property
    def trimmed(self) -> int:
        """Inbox entries trimmed so far."""
        return self.housekeeping.trimmed
