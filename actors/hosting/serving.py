"""The serving loop of a host, driven by its ownership lease.

:class:`LeasedHost` takes the actor's lease (:mod:`actors.hosting.lease`), rebuilds the state,
serves the inbox batch by batch, stands by when another process holds the lease (or on losing
it), retries while Redis is away and hands the lease back on :meth:`~LeasedHost.stop`. Where it
stands is its :class:`~actors.hosting.Lifecycle`. A host subclass supplies the state
(:meth:`~LeasedHost.rebuild`) and the per-batch work (:meth:`~LeasedHost._process`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from actors.hosting.housekeeping import Housekeeping
from actors.hosting.inbox import inbox_consumer
from actors.hosting.lease import OwnershipLease
from actors.hosting.lifecycle import Lifecycle
from actors.hosting.logic import ActorLogic
from actors.hosting.outage import outage_of
from actors.hosting.routing import Router
from bus import Bus, BusClosed, BusUnavailable, Consumer, Entry, Fenced, backoff_s
from contracts.config import KasminaConfig

__all__ = ["LeasedHost"]


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) exception group that is not a cancellation."""
    for exc in group.exceptions:
        inner = _first(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(inner, anyio.get_cancelled_exc_class()):
            return inner
    return group


log = logging.getLogger("kasmina.actors")


class LeasedHost:
    """The lease-driven loop of a host serving one :class:`ActorLogic` on its inbox."""

    logic: ActorLogic
    bus: Bus
    run_id: str
    inbox: str
    group: str
    consumer_name: str
    config: KasminaConfig
    lease: OwnershipLease
    router: Router
    housekeeping: Housekeeping

    def __init__(self) -> None:
        self.lifecycle = Lifecycle.STARTING
        self._stale = True  # no state until the first rebuild (or one a bus failure cut short)
        self._lost = False  # lost its lease while serving, not taken back yet
        self._consumer: Consumer | None = None
        self._wake: anyio.Event | None = None  # set by stop(): cuts waits short
        self._finished: anyio.Event | None = None  # set when run() has returned

    async def rebuild(self) -> int:
        """Re-fold the state from the event stream; returns the events folded."""
        raise NotImplementedError

    async def _prepare(self, batch: Sequence[Entry]) -> Any:
        """The work on a batch that needs no state (done while the batch before it is decided
        and committed); what :meth:`_process` takes."""
        return batch

    async def _complete(self, prepared: Any) -> None:
        """Decide and commit one prepared batch of the inbox. A host overrides this with
        :meth:`_prepare`, or :meth:`_process` alone (then nothing overlaps a commit)."""
        await self._process(prepared)

    async def _process(self, batch: Sequence[Entry]) -> None:
        """One batch from start to end (the serving loop runs the two halves overlapped)."""
        await self._complete(await self._prepare(batch))

    # -- what tests and status read -------------------------------------------------------------
    @property
    def owner(self) -> bool:
        """Holds the ownership lease and serves the inbox (rebuilding or serving)."""
        return self.lifecycle.owns

    @property
    def standing_by(self) -> str:
        """The holder this host waits on ("" when not standing by)."""
        return self.lease.holder

    @property
    def token(self) -> str:
        """This host's ownership token (the lease's value while it holds it)."""
        return self.lease.token

    def _enter(self, state: Lifecycle) -> None:
        if self.lifecycle.ending and not state.ending:
            return  # stopping wins over everything but stopped
        self.lifecycle = state

    def _running(self) -> bool:
        return not self.lifecycle.ending

    def _owns(self) -> bool:
        return self.lifecycle.owns

    # -- loop ---------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the inbox until :meth:`stop`. ``task_status.started()`` once the state is rebuilt
        (or once it stands by because another process holds the actor's lease)."""
        started = False
        self._wake, self._finished = anyio.Event(), anyio.Event()
        if self.lifecycle.ending:
            self._wake.set()
        try:
            async with anyio.create_task_group() as tg:
                self.housekeeping.on_moved = self._wake_reader  # a group moved back: read again
                tg.start_soon(self.housekeeping.run, self._owns, self._running)
                while self._running():
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
                # a crash leaves the host ready to be run again (the supervisor restarts it)
                self.lifecycle = Lifecycle.STOPPED if self.lifecycle.ending else Lifecycle.STARTING
                self._finished.set()
                self._finished = None

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
            taken = await self.lease.take()
        except BusUnavailable as exc:
            outage_of(self.bus).failed(self.logic.name, exc)
            return False
        except BusClosed:
            self._enter(Lifecycle.STOPPING)
            return False
        outage_of(self.bus).answered(self.logic.name)
        if taken and self._lost:
            log.warning("%s: serving again", self.logic.name)
        self._lost = self._lost and not taken
        self._enter(Lifecycle.REBUILDING if taken else Lifecycle.STANDBY)
        return taken

    async def _rebuild_retrying(self) -> bool:
        """Register the inbox and rebuild the state, retrying while Redis is unavailable (no
        input is decided before both are done); False if stopped first."""
        failures = 0
        while self._running():
            try:
                await self.router.register(self.inbox)
                await self.rebuild()
                outage_of(self.bus).answered(self.logic.name)
                return True
            except BusUnavailable as exc:
                outage_of(self.bus).failed(self.logic.name, exc)
                failures += 1
                await self._pause(backoff_s(failures))
            except BusClosed:
                return False
        return False

    async def _keep_lease(self) -> None:
        """Renew the lease while serving; on losing it, stop serving (the next commit would be
        fenced anyway)."""
        while self.lifecycle.owns:
            await self._pause(self.lease.ttl_s / 3)
            try:
                held = await self.lease.renew()
            except BusUnavailable as exc:  # commits stay fenced; retry at the next period
                outage_of(self.bus).failed(self.logic.name, exc)
                continue
            except BusClosed:
                return
            outage_of(self.bus).answered(self.logic.name)
            if not held and self.lifecycle.owns:
                await self._lose("lease expired or taken over")
            elif held:  # a registry emptied by someone with write access heals within a period
                with contextlib.suppress(BusUnavailable):
                    await self.router.register(self.inbox, again=True)

    def _wake_reader(self) -> None:
        if self._consumer is not None:
            self._consumer.wake()

    async def _lose(self, why: str) -> None:
        log.warning("%s: lost ownership (%s); standing by", self.logic.name, why)
        self._lost = True  # said again once it serves again
        self._enter(Lifecycle.STANDBY)
        self._stale = True  # whatever this host decided since may never have been committed
        if self._consumer is not None:
            await self._consumer.close()

    async def _serve(self) -> None:
        failures = 0
        while self.lifecycle.owns:
            self._consumer = inbox_consumer(
                self.bus, self.config, self.run_id, self.inbox, self.group, self.consumer_name
            )
            try:
                await self._pipeline(self._consumer)
            except Fenced:
                await self._lose("a commit was fenced off")
            except BusUnavailable as exc:
                outage_of(self.bus).failed(self.logic.name, exc)
                failures += 1
                await self._pause(backoff_s(failures))
                try:
                    await self.rebuild()
                except BusUnavailable:
                    continue
                outage_of(self.bus).answered(self.logic.name)
            except BusClosed:
                self._enter(Lifecycle.STOPPING)
            else:
                failures = 0
                if self.lifecycle.owns:  # the consumer ended by itself: its bus was closed
                    self._enter(Lifecycle.STOPPING)

    async def _pipeline(self, consumer: Consumer) -> None:
        """Serve ``consumer``'s batches, the next one read and prepared while this one is decided
        and committed (its round trips overlap the commit's). A failure to read or prepare is
        raised once the batch in hand is committed; a prepared batch is dropped (left pending in
        the group, read again as a redelivery) once this host no longer holds the lease."""
        send, receive = anyio.create_memory_object_stream[Any](0)
        failed: list[Exception] = []

        async def feed() -> None:
            async with send:
                try:
                    async for batch in consumer.batches():
                        await send.send(await self._prepare(batch))
                except Exception as exc:  # raised below, in the serving task
                    failed.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                async with receive:
                    async for prepared in receive:
                        if self.lifecycle is Lifecycle.STANDBY:
                            break
                        await self._complete(prepared)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # one task failed; the other was cancelled
            raise _first(group) from None
        if failed:
            raise failed[0]

    async def _release(self) -> None:
        if self.lifecycle.owns:
            self.lifecycle = Lifecycle.STANDBY
        await self.lease.release()

    async def stop(self) -> None:
        """Stop after the batch in progress and hand the actor's lease back."""
        self._enter(Lifecycle.STOPPING)
        if self._wake is not None:
            self._wake.set()
        if self._consumer is not None:
            await self._consumer.close()
        finished = self._finished
        if finished is not None:  # run() is serving: let it finish its batch first
            with anyio.move_on_after(10.0):
                await finished.wait()
        await self._release()
