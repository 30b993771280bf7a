"""The handle :func:`kasmina.attach` yields: a training loop's side of a run (``on_step``, pacing,
commands and the event log), every call made from the training thread."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import Any

import torch
from anyio.from_thread import BlockingPortal

from actors.assemble import live_verifier
from actors.client import KasminaClient, Outcome
from actors.execution import ExecutionRuntime
from actors.execution.actor import ExecutionActor
from actors.execution.confirm import StepConfirmation
from actors.execution.slot import SeedSlot
from bus import Bus, BusError
from contracts import KasminaConfig, KeyRing, Signer
from scenarios.cluster import Cluster, read_events
from scenarios.pacing import run_inboxes, wait_flushed, wait_quiet
from scenarios.quiet import Settle

__all__ = ["SETTLE_TIMEOUT_S", "Attached"]

SETTLE_TIMEOUT_S = 20.0

log = logging.getLogger("kasmina.attach")


class Attached:
    """A training loop's handle on a run: ``on_step`` once per step, commands, pacing, events.

    Built by :func:`attach`; every method is called from the training thread unless it says
    otherwise."""

    def __init__(
        self,
        runtime: ExecutionRuntime,
        *,
        portal: BlockingPortal,
        bus: Bus,
        run: str,
        ring: KeyRing,
        config: KasminaConfig,
        actor: ExecutionActor,
        cluster: Cluster | None,
        lockstep: bool,
    ) -> None:
        self.runtime = runtime
        self.portal = portal
        self.bus = bus
        self.run = run
        self.ring = ring
        self.config = config
        self.actor = actor
        self.cluster = cluster
        self.lockstep = lockstep
        self.client = KasminaClient(
            bus, run, Signer(ring, "attach"), live_verifier(bus, run, ring, config)
        )
        self._trainer: int | None = None
        self.settle_timeout_s = SETTLE_TIMEOUT_S  # how long a lockstep boundary waits at most
        self.unsettled = 0  # settles in a row that timed out (logged once per such episode)
        self._served = run_inboxes(run, runtime.slots, runtime.world_size)
        self._settle = Settle(actor.verifier)  # what the settles have seen of those inboxes

    # -- the loop's side ----------------------------------------------------------------------
    @property
    def slots(self) -> Mapping[str, SeedSlot]:
        """The slots, by id."""
        return self.runtime.slots

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.runtime.rank

    def on_step(
        self,
        step: int,
        loss: float | torch.Tensor | None = None,
        *,
        val_loss: float = math.nan,
        val_accuracy: float = math.nan,
        batch: Any = None,
    ) -> None:
        """``runtime.on_step``: once per step, after ``optimizer.step()``. With ``lockstep`` it
        also waits, on barrier boundaries, until the run has handled everything sent so far."""
        self._trainer = threading.get_ident()
        self.runtime.on_step(step, loss, val_loss=val_loss, val_accuracy=val_accuracy, batch=batch)
        if self.lockstep and step % max(1, self.runtime.config.barrier_frequency) == 0:
            self.settle(self.settle_timeout_s)

    @property
    def restarts(self) -> int:
        """How often this rank's ExecutionActor crashed (a Redis refusal, a bug) and restarted."""
        return self.actor.restarts

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
        """Flush, then wait until every inbox of the run is drained by its actor, twice in a
        row with nothing delivered in between; False if ``timeout_s`` passed first, e.g.
        because no process serves an actor the run needs, or Redis is down or refuses (no bus
        error is raised). The inboxes are the run's by this trainer's layout (its slots' SeedActors,
        the singleton actors, every rank's ExecutionActor; ``pacing.run_inboxes``), each judged by its
        actor's group alone: streams, groups or registry entries another writer adds cannot hold
        a settle up. A warning is logged when settles start timing out, and once they succeed
        again, not at every boundary."""
        try:
            ok: bool = self.portal.call(
                lambda: wait_quiet(
                    self.bus,
                    self._served,
                    timeout_s=timeout_s,
                    flush=self.actor.flush,
                    settle=self._settle,
                )
            )
        except BusError:  # only a closed bus gets here
            ok = False
        if not ok and not self.unsettled:
            log.warning("run %s did not settle within %g s: is every actor and slot served, "
                        "and Redis up? (logged again once it settles)", self.run, timeout_s)  # fmt: skip
        elif ok and self.unsettled:
            log.info("run %s settles again, after %d boundaries that did not",
                        self.run, self.unsettled)  # fmt: skip
        self.unsettled = 0 if ok else self.unsettled + 1
        return ok

    def _flush(self) -> None:
        """Flush the outbox now, from the training thread: at most ``settle_timeout_s`` while
        Redis is away, and a refusal is left to the actor's own flusher to retry."""
        try:
            self.portal.call(lambda: wait_flushed(self.actor.flush, self.settle_timeout_s))
        except BusError as exc:
            log.debug("flush from the training thread failed: %s", exc)

    # -- commands and the log -------------------------------------------------------------------
    def command(
        self, slot: str, action: str, *, wait: bool = False, timeout_s: float = 30.0, **params: Any
    ) -> str | Outcome:
        """Send a command (``germinate`` needs ``blueprint=``); returns its id, or with ``wait``
        its :class:`~actors.client.Outcome`. Never wait from the training thread: an outcome
        needs the steps that thread runs (a ``RuntimeError`` says so). With ``lockstep``, a
        command sent from the training thread follows this step's reports and is handled
        before this returns (the run settles at this step), so the actors decide it at the same
        step in every run."""
        self._check_slot(slot)
        trainer = self._trainer == threading.get_ident()
        if wait and trainer:
            raise RuntimeError(
                "command(wait=True) from the training thread would wait on itself: "
                "send without wait, or wait from another thread"
            )
        paced = self.lockstep and trainer
        if paced:  # what this step reported goes first, so the actors see the same step
            self._flush()
        result: str | Outcome = self.portal.call(
            lambda: self.client.command(slot, action, wait=wait, timeout_s=timeout_s, **params)
        )
        if paced:
            self.settle(self.settle_timeout_s)
        return result

    def _check_slot(self, slot: str) -> None:
        """A slot this model does not have is refused before anything is sent: no SeedActor
        of the run serves it, so nothing would ever answer the command."""
        if slot not in self.runtime.slots:
            held = ", ".join(sorted(self.runtime.slots)) or "none"
            raise ValueError(f"no slot {slot!r} in this model (its slots: {held})")

    def germinate(self, slot: str, blueprint: str = "", **params: Any) -> str | Outcome:
        """``command(slot, "germinate", blueprint=blueprint, ...)``; ``artifact=ID`` germinates
        a published blueprint artifact instead (see ``kasmina blueprints``)."""
        return self.command(slot, "germinate", blueprint=blueprint, **params)

    def events(self) -> list[tuple[str, str, Any]]:
        """The run's verified event log as ``(entry_id, kind, message)``."""
        result: list[tuple[str, str, Any]] = self.portal.call(
            read_events, self.bus, self.run, self.ring
        )
        return result

    def confirmations(self) -> list[StepConfirmation]:
        """The step confirmations of the orders this rank applied or refused since the last
        call, oldest first (``runtime.confirmations()``; ``on_confirm=`` gives a callback)."""
        return self.runtime.confirmations()

    def stage(self, slot: str) -> str:
        """The slot's stage as this process's runtime holds it (e.g. ``"TRAINING"``)."""
        from actors.execution.stages import stage_name

        self._check_slot(slot)
        return stage_name(int(self.runtime.slots[slot].stage))
