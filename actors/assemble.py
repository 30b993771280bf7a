"""Build actor shells for a run: which actors, which slots, on which bus, with which keys."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from actors.hosting import ActorLogic
from actors.logic import TelemetryLogic, build_logic
from actors.shell import ActorShell
from bus import Bus, RedisNonceGuard
from contracts import KasminaConfig, KeyRing, Signer, Verifier, streams

ACTORS = ("seed", "gate", "safety", "telemetry", "barrier")


def process_name() -> str:
    """host:pid, for heartbeats."""
    return f"{socket.gethostname()}:{os.getpid()}"


def live_verifier(
    bus: Bus, run: str, ring: KeyRing, config: KasminaConfig, *, replay: bool = False
) -> Verifier:
    """A verifier with the config's limits whose nonce guard is the run's, shared through the bus."""
    sec = config.security
    return Verifier(
        ring,
        nonce_guard=RedisNonceGuard(bus, streams.prefix(run)),
        tolerance_s=sec.clock_tolerance_s,
        max_bytes=sec.max_message_bytes,
        replay=replay,
    )


def build_shells(
    *,
    bus: Bus,
    run: str,
    config: KasminaConfig,
    signer: Signer,
    verifier: Verifier,
    actors: Sequence[str] = ACTORS,
    slots: Sequence[str] = (),
    heartbeat_s: float = 2.0,
) -> list[ActorShell]:
    """One shell per singleton actor and one SeedActor shell per slot."""
    unknown = sorted(set(actors) - set(ACTORS))
    if unknown:
        raise ValueError(f"unknown actors {', '.join(unknown)}: choose from {', '.join(ACTORS)}")
    if not actors:
        raise ValueError(f"no actors to serve: choose from {', '.join(ACTORS)}")
    if "seed" in actors and not slots:
        raise ValueError("seed actors need --slots")
    proc = process_name()

    def shell(logic: ActorLogic, inbox: str) -> ActorShell:
        return ActorShell(
            logic,
            bus=bus,
            run=run,
            inbox=inbox,
            signer=signer,
            verifier=verifier,
            config=config,
            process=proc,
            heartbeat_s=heartbeat_s,
        )

    shells = []
    for actor in actors:
        if actor != "seed":
            shells.append(shell(build_logic(actor, config), streams.inbox(run, actor)))
            continue
        for slot in slots:
            streams.check_slot(slot)
            shells.append(
                shell(build_logic("seed", config, slot), streams.inbox(run, "seed", slot))
            )
    return shells


def services(
    shells: Sequence[ActorShell], config: KasminaConfig
) -> list[Callable[..., Coroutine[Any, Any, Any]]]:
    """What runs beside the shells in the supervisor's task group: the TelemetryActor's metrics
    server, when ``telemetry.prometheus_port`` is set and this process hosts that actor."""
    port = config.telemetry.prometheus_port
    return [
        shell.logic.metrics_server(port).serve
        for shell in shells
        if port is not None and isinstance(shell.logic, TelemetryLogic)
    ]
