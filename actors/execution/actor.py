"""ExecutionActor: the bus side of an :class:`ExecutionRuntime`.

The training loop runs on its own thread and never awaits Redis. This actor runs on an event loop:
it reads the rank's inbox (orders, pruning orders, barrier commits), hands each verified order to
the runtime's non-blocking inbox and each commit to the runtime's barrier gate; and it flushes the
runtime's outbox (acks, step reports, telemetry, safety signals, barrier votes; unit importance and
pruning acks to the run's pruning stream) in one pipeline per flush, signed, each ack also to the
run's ``confirmations`` stream. Every ``heartbeat_s`` it beats on the run's heartbeat stream with
the step its runtime reached (``kasmina status`` lists the attached trainers from these beats);
it trims its inbox like the shells. A Redis error other than a lost connection restarts it with
backoff (:meth:`ExecutionActor.run`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from google.protobuf.message import Message

from actors.artifacts import ArtifactStore
from actors.delivery import exhausted, since, written
from actors.execution.prefetch import prefetch
from actors.execution.protocol import Runtime
from actors.execution.reacks import SentAcks
from actors.hosting import FRAME, Rejections, Router, inbox_consumer, verify_entries
from actors.hosting.admission import Admission, aggregated
from actors.hosting.groupwatch import reset_if_ahead
from actors.hosting.housekeeping import every, publish_heartbeat, trim_inbox
from actors.hosting.recent import SeenOnce
from actors.hosting.restart import Restarts, keep_serving, one_line
from actors.hosting.routing import STREAMS
from bus import Append, Bus, BusClosed, BusUnavailable, Consumer, Entry, Handled, backoff_s
from bus.errors import BusProtocolError
from contracts import REGISTRY, ContractError, Envelope, Reason, Signer, Verifier, kinds, streams
from contracts.config import KasminaConfig
from leyline import pb


@dataclass(slots=True)
class _Unsent:
    """A sealed outbox batch, the stream id its publish cannot precede, and whether a publish
    was attempted (so it may have landed)."""

    appends: list[Append]
    start: str
    tried: bool = False


log = logging.getLogger("kasmina.execution")

SEEN_ORDERS = 10_000  # order ids remembered against redelivery (far more than are ever in flight)
CONFIRMATIONS_MAXLEN = 100_000  # step confirmations kept on the run's confirmations stream
VOTE_WAIT_S = 30.0  # at stop: how long a barrier vote still hashing is waited for


class ExecutionActor:
    """Connects one rank's runtime to the bus."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        bus: Bus,
        run: str,
        signer: Signer,
        verifier: Verifier,
        config: KasminaConfig,
        rank: int = 0,
        flush_interval_s: float = 0.5,
        heartbeat_s: float = 2.0,
        artifacts: ArtifactStore | None = None,
        final_flush_s: float = 10.0,
    ) -> None:
        self.runtime = runtime
        self.final_flush_s = final_flush_s  # at exit, how long to wait for Redis to take the rest
        self.artifacts = artifacts  # where germinations by artifact id fetch their artifact
        self.bus = bus
        self.run_id = run
        self.signer = signer
        self.verifier = verifier
        self.config = config
        self.rank = rank
        self.flush_interval_s = flush_interval_s
        self.heartbeat_s = heartbeat_s
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.started_ns = time.time_ns()
        self.taken = 0  # inbox entries handled
        self.inbox = streams.inbox(run, "execution", str(rank))
        self.confirmations = streams.confirmations(run)
        self.group = streams.group(f"execution:{rank}")
        self.slots: Sequence[str] = sorted(runtime.slots)
        self.sent: Counter[str] = Counter()
        self.router = Router(bus, run)
        self.rejections = Rejections(run, f"execution:{rank}", signer, outcomes=False)
        self.rejected = self.rejections.counts
        self.admission = Admission(bus, self.inbox, self.group, config, self.rejections)
        self._seen = SeenOnce(SEEN_ORDERS)  # order ids (and checkpoint requests) applied
        self._acks = SentAcks(SEEN_ORDERS)  # to answer a copy of an order applied (reacks.py)
        self.commits, self.last_commit = 0, -1
        self.checkpoint_requests = 0
        self._wake = threading.Event()
        self._stopping = False
        self._stopped = anyio.Event()
        self._consumer: Consumer | None = None
        self._flush_lock = anyio.Lock()
        self._unsent: _Unsent | None = None  # a sealed batch whose publish is not confirmed
        self.crashes = Restarts(f"execution:{rank}")
        runtime.connect(self.notify)  # wake the flusher when the training thread queues

    def notify(self) -> None:
        """Called (from the training thread) when the outbox has something."""
        self._wake.set()

    # -- outgoing -----------------------------------------------------------------------------
    async def flush(self) -> int:
        """Publish everything queued in the runtime's outbox (one round trip per batch).

        A batch drained from the outbox stays held, sealed, until its publish is confirmed: a
        flush cancelled mid-publish (the actor stopping) leaves it for the next flush, which
        first checks whether the interrupted publish landed, so nothing is lost or doubled."""
        async with self._flush_lock:
            sent = 0
            while True:
                if self._unsent is None:
                    appends = self._seal(self.runtime.drain_outbox())
                    appends += self._seal([(kinds.EXEC_ACK, a) for a in self._acks.take()], False)
                    if not appends:
                        return sent
                    self._unsent = _Unsent(appends, since(self.config.security.clock_tolerance_s))
                sent += await self._publish(self._unsent)
                self._unsent = None

    def _seal(self, items: Sequence[tuple[str, Message]], confirm: bool = True) -> list[Append]:
        """Frames for ``items``; an ack also to the confirmations stream (``confirm``: not when
        sent again for a copy of its order, a step is confirmed once)."""
        appends = []
        for kind, message in items:
            raw = message.SerializeToString()
            cap = STREAMS[kind][1] if kind in STREAMS else None
            for stream in self.router.outbox(kind, message, self.slots):  # a frame per stream
                frame = self.signer.seal(kind, raw, stream=stream)
                appends.append(Append(stream, {FRAME: frame, "kind": kind.encode()}, maxlen=cap))
            if kind == kinds.EXEC_ACK:
                self._acks.sent(message)  # type: ignore[arg-type]
            if kind == kinds.EXEC_ACK and confirm:  # the step confirmation, for the controller too
                frame = self.signer.seal(kind, raw, stream=self.confirmations)
                fields = {FRAME: frame, "kind": kind.encode()}
                appends.append(Append(self.confirmations, fields, maxlen=CONFIRMATIONS_MAXLEN))
            self.sent[kind] += 1
        return appends

    async def _publish(self, batch: _Unsent) -> int:
        failures = 0
        while batch.appends:
            first = batch.appends[0]
            try:
                # publish_many is all or nothing: if the first append is there, so is the batch
                if batch.tried and await written(
                    self.bus, first.stream, first.fields[FRAME], batch.start
                ):
                    return len(batch.appends)
                batch.tried = True
                await self.bus.publish_many(batch.appends)
                return len(batch.appends)
            except BusUnavailable:
                failures += 1
                await anyio.sleep(backoff_s(failures))
            except BusProtocolError:  # (nothing written) a stream that takes no more entries?
                dead = await exhausted(self.bus, (a.stream for a in batch.appends))
                if not dead:
                    raise
                log.error("outbox: %s take no more entries (an entry at the largest id); "
                          "their messages are dropped", sorted(dead))  # fmt: skip
                batch.appends = [a for a in batch.appends if a.stream not in dead]
        return 0

    async def _flusher(self) -> None:
        # the outbox wakes it (notify) the moment something is queued; the interval is only a
        # fallback for an outbox connected to another callback, so an idle trainer is not polled
        while not self._stopping:
            await anyio.to_thread.run_sync(
                self._wake.wait, self.flush_interval_s, abandon_on_cancel=True
            )
            self._wake.clear()
            try:
                await self.flush()
            except BusClosed:
                return

    # -- incoming -----------------------------------------------------------------------------
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

    async def _admit(self, batch: Sequence[Entry]) -> list[Handled]:
        """The batch's commit items: its oldest entries beyond the backlog bound shed as
        ``overloaded`` (admission.py), the others taken. A shed order is sent again by its
        SeedActor (a step report shows it was never acknowledged) and a shed barrier commit is
        superseded by the next one; an entry claiming a kind that no one sends again is taken,
        never shed (:func:`_never_shed`)."""
        cut = await self.admission.cut(batch)
        shed: list[Entry] = []
        kept: list[Entry] = []
        for e in batch[:cut]:  # one screen per entry
            (kept if _never_shed(e) else shed).append(e)
        items = await self._take_batch([*kept, *batch[cut:]])
        if shed:
            items += self.admission.shed_items(shed, batch)
        return items

    async def _take_batch(self, batch: Sequence[Entry]) -> list[Handled]:
        """The batch verified together (one nonce round trip), each entry turned into its commit
        item; a flood's rejections of one reason are one record (admission.py)."""
        checked = await verify_entries(self.verifier, batch, self.group)
        runs = aggregated(batch, checked, threshold=self.config.bus.aggregate_from)
        items: list[Handled] = []
        for entry, result in zip(batch, checked, strict=True):
            run = runs.get(entry.id)
            if run is None:
                items.append(await self._take(entry, result))
                continue
            appends: list[Append] = []
            if run.entries[0] is entry:
                appends = self.rejections.record_run(run.reason, run.detail, run.entries)
            items.append(Handled(entry, self.group, appends))
        return items

    async def _take(self, entry: Entry, checked: Envelope | ContractError | None) -> Handled:
        if checked is None:
            return self._reject(entry, Reason.BAD_FRAME, "no frame field", None)
        if isinstance(checked, ContractError):
            return self._reject(entry, checked.code, checked.detail, None, checked)
        env = checked
        try:
            message = REGISTRY.parse(env.kind, env.body)
        except ContractError as exc:
            return self._reject(entry, exc.code, exc.detail, env, exc)
        if isinstance(message, pb.BarrierCommit):
            self.commits += 1  # the barrier agreed: the orders gated on it may apply
            self.last_commit = int(message.barrier_step)
            self.runtime.barrier_committed(self.last_commit)
            return Handled(entry, self.group)
        if isinstance(message, pb.CheckpointRequest):
            if self._seen.first(f"checkpoint:{env.id}"):  # (a rewound group delivers it again)
                self._checkpoint(message)
            return Handled(entry, self.group)
        if isinstance(message, pb.PruningOrder):
            if self._seen.first(f"pruning:{message.order_id}"):
                self.runtime.submit_pruning(message)
            return Handled(entry, self.group)
        if not isinstance(message, pb.ExecutionOrder):
            return self._reject(entry, Reason.UNEXPECTED_KIND, env.kind, env)
        if message.slot not in self.runtime.slots:
            return self._reject(entry, Reason.UNKNOWN_SLOT, message.slot, env)
        await self._submit(message)
        return Handled(entry, self.group)

    async def _submit(self, message: pb.ExecutionOrder) -> None:
        """Fetch a germination's artifact, then hand the order to the runtime once."""
        if message.order_id not in self._seen:  # (an outage here: read again, fetched again)
            await prefetch(self.artifacts, getattr(self.runtime, "kernels", None), message)
        if self._seen.first(message.order_id):  # a redelivery must not apply twice
            self.runtime.submit(message)
        elif self._acks.again(message.order_id):  # a copy of one applied: its ack was lost?
            self._wake.set()  # the flusher sends the ack again

    def _checkpoint(self, message: pb.CheckpointRequest) -> None:
        if message.rollback:
            self.runtime.request_rollback(message.reason, list(message.slots), int(message.step))
        else:
            self.runtime.request_checkpoint(message.reason, int(message.step))
        self.checkpoint_requests += 1

    async def _orders(self) -> None:
        while not self._stopping:
            self._consumer = inbox_consumer(
                self.bus, self.config, self.run_id, self.inbox, self.group, f"execution:{self.rank}"
            )
            try:
                # barrier commits and orders for every rank route by the registry
                await self.router.register(self.inbox)
                async for batch in self._consumer.batches():
                    await self.bus.commit(await self._admit(batch))
                    self.taken += len(batch)
            except BusUnavailable:
                await anyio.sleep(0.2)
            except BusClosed:
                return

    async def _trim(self) -> None:
        """Trim acked inbox entries older than the retention, as the actor shells do."""
        await trim_inbox(self.bus, self.inbox, self.config.bus.inbox_retention_s)

    async def _beat(self) -> None:
        """A heartbeat: this rank is attached, at the step its runtime reached."""
        beat = pb.Heartbeat(
            actor=f"execution:{self.rank}",
            process=self.process,
            started_ns=self.started_ns,
            processed=self.taken,
            rejected=dict(self.rejected),
            ts_ns=time.time_ns(),
            step=max(0, int(getattr(self.runtime, "step", 0))),
        )
        await publish_heartbeat(self.bus, self.run_id, self.signer, beat)
        # orders fan out by the registry: an entry someone deleted is back within a beat
        await self.router.register(self.inbox, again=True)
        note = (self.signer, self.run_id, f"execution:{self.rank}")  # a group moved past the end
        tolerance = self.config.security.clock_tolerance_s
        moved = await reset_if_ahead(self.bus, self.inbox, self.group, None, tolerance, note)
        if moved and self._consumer is not None:
            self._consumer.wake()  # its blocked read would not see the held-back orders

    @property
    def restarts(self) -> int:
        """How often the actor crashed and was served again (see :meth:`run`)."""
        return self.crashes.total

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`; flushes what is left in the outbox on the way out.

        Supervised like a shell (:mod:`actors.hosting.restart`): an error that is not a lost
        connection (a key of the wrong type, an OOM refusal) ends the serving tasks, is logged
        on one line and counted in :attr:`restarts`, and they start again after a backoff. An
        order read but not acknowledged is read again then, and not submitted twice."""
        await keep_serving(self._serve, self.crashes, stopping=lambda: self._stopping,
                           stopped=self._stopped, task_status=task_status)  # fmt: skip
        with anyio.move_on_after(self.final_flush_s, shield=True) as final:
            try:
                await self._votes_hashed()
                await self.flush()
                await self._beat()  # the step it reached: a trainer started next goes on after it
            except (BusClosed, BusUnavailable):
                pass  # the final flush is best effort
            except Exception as exc:  # a refusal (or a bug) costs the last batch, not the exit
                log.warning("execution:%d: last flush failed (%s)", self.rank, one_line(exc))
        if final.cancelled_caught:  # Redis unreachable at exit: the process still ends
            log.warning(
                "execution:%d: Redis did not take the last messages within %g s; they are lost",
                self.rank, self.final_flush_s,
            )  # fmt: skip

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._orders)
            tg.start_soon(self._flusher)
            tg.start_soon(lambda: every(self.heartbeat_s, self._beat, active=lambda: True,
                                        running=lambda: not self._stopping))  # fmt: skip
            tg.start_soon(lambda: every(self.config.bus.trim_every_s, self._trim, first_wait=True,
                                        active=lambda: True, running=lambda: not self._stopping))  # fmt: skip
            task_status.started()
            await self._stopped.wait()
            tg.cancel_scope.cancel()

    async def _votes_hashed(self) -> None:
        """Wait (off the event loop) for the barrier votes whose digests are still hashing."""
        wait = getattr(self.runtime, "wait_votes", None)
        if wait is None:
            return
        try:
            await anyio.to_thread.run_sync(wait, VOTE_WAIT_S)
        except Exception as exc:  # the votes are lost, the rest of the outbox is not
            log.warning("barrier votes not flushed at stop: %r", exc)

    async def stop(self) -> None:
        """Stop reading orders and flushing."""
        self._stopping = True
        self._wake.set()
        self._stopped.set()
        if self._consumer is not None:
            await self._consumer.close()


_NEVER_SHED = (kinds.CHECKPOINT_REQUEST.encode(), kinds.PRUNING_ORDER.encode())


def _never_shed(entry: Entry) -> bool:
    """True if the entry's frame claims (unverified: its bytes hold the kind) a checkpoint or
    rollback request or a pruning order, which no one sends again. A forger who claims one only
    buys the verification that every entry cost before admission."""
    frame = entry.fields.get(FRAME)
    return frame is not None and any(k in frame for k in _NEVER_SHED)
