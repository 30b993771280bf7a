"""The actor shell: read inbox -> verify -> dedupe -> decide -> one atomic commit -> ack.

A shell wraps an :class:`ActorLogic` (a pure core plus its in-memory state) and owns everything
with I/O: the consumer loop, signatures, the rejected stream, heartbeats and state digests. Bad input
is rejected onto the rejected stream with its reason code, counted and acked; the state is untouched
and the actor keeps running. A failure of the bus rebuilds the state from the event stream and
re-reads this consumer's pending entries, so nothing is lost and nothing is applied twice.

One process serves an actor at a time: a shell first takes the actor's ownership lease
(``streams.lease``, TTL ``bus.owner_ttl_s``, renewed while it serves) and every commit is fenced on
it, so a second process started for the same actor stands by until the lease is free, and a
process that lost its lease (paused past the TTL) can no longer write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskStatus
from google.protobuf.message import Message

from actors.safety import RejectStorm, note_reject
from bus import (
    Append,
    Bus,
    BusClosed,
    BusError,
    BusUnavailable,
    Consumer,
    Entry,
    Fence,
    Fenced,
    Handled,
)
from contracts import REGISTRY, ContractError, Envelope, Reason, Signer, Verifier, streams
from contracts.config import KasminaConfig
from leyline import pb

log = logging.getLogger("kasmina.actors")

FRAME = "m"  # the stream field holding the signed frame
HEARTBEAT_MAXLEN = 2_000
REJECTED_MAXLEN = 200_000
ROUTE_TTL_S = 2.0  # fan-out targets (every slot's or rank's inbox) are re-discovered this often


@dataclass(frozen=True, slots=True)
class Meta:
    """What the shell knows about an input besides its body."""

    envelope: Envelope
    entry_id: str
    stream: str


@dataclass(slots=True)
class Outcome:
    """What handling one message produced."""

    events: list[Message] = field(default_factory=list)  # appended to the run's event stream
    outgoing: list[tuple[str, str | None, Message]] = field(
        default_factory=list
    )  # (actor, key, msg)
    telemetry: list[Message] = field(default_factory=list)  # to the telemetry stream (capped)
    reject: Reason | None = None
    detail: str = ""


class ActorLogic(Protocol):
    """A pure core with its state, as the shell drives it."""

    name: str  # e.g. "seed:layer1.s0" or "gate"
    accepts: frozenset[str]  # envelope kinds it handles

    def handle(self, kind: str, message: Message, meta: Meta) -> Outcome:
        """Decide (no state change)."""
        ...

    def apply(self, outcome: Outcome) -> None:
        """Fold the outcome's events into the state."""
        ...

    def reset(self) -> None:
        """Back to the initial state (before a rebuild)."""
        ...

    def fold(self, kind: str, message: Message) -> None:
        """Fold one recorded event of this actor (rebuild); events of others are ignored."""
        ...

    def digests(self) -> dict[tuple[str, str], bytes]:
        """State digest per (actor, key) (key: the slot, or "" for singletons)."""
        ...


def inbox_consumer(
    bus: Bus, config: KasminaConfig, run: str, inbox: str, group: str, name: str
) -> Consumer:
    """The consumer loop of an actor's inbox with the config's delivery parameters."""
    cfg = config.bus
    return Consumer(
        bus,
        inbox,
        group,
        name,
        batch=cfg.batch,
        block_ms=cfg.block_ms,
        lease_ms=cfg.lease_ms,
        max_deliveries=cfg.max_deliveries,
        dead_stream=streams.dead_letter(run),
    )


def _finite(message: Message) -> bool:
    """True if every float field (recursively, maps included) is finite."""
    for desc, value in message.ListFields():
        if desc.type in (desc.TYPE_DOUBLE, desc.TYPE_FLOAT):
            values: Iterable[object] = value if desc.is_repeated else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return False
        elif desc.message_type is not None:
            if desc.message_type.GetOptions().map_entry:
                for v in value.values():
                    if isinstance(v, float) and not math.isfinite(v):
                        return False
                    if isinstance(v, Message) and not _finite(v):
                        return False
            elif desc.is_repeated:
                if not all(_finite(v) for v in value):
                    return False
            elif not _finite(value):
                return False
    return True


