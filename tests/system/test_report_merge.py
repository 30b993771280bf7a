"""A SeedActor shell writes one ``lifecycle.progress`` per run of step reports in an inbox batch,
and a rebuild, a replay and ``replay --verify`` of that log give the live state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from google.protobuf.message import Message

from actors.assemble import live_verifier
from actors.eventlog import LogRecord, read_log
from actors.hosting import FRAME
from actors.logic import PureLogic, seed_logic
from actors.replay import fold_events, verify_digests
from actors.shell import ActorShell
from bus import Append, Bus, Entry
from bus.testing import eventually, real_redis_url
from contracts import KasminaConfig, KeyRing, Signer, Verifier, kinds, streams
from kasmina.cli import build_parser
from kasmina.commands import replay
from leyline import pb

SLOT = "l0.s0"
pytestmark = pytest.mark.anyio


def _report(step: int) -> pb.StepReport:
    report = pb.StepReport(step=step, val_accuracy=0.5)
    report.slots.add(slot=SLOT, alpha=step / 100)
    return report


async def _serve(
    bus: Bus, run: str, ring: KeyRing, inputs: list[Message], config: KasminaConfig | None = None
) -> tuple[ActorShell, PureLogic[Any]]:
    """A SeedActor shell started on an inbox that already holds ``inputs`` (one batch), stopped
    once it has handled them all."""
    config = config or KasminaConfig()
    inbox = streams.inbox(run, "seed", SLOT)
    trainer = Signer(ring, "trainer")
    frames = []
    for message in inputs:
        kind = kinds.STEP_REPORT if isinstance(message, pb.StepReport) else kinds.SEED_COMMAND
        frames.append(trainer.seal(kind, message, stream=inbox))
    await bus.publish_many([Append(inbox, {FRAME: f}) for f in frames])
    logic = seed_logic(SLOT, config)
    shell = ActorShell(
        logic,
        bus=bus,
        run=run,
        inbox=inbox,
        signer=Signer(ring, f"seed:{SLOT}"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(shell.run)

        async def handled() -> bool:
            return shell.processed == len(inputs)

        await eventually(handled)
        await shell.stop()
    return shell, logic


async def _log(bus: Bus, run: str, ring: KeyRing) -> list[tuple[str, str, Message]]:
    out = []
    async for record in read_log(bus, streams.events(run), Verifier(ring, replay=True)):
        assert isinstance(record, LogRecord)
        out.append((record.entry_id, record.kind, record.message))
    return out


def _reports(log: list[tuple[str, str, Message]]) -> list[tuple[int, int]]:
    return [
        (m.seq, m.step)
        for _, k, m in log
        if k == kinds.LIFECYCLE_PROGRESS and isinstance(m, pb.LifecycleProgress) and m.step_report
    ]


async def test_a_batch_of_reports_writes_one_progress_event(bus: Bus, run_id: str) -> None:
    """Twelve reports in one batch: the first one's event (with the bootstrap) and one event with
    the twelfth step; rebuilt, replayed and verified, the log gives the live state."""
    ring = KeyRing.generate()
    shell, logic = await _serve(bus, run_id, ring, [_report(s) for s in range(1, 13)])
    log = await _log(bus, run_id, ring)
    assert _reports(log) == [(2, 1), (3, 12)]
    live = logic.digests()
    assert logic.state.last_step == 12 and logic.state.alpha == 0.12
    assert fold_events(log).seeds[SLOT] == logic.state
    assert verify_digests(log) == [] and any(k == kinds.STATE_DIGEST for _, k, _ in log)
    await shell.rebuild()
    assert logic.digests() == live


async def test_a_command_keeps_its_place_between_merged_reports(bus: Bus, run_id: str) -> None:
    """Reports, a pause, reports in one batch: the pause's event sits between the two merged
    events in the log, and the log folds to the live state."""
    ring = KeyRing.generate()
    pause = pb.SeedCommand(slot=SLOT, pause=pb.Pause())
    inputs: list[Message] = [*(_report(s) for s in range(1, 6)), pause]
    inputs += [_report(s) for s in range(6, 10)]
    _, logic = await _serve(bus, run_id, ring, inputs)
    log = await _log(bus, run_id, ring)
    assert _reports(log) == [(2, 1), (3, 5), (5, 9)]
    lifecycle = [m for _, k, m in log if k in kinds.LIFECYCLE_EVENTS]
    seqs = [
        m.seq for m in lifecycle if isinstance(m, pb.LifecycleProgress | pb.LifecycleTransition)
    ]
    assert seqs == list(range(1, 6))
    assert logic.state.paused and fold_events(log).seeds[SLOT] == logic.state
    assert verify_digests(log) == []


async def test_merged_states_match_a_full_refold_rebuild_and_replay_verify(
    bus: Bus,
    run_id: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Runs of reports (some without an accuracy, a stale one), commands and a germination in one
    batch, with the inbox read a few entries at a time: the live state, taken from each merged
    decision without a second fold, equals the whole log re-folded, a rebuild and the state
    ``kasmina replay --verify`` finds with every recorded digest matching."""
    ring = KeyRing.generate()
    config = KasminaConfig.load(env={}, overrides={"lifecycle.training_steps": 6, "bus.batch": 5})
    inputs: list[Message] = [_report(s) for s in range(1, 5)]
    inputs += [pb.SeedCommand(slot=SLOT, germinate=pb.Germinate(blueprint="mlp"))]
    inputs += [_report(s) for s in (5, 6, 4, 7)]
    inputs += [pb.StepReport(step=8, val_accuracy=0.0), pb.SeedCommand(slot=SLOT, pause=pb.Pause())]
    inputs += [_report(s) for s in range(9, 20)]
    shell, logic = await _serve(bus, run_id, ring, inputs, config)
    log = await _log(bus, run_id, ring)
    merged_away = len(inputs) + 1 - sum(1 for _, k, _ in log if k in kinds.LIFECYCLE_EVENTS)
    assert merged_away > 0 and fold_events(log).seeds[SLOT] == logic.state
    assert verify_digests(log) == [] and any(k == kinds.STATE_DIGEST for _, k, _ in log)
    live = logic.digests()
    await shell.rebuild()
    assert logic.digests() == live
    backend = request.node.callspec.params["bus"]
    url = real_redis_url() if backend == "redis" else f"{backend}://{run_id}"
    keys = tmp_path / "keys.json"
    ring.save(keys)
    args = build_parser().parse_args(
        ["replay", url, "--run", run_id, "--keys", str(keys), "--json", "--verify"]
    )
    code = await anyio.to_thread.run_sync(replay.run, args)
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and summary["verified"]


