"""Structured pruning across processes on the real Redis: `kasmina publish prune` signs a mask
order, a trainer's ExecutionActor applies it at its step and acknowledges it on the run's pruning
stream, next to the unit importance it exports; a malformed mask is refused with its reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
import torch
import torch.nn.functional as F
from test_cli_run import cli_env, kasmina  # noqa: F401  (the fixture is used by name)

from actors.assemble import live_verifier
from actors.eventlog import LogRecord, read_log
from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.actor import ExecutionActor
from actors.execution.testing import TinyMLP
from bus import open_bus
from contracts import KasminaConfig, KeyRing, Signer, Verifier, streams
from leyline import pb

pytestmark = pytest.mark.redis


def _runtime() -> ExecutionRuntime:
    torch.manual_seed(0)
    model = TinyMLP()
    slots = insert_slots(model, {"a": "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    cfg = RuntimeConfig(device="cpu", probe_every=0, report_every=0, barrier_frequency=0,
                        importance_every=10)  # fmt: skip
    return ExecutionRuntime(model, slots, opt, cfg)


def _step(rt: ExecutionRuntime, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    rt.host_optimizer.zero_grad()
    loss = F.cross_entropy(rt.model(x), y)
    loss.backward()
    rt.host_optimizer.step()
    rt.on_step(step, loss)


async def _train_while(
    env: dict[str, str], rt: ExecutionRuntime, *cli: str
) -> subprocess.CompletedProcess[str]:
    """Train (flushing the outbox) while the CLI command runs; returns its result."""
    run, ring = env["KASMINA_RUN"], KeyRing.load(env["KASMINA_KEYS"])
    bus = open_bus(env["KASMINA_REDIS"])
    config = KasminaConfig.load(env["KASMINA_CONFIG"], env={})
    actor = ExecutionActor(rt, bus=bus, run=run, signer=Signer(ring, "trainer"),
                           verifier=live_verifier(bus, run, ring, config), config=config,
                           heartbeat_s=0.1)  # fmt: skip
    done: list[subprocess.CompletedProcess[str]] = []

    async def command() -> None:
        done.append(await anyio.to_thread.run_sync(lambda: kasmina(*cli, env=env)))

    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        tg.start_soon(command)
        with anyio.fail_after(60):
            while not done:
                _step(rt, rt.step + 1)
                await actor.flush()
                await anyio.sleep(0.01)
        await actor.stop()
    await bus.close()
    return done[0]


async def _pruning_stream(env: dict[str, str]) -> list[tuple[str, object]]:
    bus = open_bus(env["KASMINA_REDIS"])
    verifier = Verifier(KeyRing.load(env["KASMINA_KEYS"]), replay=True)
    stream = streams.pruning(env["KASMINA_RUN"])
    out = [(r.kind, r.message) async for r in read_log(bus, stream, verifier)
           if isinstance(r, LogRecord)]  # fmt: skip
    await bus.close()
    return out


def test_cli_prune_order_is_applied_and_acknowledged_on_the_pruning_stream(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`publish prune --wait` lands at the step it chose (after the trainer's latest), masks the
    units, exits 0 with the rank's ack; the stream holds signed importance reports and the ack."""
    rt = _runtime()
    keep = [1, 0] * 8
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"fc2": keep}))
    done = anyio.run(_train_while, cli_env, rt, "publish", "prune", "--masks", str(masks),
                     "--wait", "--timeout", "40")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["result"] == "accepted" and out["ranks"] == 1 and out["modules"] == ["fc2"]
    (ack,) = out["acks"]
    assert ack["ok"] and ack["pruned_units"] == 8 and ack["applied_at_step"] == out["apply_at_step"]
    assert rt.pruner.masks["fc2"].tolist() == [bool(k) for k in keep]
    records = anyio.run(_pruning_stream, cli_env)
    reports = [m for k, m in records if k == "pruning.importance"]
    acks = [m for k, m in records if k == "pruning.ack"]
    assert reports and all(isinstance(m, pb.ImportanceReport) for m in reports)
    assert {m.module for m in reports[0].modules} == {"fc1.host", "fc2", "head"}  # type: ignore[attr-defined]
    assert [a.order_id for a in acks] == [out["order_id"]]  # type: ignore[attr-defined]


def test_cli_prune_with_a_malformed_mask_is_refused_with_its_reason(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A mask of the wrong width is refused by the trainer: exit 1, the reason, no mask set."""
    rt = _runtime()
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"fc2": [1, 0, 1]}))
    done = anyio.run(_train_while, cli_env, rt, "publish", "prune", "--masks", str(masks),
                     "--wait", "--timeout", "40")  # fmt: skip
    assert done.returncode == 1, done.stderr
    (ack,) = json.loads(done.stdout)["acks"]
    assert not ack["ok"] and "has 3 flags; the module has 16" in ack["error"]
    assert rt.pruner.masks == {}


def test_cli_prune_without_a_trainer_says_so_at_once(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """With no trainer ever attached to the run, `publish prune` says on stderr, before any
    wait, that the order waits in rank 0's inbox for one (it used to wait out --timeout in
    silence), then reports the wait that timed out."""
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"fc2": [1] * 16}))
    done = kasmina("publish", "prune", "--masks", str(masks), "--at-step", "5", "--wait",
                   "--timeout", "1", env=cli_env)  # fmt: skip
    assert done.stderr.splitlines()[0] == (
        f"kasmina publish: no trainer has attached to run {cli_env['KASMINA_RUN']}: the order "
        "waits in rank 0's inbox for one (start `kasmina train`, or attach your loop)"
    )
    assert json.loads(done.stdout)["result"] == "timed_out"


async def _register_phantom_rank(env: dict[str, str]) -> None:
    bus = open_bus(env["KASMINA_REDIS"])
    run = env["KASMINA_RUN"]
    await bus.register(streams.registry(run, "execution"), streams.inbox(run, "execution", "7"))
    await bus.close()


def test_cli_prune_that_times_out_keeps_the_acks_it_has_and_names_the_missing_ranks(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A rank that never answers (here a phantom one a writer added to the registry) made the
    wait time out with no acks at all, though rank 0 had applied the mask: the acks received are
    kept, and the ranks that did not answer are named."""
    anyio.run(_register_phantom_rank, cli_env)
    rt = _runtime()
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"fc2": [1, 0] * 8}))
    done = anyio.run(_train_while, cli_env, rt, "publish", "prune", "--masks", str(masks),
                     "--wait", "--timeout", "6")  # fmt: skip
    assert done.returncode == 4, done.stderr
    out = json.loads(done.stdout)
    assert out["result"] == "timed_out" and out["ranks"] == 2
    assert [(a["rank"], a["ok"]) for a in out["acks"]] == [(0, True)]
    assert out["missing"] == ["execution:7"]