class ActorShell:
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
        self.logic = logic
        self.bus = bus
        self.run_id = run
        self.inbox = inbox
        self.group = f"actor:{logic.name}"
        self.consumer_name = consumer_name or logic.name
        self.signer = signer
        self.verifier = verifier
        self.config = config
        self.process = process
        self.heartbeat_s = heartbeat_s
        self.events_stream = streams.events(run)
        self.rejected_stream = streams.rejected(run)
        self.processed = 0
        self.rejected: Counter[str] = Counter()
        self.rebuilds = 0
        self.trimmed = 0
        self._started_ns = time.time_ns()
        self._consumer: Consumer | None = None
        self._stopping = False
        self._routes: dict[str, tuple[float, list[str]]] = {}
        self._stale = True  # no state until the first rebuild
        self._storm = RejectStorm()
        self.lease_key = streams.lease(run, self.group)
        self.token = f"{process or 'shell'}:{uuid.uuid4().hex[:12]}"
        self.owner = False  # holds the ownership lease and serves the inbox
        self.standing_by = ""  # the holder this shell waits on ("" when not standing by)
        self._fence = Fence(self.lease_key, self.token, int(config.bus.owner_ttl_s * 1000))
        self._registered = False
        self._wake: anyio.Event | None = None  # set by stop(): cuts waits short
        self._finished: anyio.Event | None = None  # set when run() has returned

    # -- state --------------------------------------------------------------------------------
    async def rebuild(self) -> int:
        """Re-fold this actor's state from the event stream; returns the events folded.

        Until it completes the state is marked stale, and no input is decided on a stale state: a
        rebuild cut short by a bus failure is redone before the next batch."""
        self._stale = True
        self.logic.reset()
        replay = self.verifier.with_replay()
        count = 0
        start = "-"
        while True:
            page = await self.bus.range(self.events_stream, start, "+", count=1000)
            for entry in page:
                frame = entry.fields.get(FRAME)
                if frame is None:
                    continue
                try:
                    env = replay.open(frame)
                    message = REGISTRY.parse(env.kind, env.body)
                except ContractError as exc:  # a tampered or foreign entry is no part of the state
                    log.warning(
                        "%s: event %s skipped in rebuild: %s", self.logic.name, entry.id, exc
                    )
                    continue
                self.logic.fold(env.kind, message)
                count += 1
            if len(page) < 1000:
                break
            start = "(" + page[-1].id
        self.rebuilds += 1
        self._stale = False
        return count

    # -- routing ------------------------------------------------------------------------------
    async def _route(self, actor: str, key: str | None) -> list[str]:
        """Inbox streams for (actor, key); key None fans out to every existing instance."""
        if key is not None or actor not in ("seed", "execution"):
            return [streams.inbox(self.run_id, actor, key)]
        now = time.monotonic()
        cached = self._routes.get(actor)
        if cached is not None and now - cached[0] < ROUTE_TTL_S:
            return cached[1]
        found = await self.bus.members(streams.registry(self.run_id, actor))
        if not found:  # instances that predate the registry: find their inboxes by name
            found = await self.bus.streams(streams.inbox(self.run_id, actor, "*"))
        if found:
            self._routes[actor] = (now, found)
        if not found and actor == "execution":
            return [streams.inbox(self.run_id, "execution", "0")]
        return found

    # -- handling -----------------------------------------------------------------------------
    def _seal(self, message: Message, causation: str) -> bytes:
        return self.signer.seal(REGISTRY.kind_of(message), message, causation_id=causation)

    def _event_append(self, message: Message, causation: str) -> Append:
        kind = REGISTRY.kind_of(message)
        frame = self.signer.seal(kind, message, causation_id=causation)
        return Append(self.events_stream, {FRAME: frame, "kind": kind.encode()})

    def _reject(self, entry: Entry, code: Reason, detail: str, env: Envelope | None) -> Handled:
        self.rejected[code.value] += 1
        self._storm, storm = note_reject(
            self._storm,
            time.monotonic(),
            self.config.safety,
            detail=f"{self.logic.name}: rejection storm",
        )
        record = pb.Rejection(
            reason_code=code.value,
            stream=entry.stream,
            entry_id=entry.id,
            kind=env.kind if env else "",
            sender=env.sender if env else "",
            detail=detail[:500],
            message_id=env.id if env else "",
            actor=self.logic.name,
        )
        log.debug("%s rejected %s: %s %s", self.logic.name, entry.id, code.value, detail)
        fields = {FRAME: self._seal(record, env.id if env else ""), "reason": code.value.encode()}
        appends = [Append(self.rejected_stream, fields, maxlen=REJECTED_MAXLEN)]
        if storm is not None:  # too many rejections in the window: tell the SafetyActor
            log.warning("%s", storm.detail)
            frame = self._seal(storm, env.id if env else "")
            safety = streams.inbox(self.run_id, "safety")
            appends.append(Append(safety, {FRAME: frame, "kind": b"safety.signal"}))
        return Handled(entry, self.group, appends)

    async def _handle(
        self, entry: Entry, checked: Envelope | ContractError | None
    ) -> tuple[Handled, Outcome | None]:
        env: Envelope | None = None
        try:
            if checked is None:
                return self._reject(entry, Reason.BAD_FRAME, "no frame field", None), None
            if isinstance(checked, ContractError):
                raise checked
            env = checked
            message = REGISTRY.parse(env.kind, env.body)
        except ContractError as exc:
            return self._reject(entry, exc.code, exc.detail, env), None
        if env.kind not in self.logic.accepts:
            return self._reject(entry, Reason.UNEXPECTED_KIND, env.kind, env), None
        if not _finite(message):
            return self._reject(entry, Reason.NON_FINITE, "non-finite value in message", env), None
        try:
            outcome = self.logic.handle(env.kind, message, Meta(env, entry.id, entry.stream))
        except ContractError as exc:
            return self._reject(entry, exc.code, exc.detail, env), None
        if outcome.reject is not None:
            handled = self._reject(entry, outcome.reject, outcome.detail, env)
            if outcome.events:  # explicit refusal events keep the per-key sequence in step
                self.logic.apply(outcome)
            extra = [self._event_append(e, env.id) for e in outcome.events]
            return Handled(entry, self.group, [*handled.appends, *extra]), outcome
        self.logic.apply(outcome)
        appends = [self._event_append(e, env.id) for e in outcome.events]
        for target, target_key, m in outcome.outgoing:
            frame = self._seal(m, env.id)
            for stream in await self._route(target, target_key):
                appends.append(Append(stream, {FRAME: frame, "kind": REGISTRY.kind_of(m).encode()}))
        appends += [
            Append(
                streams.telemetry(self.run_id),
                {FRAME: self._seal(m, env.id), "kind": REGISTRY.kind_of(m).encode()},
                maxlen=self.config.bus.telemetry_maxlen,
            )
            for m in outcome.telemetry
        ]
        return Handled(entry, self.group, appends), outcome

    def _with_digests(self, item: Handled, env_id: str) -> Handled:
        """``item`` plus the state digests as they stand now (after the batch's last change)."""
        records = [
            self._event_append(
                pb.StateDigest(actor=actor, key=key, digest=digest, after_event_id=env_id), env_id
            )
            for (actor, key), digest in self.logic.digests().items()
        ]
        return Handled(item.entry, item.group, [*item.appends, *records])

    async def _process(self, batch: Sequence[Entry]) -> None:
        if self._stale:  # an earlier rebuild was cut short: never decide on a partial state
            await self.rebuild()
        framed = [(e, e.fields.get(FRAME)) for e in batch]
        checks = iter(
            await self.verifier.verify_many(
                [(f, f"{e.stream}/{e.id}") for e, f in framed if f is not None], scope=self.group
            )
        )
        handled: list[Handled] = []
        decided: list[bool] = []  # the item went through decide (and may have changed the state)
        last_change, last_cause = -1, ""
        for entry, frame in framed:
            checked = next(checks) if frame is not None else None
            item, outcome = await self._handle(entry, checked)
            if outcome is not None and outcome.events:
                last_change = len(handled)
                last_cause = checked.id if isinstance(checked, Envelope) else ""
            handled.append(item)
            decided.append(outcome is not None)
        if last_change >= 0:  # one digest per batch, after the last event that changed the state
            handled[last_change] = self._with_digests(handled[last_change], last_cause)
        # Exactly once by the ack: an entry a rival (or an earlier try of this commit) already
        # committed is no longer pending, and its item comes back False with nothing written.
        results = await self.bus.commit(handled, fence=self._fence)
        self.processed += len(handled)
        if any(not ok and d for ok, d in zip(results, decided, strict=True)):
            # a redelivered message was already committed: our tentative state double-counted it
            await self.rebuild()

    # -- loop ---------------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        stream = streams.heartbeats(self.run_id)
        while not self._stopping:
            if not self.owner:  # a standby is not the actor: the holder's beats say who serves
                await anyio.sleep(self.heartbeat_s)
                continue
            beat = pb.Heartbeat(
                actor=self.logic.name,
                process=self.process,
                started_ns=self._started_ns,
                processed=self.processed,
                rejected=dict(self.rejected),
                ts_ns=time.time_ns(),
            )
            try:
                await self.bus.publish(
                    stream, {FRAME: self._seal(beat, "")}, maxlen=HEARTBEAT_MAXLEN
                )
            except BusUnavailable:
                pass
            except BusClosed:
                return
            await anyio.sleep(self.heartbeat_s)

    async def trim_inbox(self, now_ms: int | None = None) -> int:
        """Trim acked inbox entries older than the retention (never a pending or unread one)."""
        retention_ms = int(self.config.bus.inbox_retention_s * 1000)
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        cutoff = f"{max(0, now - retention_ms)}-0"
        return await self.bus.trim(self.inbox, min_id=cutoff)

    async def _retention(self) -> None:
        while not self._stopping:
            await anyio.sleep(self.config.bus.trim_every_s)
            if not self.owner:  # the serving process trims; a standby does not repeat it
                continue
            try:
                self.trimmed += await self.trim_inbox()
            except BusUnavailable:
                continue
            except BusClosed:
                return

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the inbox until :meth:`stop`. ``task_status.started()`` once the state is rebuilt
        (or once it stands by because another process holds the actor's lease)."""
        started = False
        self._wake, self._finished = anyio.Event(), anyio.Event()
        if self._stopping:
            self._wake.set()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeats)
                tg.start_soon(self._retention)
                while not self._stopping:
                    if not await self._take_lease():
                        if not started and self.standing_by:  # not while Redis is away
                            task_status.started()
                            started = True
                        await self._pause(self.config.bus.owner_ttl_s / 3)
                        continue
                    async with anyio.create_task_group() as owned:
                        owned.start_soon(self._keep_lease)  # renewed from the rebuild on
                        if await self._rebuild_retrying():
                            if not started:
                                task_status.started()
                                started = True
                            await self._serve()
                        owned.cancel_scope.cancel()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()
                self._finished.set()
                self._finished = None

    async def _register(self) -> None:
        """Add a keyed instance's inbox (a slot's) to its kind's registry, for fan-out routing."""
        kind, _, key = (
            self.inbox[len(streams.prefix(self.run_id)) :].partition(":")[2].partition(":")
        )
        if not self._registered and key:
            await self.bus.register(streams.registry(self.run_id, kind), self.inbox)
            self._registered = True

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` or until :meth:`stop`."""
        with anyio.move_on_after(seconds):
            if self._wake is None:
                await anyio.sleep(seconds)
            else:
                await self._wake.wait()

    async def _take_lease(self) -> bool:
        """Try to take (or keep) the actor's ownership lease; False while another holds it."""
        try:
            holder = await self.bus.claim_key(self.lease_key, self.token, self._fence.ttl_ms)
        except BusUnavailable:
            return False
        except BusClosed:
            self._stopping = True
            return False
        if holder is not None and holder != self.token:
            if self.standing_by != holder:
                log.warning(
                    "%s is served by %s: standing by until its lease (%g s) is free",
                    self.logic.name, holder, self.config.bus.owner_ttl_s,
                )  # fmt: skip
            self.standing_by = holder
            return False
        if self.standing_by:
            log.warning("%s: took over from %s", self.logic.name, self.standing_by)
        self.standing_by = ""
        self.owner = True
        return True

    async def _rebuild_retrying(self) -> bool:
        """Register the inbox and rebuild the state, retrying while Redis is unavailable (no
        input is decided before both are done); False if stopped first."""
        failures = 0
        while not self._stopping:
            try:
                await self._register()
                await self.rebuild()
                return True
            except BusUnavailable:
                failures += 1
                await self._pause(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.uniform(0.5, 1))
            except BusClosed:
                return False
        return False

    async def _keep_lease(self) -> None:
        """Renew the lease while serving; on losing it, stop serving (the next commit would be
        fenced anyway)."""
        while self.owner and not self._stopping:
            await self._pause(self.config.bus.owner_ttl_s / 3)
            try:
                held = await self.bus.renew_key(self.lease_key, self.token, self._fence.ttl_ms)
            except BusUnavailable:
                continue  # commits stay fenced; retry at the next period
            except BusClosed:
                return
            if not held and not self._stopping:
                await self._lose("lease expired or taken over")

    async def _lose(self, why: str) -> None:
        log.warning("%s: lost ownership (%s); standing by", self.logic.name, why)
        self.owner = False
        self._stale = True  # whatever this shell decided since may never have been committed
        if self._consumer is not None:
            await self._consumer.close()

    async def _serve(self) -> None:
        failures = 0
        while self.owner and not self._stopping:
            self._consumer = inbox_consumer(
                self.bus, self.config, self.run_id, self.inbox, self.group, self.consumer_name
            )
            try:
                async for batch in self._consumer.batches():
                    await self._process(batch)
            except Fenced:
                await self._lose("a commit was fenced off")
            except BusUnavailable:
                failures += 1
                await self._pause(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))
                try:
                    await self.rebuild()
                except BusUnavailable:
                    continue
            except BusClosed:
                self._stopping = True
            else:
                failures = 0

    async def _release(self) -> None:
        self.owner = False
        with anyio.move_on_after(2.0), contextlib.suppress(BusError):  # else it expires by itself
            await self.bus.release_key(self.lease_key, self.token)

    async def stop(self) -> None:
        """Stop after the batch in progress and hand the actor's lease back."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._consumer is not None:
            await self._consumer.close()
        finished = self._finished
        if finished is not None:  # run() is serving: let it finish its batch first
            with anyio.move_on_after(10.0):
                await finished.wait()
        await self._release()