def _shell(bus: Bus, run: str, ring: KeyRing, config: KasminaConfig) -> ActorShell:
    """A SeedActor shell of ``run``, driven batch by batch by the test (not started)."""
    return ActorShell(
        seed_logic(SLOT, config),
        bus=bus,
        run=run,
        inbox=streams.inbox(run, "seed", SLOT),
        signer=Signer(ring, f"seed:{SLOT}"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
    )


async def test_a_rival_commit_of_the_carrier_entry_loses_no_accuracy(bus: Bus, run_id: str) -> None:
    """Two reports merged onto the second one's entry, which a rival (a shell that held the
    lease meanwhile) had committed alone: the first report's accuracy, acked with the run, still
    reaches the log (with the next batch), and the log re-folds to the live state."""
    ring, config = KeyRing.generate(), KasminaConfig()
    inbox = streams.inbox(run_id, "seed", SLOT)
    trainer = Signer(ring, "trainer")

    async def send(*reports: pb.StepReport) -> list[Entry]:
        frames = [trainer.seal(kinds.STEP_REPORT, r, stream=inbox) for r in reports]
        await bus.publish_many([Append(inbox, {FRAME: f}) for f in frames])
        return await bus.read(inbox, shell.group, shell.consumer_name, block_ms=0)

    def report(step: int, val: float) -> pb.StepReport:
        sent = pb.StepReport(step=step, val_accuracy=val)
        sent.slots.add(slot=SLOT, alpha=step / 10)
        return sent

    shell, rival = _shell(bus, run_id, ring, config), _shell(bus, run_id, ring, config)
    await bus.ensure_group(inbox, shell.group)
    assert await shell.lease.take()
    await shell.rebuild()
    await shell._process(await send(report(1, 0.5)))
    batch = await send(report(2, 0.75), report(3, 0.0))
    await shell.lease.release()  # the rival serves a while: it commits the third report alone
    assert await rival.lease.take()
    await rival.rebuild()
    await rival._process(batch[1:])
    await rival.lease.release()
    assert await shell.lease.take()
    await shell._process(batch)  # the second report merged onto the third's entry
    await shell._process(await send(report(4, 0.0)))
    log = await _log(bus, run_id, ring)
    folded = fold_events(log).seeds[SLOT]
    assert folded == shell.logic.state  # type: ignore[attr-defined]
    assert (folded.last_step, folded.alpha, folded.val_acc) == (4, 0.4, 0.75)
    assert verify_digests(log) == []
    await shell.rebuild()
    assert shell.logic.state == folded  # type: ignore[attr-defined]
