"""The chaos trainer: one process that steps a SimRuntime through an ExecutionActor on the bus.

``python -m scenarios.chaos.trainer --redis URL --run RUN --keys FILE --plan PLAN.json --out OUT.json``

Before closing step ``s`` it sends the plan's commands for ``s``; then it closes the step, flushes
the outbox and waits (with a deadline) until every inbox of the run is drained, so the lifecycle
advances in lockstep with the actors whatever processes are killed meanwhile. Each finished step
prints ``step N`` on stdout (the harness anchors its faults there). The summary written to
``--out`` maps each planned command index to the message id it was sent as.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from actors.assemble import live_verifier
from actors.client import KasminaClient
from actors.execution.actor import ExecutionActor
from bus import open_bus
from contracts import KasminaConfig, KeyRing, Signer
from scenarios.chaos.plan import ChaosPlan, PlannedCommand
from scenarios.pacing import wait_drained
from scenarios.sim import SimRuntime

__all__ = ["main", "train"]


async def _send(client: KasminaClient, command: PlannedCommand) -> str:
    """Send one command; the client rides out a Redis restart without sending it twice."""
    extra: dict[str, Any] = {"blueprint": command.blueprint} if command.blueprint else {}
    result = await client.command(command.slot, command.action, **extra)
    assert isinstance(result, str)
    return result


def _runtime(plan: ChaosPlan, config: KasminaConfig) -> SimRuntime:
    """The simulated rank: the plan's slots (one leaking), paced by the run's config."""
    return SimRuntime(
        plan.slots,
        report_every=plan.report_every,
        barrier_frequency=config.barrier.frequency,
        blend_steps=config.lifecycle.blend_steps,
        leak_slots=plan.leak_slots,
    )


async def train(
    url: str, run: str, ring: KeyRing, plan: ChaosPlan, *, pace_timeout_s: float = 60.0
) -> dict[str, Any]:
    """Drive the plan's steps; returns the summary (command ids, pacing figures)."""
    config = KasminaConfig.load(env={}, overrides=plan.config)
    bus = open_bus(url)
    runtime = _runtime(plan, config)
    actor = ExecutionActor(
        runtime,
        bus=bus,
        run=run,
        signer=Signer(ring, "execution:0"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
    )
    client = KasminaClient(
        bus, run, Signer(ring, "tamiyo"), live_verifier(bus, run, ring, config), retry_s=120.0
    )
    ids: dict[int, str] = {}
    durations: list[float] = []
    timeouts: list[int] = []
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        for step in range(plan.steps):
            t0 = time.monotonic()
            for command in plan.commands_at(step):
                ids[command.index] = await _send(client, command)
            runtime.on_step(step)
            if not await wait_drained(bus, run, timeout_s=pace_timeout_s, flush=actor.flush):
                timeouts.append(step)
            durations.append(time.monotonic() - t0)
            sys.stdout.write(f"step {step}\n")
            sys.stdout.flush()
        await actor.stop()
    await bus.close()
    return {
        "command_ids": {str(k): v for k, v in sorted(ids.items())},
        "step_durations": durations,
        "pace_timeouts": timeouts,
        "elapsed_s": time.monotonic() - started,
        "sent": dict(actor.sent),
        "applied_orders": len(runtime.applied_orders),
        "command_retries": client.retries,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trainer process."""
    parser = argparse.ArgumentParser(prog="python -m scenarios.chaos.trainer")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pace-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    plan = ChaosPlan.from_json(Path(args.plan).read_text())
    summary = anyio.run(
        lambda: train(
            args.redis, args.run, KeyRing.load(args.keys), plan, pace_timeout_s=args.pace_timeout
        )
    )
    Path(args.out).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
