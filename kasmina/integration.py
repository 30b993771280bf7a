"""``kasmina.attach``: one call that connects a plain synchronous training loop to a run.

::

    with kasmina.attach(model, {"hidden.s0": "hidden"}, optimizer,
                        redis="redis://127.0.0.1:6379/0", run="default", keys="keys.json",
                        probe_batch=(x_val, y_val), evaluate=evaluate) as kas:
        for step, (x, y) in enumerate(loader):
            ...                                   # forward, backward, optimizer.step()
            kas.on_step(step, loss, batch=(x, y))  # never waits on Redis

The rank's :class:`~actors.execution.actor.ExecutionActor` is served on an event loop in a
background thread (an anyio blocking portal): it reads the rank's orders and flushes the outbox,
signed, riding out Redis outages. On exit the outbox is flushed and the bus closed.

Without ``redis`` the run is in-process: every actor (seed per slot, gate, safety, telemetry,
barrier) runs on the same background loop over an in-memory bus, for notebooks and tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from anyio.from_thread import BlockingPortal, start_blocking_portal
from torch import nn

from actors.artifacts import BusStore, DirectoryStore, open_store
from actors.assemble import live_verifier
from actors.client import KasminaClient, Outcome
from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.execution.actor import ExecutionActor
from actors.execution.confirm import StepConfirmation
from actors.execution.slot import SeedSlot
from bus import Bus, BusClosed, BusUnavailable, open_bus
from contracts import KasminaConfig, KeyRing, Signer, streams
from scenarios.cluster import Cluster, read_events, running_cluster
from scenarios.pacing import wait_drained

__all__ = ["Attached", "StepConfirmation", "attach"]

SETTLE_TIMEOUT_S = 20.0

log = logging.getLogger("kasmina.attach")


def _ring(keys: str | Path | KeyRing | None, in_process: bool) -> KeyRing:
    if isinstance(keys, KeyRing):
        return keys
    if keys is not None:
        return KeyRing.load(Path(keys))
    if os.environ.get("KASMINA_KEYS"):
        return KeyRing.from_env()
    if in_process:
        return KeyRing.generate()
    raise ValueError("attach to a run on Redis needs keys= (a key file) or $KASMINA_KEYS")


def _config(config: KasminaConfig | str | Path | None) -> KasminaConfig:
    if isinstance(config, KasminaConfig):
        return config
    from kasmina.wiring import load_config

    return load_config(config)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return (
            dist.get_rank() if rank is None else rank,
            dist.get_world_size() if world_size is None else world_size,
        )
    return (0 if rank is None else rank, 1 if world_size is None else world_size)


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
            self.settle()

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
        """Flush, then wait until every inbox of the run is drained and the event log still;
        False (and a warning) if ``timeout_s`` passed first, e.g. because no process serves an
        actor the run needs."""
        ok: bool = self.portal.call(
            lambda: wait_drained(self.bus, self.run, timeout_s=timeout_s, flush=self.actor.flush)
        )
        if not ok:
            log.warning(
                "run %s did not settle within %g s: is every actor and slot served?",
                self.run,
                timeout_s,
            )
        return ok

    # -- commands and the log -------------------------------------------------------------------
    def command(
        self, slot: str, action: str, *, wait: bool = False, timeout_s: float = 30.0, **params: Any
    ) -> str | Outcome:
        """Send a command (``germinate`` needs ``blueprint=``); returns its id, or with ``wait``
        its :class:`~actors.client.Outcome`. Never wait from the training thread: an outcome
        needs the steps that thread runs (a ``RuntimeError`` says so)."""
        if wait and self._trainer == threading.get_ident():
            raise RuntimeError(
                "command(wait=True) from the training thread would wait on itself: "
                "send without wait, or wait from another thread"
            )
        result: str | Outcome = self.portal.call(
            lambda: self.client.command(slot, action, wait=wait, timeout_s=timeout_s, **params)
        )
        return result

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

        return stage_name(int(self.runtime.slots[slot].stage))


@contextmanager
def attach(
    model: nn.Module,
    slots: Mapping[str, str] | Mapping[str, SeedSlot],
    optimizer: torch.optim.Optimizer,
    *,
    redis: str | None = None,
    run: str | None = None,
    keys: str | Path | KeyRing | None = None,
    config: KasminaConfig | str | Path | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    actors: bool | None = None,
    lockstep: bool | None = None,
    **runtime_options: Any,
) -> Iterator[Attached]:
    """Attach ``model``'s training loop to a run; yields an :class:`Attached`.

    - ``slots``: ``{slot_id: "dotted.module.path"}`` (slots are inserted on those submodules'
      outputs) or slots already inserted with :func:`~actors.execution.insert_slots`.
    - ``redis``: the run's Redis URL (``redis://…``; also ``memory://``/``fakeredis://``). Without
      it, the run is in-process, with every actor on the background loop.
    - ``run``, ``keys``, ``config``: the run id (default ``$KASMINA_RUN`` or ``default``), the HMAC
      key file (default ``$KASMINA_KEYS``; in-process runs generate one) and the
      :class:`~contracts.KasminaConfig` or its TOML file (default ``$KASMINA_CONFIG`` and
      ``KASMINA__…`` variables). All three must match the ``kasmina run`` processes.
    - ``rank``, ``world_size``: default to the initialised process group's (else 0 and 1).
      ``config.barrier.world_size`` must equal ``world_size``.
    - ``actors``: serve the run's actors in this process too (default: only in-process runs).
    - ``lockstep``: on barrier boundaries wait for the run to settle (default: in-process runs),
      which makes a run reproducible step for step; a production trainer leaves it off.
    - ``runtime_options``: :class:`~actors.execution.RuntimeConfig` fields (``device=``,
      ``probe_every=``, ``checkpoint_dir=``, …) and the runtime's keyword arguments
      (``probe_batch=``, ``evaluate=``, ``loss_fn=``, ``on_confirm=``: a callback for each step
      confirmation). ``barrier_frequency``, ``report_every`` and ``blend_steps``
      default to the config's, ``probe_every`` to a fifth of the TRAINING budget (at most 50).

    The model that trains is ``model`` itself (eager, with the slots inside); wrap it in DDP or
    ``torch.compile`` after this call, never before."""
    in_process = redis is None
    ring = _ring(keys, in_process)
    cfg = _config(config)
    rank, world_size = _rank_world(rank, world_size)
    if cfg.barrier.world_size != world_size:
        raise ValueError(
            f"world_size is {world_size} but barrier.world_size is {cfg.barrier.world_size}: "
            f"set KASMINA__BARRIER__WORLD_SIZE={world_size} for every process of the run"
        )
    run = run or os.environ.get("KASMINA_RUN") or ("attach-" + uuid.uuid4().hex[:10])
    streams.prefix(run)  # validates the run id
    url = redis or f"memory://{run}"
    serve_actors = in_process if actors is None else actors
    pace = in_process if lockstep is None else lockstep
    if slots and all(isinstance(v, str) for v in slots.values()):
        inserted = insert_slots(model, {k: str(v) for k, v in slots.items()})
    else:
        inserted = {k: v for k, v in slots.items() if isinstance(v, SeedSlot)}
        if len(inserted) != len(slots):
            raise TypeError("slots: give {slot_id: 'module.path'} or inserted SeedSlots")
    settings: dict[str, Any] = {
        "barrier_frequency": cfg.barrier.frequency,
        "report_every": cfg.barrier.frequency,
        "blend_steps": cfg.lifecycle.blend_steps,
        # G1 compares the seed's loss between isolation probes: several per TRAINING budget
        "probe_every": max(1, min(50, cfg.lifecycle.training_steps // 5)),
        "kernel_cache_bytes": cfg.artifacts.cache_bytes,
        "kernel_cache_ttl_s": cfg.artifacts.cache_ttl_s,
    }
    fields = {f.name for f in dataclasses.fields(RuntimeConfig)}
    settings.update({k: v for k, v in runtime_options.items() if k in fields})
    extra = {k: v for k, v in runtime_options.items() if k not in fields}
    runtime = ExecutionRuntime(
        model,
        inserted,
        optimizer,
        RuntimeConfig(**{**settings, "rank": rank, "world_size": world_size}),
        **extra,
    )
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        bus: Bus = portal.call(lambda: _open(url, cfg))
        stack.callback(lambda: portal.call(bus.close))
        cluster: Cluster | None = None
        if serve_actors:
            cluster = stack.enter_context(
                portal.wrap_async_context_manager(
                    running_cluster(bus, run=run, slots=list(inserted), ring=ring, config=cfg)
                )
            )
        artifacts = portal.call(_open_store, cfg.artifacts.store, bus)
        if isinstance(artifacts, BusStore) and artifacts.bus is not bus:
            stack.callback(lambda: portal.call(artifacts.bus.close))
        runtime.kernels.ring = ring
        runtime.kernels.max_artifact_bytes = cfg.artifacts.max_artifact_bytes
        if isinstance(artifacts, DirectoryStore):
            runtime.kernels.source = artifacts
        actor = ExecutionActor(
            runtime,
            artifacts=artifacts,
            bus=bus,
            run=run,
            signer=Signer(ring, f"execution:{rank}"),
            verifier=live_verifier(bus, run, ring, cfg),
            config=cfg,
            rank=rank,
        )
        # registered before the first step: orders fan out to the ranks registered when they
        # are sent, so every rank of a data-parallel trainer is registered before any trains
        portal.call(bus.register, streams.registry(run, "execution"), actor.inbox)
        served, _ = portal.start_task(actor.run)
        stack.callback(_stop, portal, actor, served)
        yield Attached(
            runtime,
            portal=portal,
            bus=bus,
            run=run,
            ring=ring,
            config=cfg,
            actor=actor,
            cluster=cluster,
            lockstep=pace,
        )


async def _open_store(url: str, bus: Bus) -> BusStore | DirectoryStore:
    return open_store(url, bus)


async def _open(url: str, config: KasminaConfig) -> Bus:
    return open_bus(url, processed_ttl_ms=int(config.bus.processed_ttl_s * 1000))


def _stop(portal: BlockingPortal, actor: ExecutionActor, served: Future[Any]) -> None:
    """Stop reading orders, flush what the last steps queued, and wait for the actor to end."""
    portal.call(actor.stop)
    with contextlib.suppress(BusClosed, BusUnavailable):  # the final flush is best effort
        served.result()
