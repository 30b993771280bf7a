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
The handle :func:`attach` yields is :class:`~kasmina.attached.Attached`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
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
from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.execution.actor import ExecutionActor
from actors.execution.config import runtime_device
from actors.execution.confirm import StepConfirmation
from actors.execution.probing import check_batch
from actors.execution.slot import SeedSlot
from actors.hosting.restart import one_line
from bus import Bus, BusClosed, BusUnavailable, open_bus
from contracts import KasminaConfig, KeyRing, Signer, streams
from kasmina.attached import Attached
from scenarios.cluster import Cluster, running_cluster

log = logging.getLogger("kasmina.integration")

__all__ = ["Attached", "StepConfirmation", "attach"]


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
    ``torch.compile`` after this call, never before. It stays on its device (``device=`` must be
    it), and takes one tensor of inputs (a tuple or dict of inputs is a TypeError)."""
    setup = _setup(redis, run, keys, config, rank, world_size)
    serve_actors = setup.in_process if actors is None else actors
    pace = setup.in_process if lockstep is None else lockstep
    _refuse_early(model, runtime_options)
    inserted = _inserted(model, slots)
    runtime = _runtime(model, inserted, optimizer, setup, runtime_options)
    with ExitStack() as stack:
        yield _serve(stack, runtime, setup, list(inserted) if serve_actors else None, pace)


def _refuse_early(model: nn.Module, runtime_options: dict[str, Any]) -> None:
    """Refuse, before the model is touched, a ``device=`` other than the model's and a
    ``probe_batch=`` or ``validation=`` whose inputs are not one tensor."""
    runtime_device(model, runtime_options.get("device"))
    for name in ("probe_batch", "validation"):
        check_batch(runtime_options.get(name), name)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """Where and as whom a process attaches: resolved from :func:`attach`'s arguments."""

    ring: KeyRing
    cfg: KasminaConfig
    run: str
    url: str
    rank: int
    world_size: int
    in_process: bool


def _setup(
    redis: str | None,
    run: str | None,
    keys: str | Path | KeyRing | None,
    config: KasminaConfig | str | Path | None,
    rank: int | None,
    world_size: int | None,
) -> _Setup:
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
    return _Setup(ring, cfg, run, redis or f"memory://{run}", rank, world_size, in_process)


def _inserted(
    model: nn.Module, slots: Mapping[str, str] | Mapping[str, SeedSlot]
) -> dict[str, SeedSlot]:
    """The slots, inserted on the named submodules' outputs unless they already are."""
    if slots and all(isinstance(v, str) for v in slots.values()):
        return insert_slots(model, {k: str(v) for k, v in slots.items()})
    inserted = {k: v for k, v in slots.items() if isinstance(v, SeedSlot)}
    if len(inserted) != len(slots):
        raise TypeError("slots: give {slot_id: 'module.path'} or inserted SeedSlots")
    return inserted


def _runtime(
    model: nn.Module,
    inserted: dict[str, SeedSlot],
    optimizer: torch.optim.Optimizer,
    setup: _Setup,
    runtime_options: dict[str, Any],
) -> ExecutionRuntime:
    """The rank's runtime: the config's defaults, overridden by the ``RuntimeConfig`` fields
    among ``runtime_options``; the other options are the runtime's keyword arguments."""
    cfg = setup.cfg
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
    return ExecutionRuntime(
        model,
        inserted,
        optimizer,
        RuntimeConfig(**{**settings, "rank": setup.rank, "world_size": setup.world_size}),
        **extra,
    )


def _serve(
    stack: ExitStack,
    runtime: ExecutionRuntime,
    setup: _Setup,
    actor_slots: list[str] | None,
    lockstep: bool,
) -> Attached:
    """Open the bus on a background loop, serve the run's actors there when ``actor_slots`` is
    given, and start the rank's ExecutionActor; ``stack`` undoes it all."""
    run, ring, cfg = setup.run, setup.ring, setup.cfg
    portal = stack.enter_context(start_blocking_portal())
    bus: Bus = portal.call(lambda: _open(setup.url, cfg))
    stack.callback(lambda: portal.call(bus.close))
    cluster: Cluster | None = None
    if actor_slots is not None:
        cluster = stack.enter_context(
            portal.wrap_async_context_manager(
                running_cluster(bus, run=run, slots=actor_slots, ring=ring, config=cfg)
            )
        )
    actor = _execution_actor(stack, portal, bus, runtime, setup)
    # registered before the first step: orders fan out to the ranks registered when they
    # are sent, so every rank of a data-parallel trainer is registered before any trains
    try:
        portal.call(bus.register, streams.registry(run, "execution"), actor.inbox)
    except BusUnavailable as exc:  # training starts; the heartbeats register it once Redis answers
        log.warning("Redis unreachable at attach (%s): training goes on, the rank registers when "
                    "it answers", one_line(exc))  # fmt: skip
    served, _ = portal.start_task(actor.run)
    stack.callback(_stop, portal, actor, served)
    return Attached(
        runtime,
        portal=portal,
        bus=bus,
        run=run,
        ring=ring,
        config=cfg,
        actor=actor,
        cluster=cluster,
        lockstep=lockstep,
    )


def _execution_actor(
    stack: ExitStack, portal: BlockingPortal, bus: Bus, runtime: ExecutionRuntime, setup: _Setup
) -> ExecutionActor:
    """The rank's ExecutionActor, with the artifact store its runtime fetches kernels from."""
    cfg, ring = setup.cfg, setup.ring
    artifacts = portal.call(_open_store, cfg.artifacts.store, bus)
    if isinstance(artifacts, BusStore) and artifacts.bus is not bus:
        stack.callback(lambda: portal.call(artifacts.bus.close))
    runtime.kernels.ring = ring
    runtime.kernels.max_artifact_bytes = cfg.artifacts.max_artifact_bytes
    if isinstance(artifacts, DirectoryStore):
        runtime.kernels.source = artifacts
    return ExecutionActor(
        runtime,
        artifacts=artifacts,
        bus=bus,
        run=setup.run,
        signer=Signer(ring, f"execution:{setup.rank}"),
        verifier=live_verifier(bus, setup.run, ring, cfg),
        config=cfg,
        rank=setup.rank,
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
