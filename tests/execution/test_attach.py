"""kasmina.attach: one call serves a plain loop's ExecutionActor (in-process actors here), per-slot
Prometheus gauges from the first report, and the guards a user hits first."""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from actors.eventlog import read_verified
from actors.seed import stage_name
from contracts import KasminaConfig, streams
from leyline import pb

CONFIG = KasminaConfig.load(
    env={},
    overrides={
        "lifecycle.training_steps": 30,
        "lifecycle.blend_steps": 20,
        "lifecycle.shadowing_steps": 10,
        "lifecycle.probationary_steps": 10,
        "barrier.frequency": 5,
        "gates.min_training_steps": 15,
        "gates.max_latency_overhead": 50.0,  # timing on a shared machine is noisy
        "gates.loss_spike_sigma": 6.0,
    },
)


def _task() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, :4].sum(1) * x[:, 4:].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y


def _step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss


def _telemetry_text(kas: kasmina.Attached) -> str:
    assert kas.cluster is not None
    (shell,) = [s for s in kas.cluster.shells if s.logic.name == "telemetry"]
    text: bytes = shell.logic.metrics_text()  # type: ignore[attr-defined]
    return text.decode()


def _gauge(text: str, name: str, slot: str) -> float:
    match = re.search(rf'^{name}{{slot="{slot}"}} (\S+)$', text, re.M)
    assert match is not None, f"{name} for {slot} not in the scrape"
    return float(match.group(1))


def test_in_process_attach_grows_a_seed() -> None:
    """A plain loop with one attach call (and every actor in-process) walks a slot to FOSSILIZED;
    the loop receives a step confirmation of every order, the controller sees the same ones, and
    each stage move into the forward applied on its step, after its barrier's commit."""
    model, opt, x, y = _task()
    confirmed: list[kasmina.StepConfirmation] = []

    def evaluate(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(x[:64])
        return F.cross_entropy(logits, y[:64]).item(), (
            logits.argmax(1) == y[:64]
        ).float().mean().item()

    with kasmina.attach(
        model,
        {"h": "1"},
        opt,
        config=CONFIG,
        device="cpu",
        probe_batch=(x[:64], y[:64]),
        validation=(x, y),  # G4's paired per-example test
        evaluate=evaluate,
        on_confirm=confirmed.append,
    ) as kas:
        for step in range(160):
            idx = torch.randint(0, 256, (32,))
            loss = _step(model, opt, x[idx], y[idx])
            val_loss, val_acc = evaluate(model)
            kas.on_step(step, loss, val_loss=val_loss, val_accuracy=val_acc, batch=(x[idx], y[idx]))
            if step == 2:
                kas.germinate("h", "residual_mlp", params={"hidden": 8, "lr": 0.01})
        walk = [
            stage_name(m.to_stage)
            for _, k, m in kas.events()
            if k == "lifecycle.transition" and m.slot == "h"
        ]
        assert walk == [
            "DORMANT",
            "GERMINATED",
            "TRAINING",
            "BLENDING",
            "SHADOWING",
            "PROBATIONARY",
            "FOSSILIZED",
        ]
        assert kas.stage("h") == "FOSSILIZED"
        assert kas.confirmations() == confirmed and all(c.ok for c in confirmed)
        seen = kas.portal.call(kas.client.confirmations)
        assert [(a.order_id, a.applied_at_step) for a in seen] == [
            (c.order_id, c.step) for c in confirmed
        ]
        gated = {c.stage: c for c in confirmed if c.barrier is not None}
        assert set(gated) == {"BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED"}
        commits = {m.barrier_step for _, k, m in kas.events() if k == "barrier.commit"}
        for c in gated.values():  # lockstep: the commit is in before the order's step
            assert c.barrier in commits and c.step == c.barrier + CONFIG.barrier.frequency
        kas.on_step(160, 0.5)  # a report step, left in the outbox at exit
    assert len(kas.runtime.outbox) == 0  # flushed on exit


def test_scrape_after_20_seeded_steps_shows_stage_and_alpha() -> None:
    """Prometheus shows a seeded slot's stage and alpha after 20 steps (no global summary yet)."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x[:64], y[:64])
    ) as kas:
        kas.germinate("h", "residual_mlp", params={"hidden": 8})
        for step in range(21):
            kas.on_step(step, _step(model, opt, x, y))
        kas.settle()
        text = _telemetry_text(kas)
        slot = kas.runtime.slots["h"]
        assert int(slot.stage) in (pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TRAINING)
        assert _gauge(text, "kasmina_slot_stage", "h") == int(slot.stage)
        assert _gauge(text, "kasmina_slot_alpha", "h") == float(slot.alpha)
        assert _gauge(text, "kasmina_slot_last_step", "h") == 20
        assert f'kasmina_slot_stage_info{{slot="h",stage="{kas.stage("h")}"}} 1.0' in text
        assert "kasmina_metric_mean{" not in text  # far from the first global summary


def test_waiting_from_the_training_thread_is_refused() -> None:
    """command(wait=True) from the thread that calls on_step raises instead of deadlocking."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x, y)
    ) as kas:
        kas.on_step(0, _step(model, opt, x, y))
        with pytest.raises(RuntimeError, match="training thread"):
            kas.command("h", "germinate", blueprint="residual_mlp", wait=True)
        assert kas.events()  # nothing was sent: only the bootstrap transitions
        assert all(k != "lifecycle.refused" for _, k, _ in kas.events())


def test_world_size_must_match_the_barrier() -> None:
    """A rank count that differs from barrier.world_size is refused before anything starts."""
    model, opt, _, _ = _task()
    with (
        pytest.raises(ValueError, match="KASMINA__BARRIER__WORLD_SIZE=2"),
        kasmina.attach(model, {"h": "1"}, opt, config=CONFIG, world_size=2),
    ):
        pass
    assert isinstance(model[1], nn.ReLU)  # no slot was inserted


def test_a_run_on_redis_needs_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attaching to a bus without a key file says which key is missing."""
    monkeypatch.delenv("KASMINA_KEYS", raising=False)
    model, opt, _, _ = _task()
    with (
        pytest.raises(ValueError, match="keys="),
        kasmina.attach(model, {"h": "1"}, opt, redis="memory://nokeys", config=CONFIG),
    ):
        pass
    assert isinstance(model[1], nn.ReLU)


def test_germination_on_a_transformer_block_is_exact() -> None:
    """A host whose modules take a no-grad fast path (nn.TransformerEncoderLayer) germinates with
    a zero output delta: the base forward of G0 runs the same (grad) path as the probe."""
    from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
    from actors.execution.mailbox import KIND_ACK
    from contracts import evidence as ev

    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(
        16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
    )
    model = nn.Sequential(nn.Linear(8, 16), block, nn.Flatten(), nn.Linear(16 * 4, 3))
    slots = insert_slots(model, {"b": "1"})
    x, y = torch.randn(32, 4, 8), torch.randint(0, 3, (32,))
    rt = ExecutionRuntime(
        model,
        slots,
        torch.optim.SGD(model.parameters(), lr=0.1),
        RuntimeConfig(device="cpu", barrier_frequency=1),
        probe_batch=(x, y),
    )
    rt.submit(
        pb.ExecutionOrder(
            order_id="g",
            slot="b",
            stage=pb.SEED_STAGE_GERMINATED,
            apply_at_step=0,
            germinate=pb.Germinate(blueprint="residual_mlp"),
        )
    )
    rt.on_step(0, 1.0)
    (ack,) = [m for kind, m in rt.drain_outbox() if kind == KIND_ACK]
    assert ack.ok, ack.error
    assert ack.evidence.metrics[ev.GERMINATION_MAX_ABS_DELTA] == 0.0


def test_attach_passes_the_memory_settings_and_g0_refuses_over_budget() -> None:
    """attach(seed_memory_budget=, release_ttl_steps=, fossil_merge=) reach the runtime; a
    germination over the budget is refused by G0 on its memory headroom, the slot stays DORMANT."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model,
        {"h": "1"},
        opt,
        config=CONFIG,
        device="cpu",
        probe_batch=(x, y),
        seed_memory_budget=64,
        release_ttl_steps=3,
        fossil_merge=True,
    ) as kas:
        cfg = kas.runtime.config
        assert (cfg.seed_memory_budget, cfg.release_ttl_steps, cfg.fossil_merge) == (64, 3, True)
        kas.command("h", "germinate", blueprint="residual_mlp")
        refused = []
        for step in range(40):
            kas.on_step(step, _step(model, opt, x, y))
            refused = [m for _, k, m in kas.events() if k == "lifecycle.refused"]
            if refused:
                break
        assert refused, "the germination over budget was never refused"
        assert "seed_memory_headroom" in refused[0].reason and "budget 64 B" in refused[0].reason
        assert kas.runtime.slots["h"].seed is None


def test_a_lockstep_command_from_the_training_thread_is_decided_before_it_returns() -> None:
    """In lockstep, a germinate sent between two barrier steps from the training thread is
    decided when the call returns, even with a SeedActor slowed to 50 ms a batch, and it comes
    after that step's report in the slot's inbox: the actors decide it at the step it was sent,
    whatever their speed."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu",
        probe_batch=(x[:64], y[:64]), report_every=1,
    ) as kas:  # fmt: skip
        assert kas.cluster is not None
        (shell,) = [s for s in kas.cluster.shells if s.logic.name == "seed:h"]
        decide = shell._process

        async def slowly(batch: Any) -> None:
            await anyio.sleep(0.05)  # a slow actor, not a synchronisation
            await decide(batch)

        shell._process = slowly  # type: ignore[method-assign]
        for step in range(4):
            loss = _step(model, opt, x[:32], y[:32])
            kas.on_step(step, loss, batch=(x[:32], y[:32]))
        sent = kas.germinate("h", "residual_mlp", params={"hidden": 8})
        records, _ = kas.portal.call(read_verified, kas.bus, streams.outcomes(kas.run), kas.ring)
        assert sent in {m.command_id for _, _, m in records}
        inbox, _ = kas.portal.call(
            read_verified, kas.bus, streams.inbox(kas.run, "seed", "h"), kas.ring
        )
        order = [("report", m.step) if k == "step.report" else ("command", 0) for _, k, m in inbox]
        assert order.index(("command", 0)) > order.index(("report", 3))


def test_a_command_to_a_slot_the_model_lacks_is_refused_before_anything_is_sent() -> None:
    """``kas.germinate`` on a misspelt slot raises a ValueError naming the model's slots and
    writes nothing (no inbox appears for it); ``kas.stage`` refuses it the same way; the run
    keeps settling at once."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x[:64], y[:64])
    ) as kas:
        with pytest.raises(ValueError, match=r"no slot 'h_typo' in this model \(its slots: h\)"):
            kas.germinate("h_typo", "residual_mlp")
        with pytest.raises(ValueError, match="no slot 'nope'"):
            kas.stage("nope")
        names = kas.portal.call(kas.bus.streams, streams.inbox(kas.run, "seed") + ":*")
        assert streams.inbox(kas.run, "seed", "h_typo") not in names
        assert kas.settle(5.0)


def test_a_phantom_inbox_or_group_does_not_hold_up_a_lockstep_settle() -> None:
    """What another writer adds to Redis is not waited for: a phantom slot's inbox with a group
    and an entry, a phantom rank in the execution registry, a second group lagging on a real
    inbox. The lockstep settle succeeds (it would wait out its whole timeout otherwise), and the
    run's own traffic is still waited for: a germinate sent just before is decided."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x[:64], y[:64])
    ) as kas:
        bus, run = kas.bus, kas.run
        phantom = streams.inbox(run, "seed", "phantom")
        kas.portal.call(bus.publish, phantom, {"m": b"not a frame"})
        kas.portal.call(bus.ensure_group, phantom, "actor:seed:phantom")
        rank7 = streams.inbox(run, "execution", "7")
        kas.portal.call(bus.register, streams.registry(run, "execution"), rank7)
        kas.portal.call(bus.publish, rank7, {"m": b"not a frame"})
        kas.portal.call(bus.ensure_group, streams.inbox(run, "gate"), "evil")
        kas.portal.call(bus.publish, streams.inbox(run, "gate"), {"m": b"not a frame"})
        assert kas.settle(3.0)
        assert kas.unsettled == 0
        kas.on_step(0, _step(model, opt, x, y))
        kas.germinate("h", "residual_mlp")  # the lockstep command settles before it returns
        waits = [m.awaiting for _, k, m in kas.events() if k == "lifecycle.progress"]
        assert "g0_evidence" in waits  # the SeedActor took it and asked for a probe


def test_junk_or_copies_trickled_into_inboxes_do_not_hold_up_a_lockstep_settle() -> None:
    """A writer trickling junk into one of the run's inboxes, and copies of a genuine frame into
    another, kept every settle waiting out its whole timeout (each entry moved the group's
    delivered id); only entries that can have an effect count now, and the settle succeeds
    while the trickle goes on."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x[:64], y[:64])
    ) as kas:
        bus, run = kas.bus, kas.run
        for step in range(3):
            kas.on_step(step, _step(model, opt, x, y))
        assert kas.settle(5.0)
        inboxes = [streams.inbox(run, k) for k in ("telemetry", "safety", "gate", "barrier")]
        genuine = [e for i in inboxes for e in kas.portal.call(bus.range, i)][-1]

        async def trickle() -> None:
            for n in range(100_000):
                await bus.publish(streams.inbox(run, "telemetry"), {"m": b"junk %d" % n})
                await bus.publish(genuine.stream, dict(genuine.fields))
                await anyio.sleep(0.002)

        future = kas.portal.start_task_soon(trickle)
        try:
            assert kas.settle(4.0)
            assert kas.unsettled == 0
        finally:
            future.cancel()


def test_a_blueprint_parameter_passed_as_a_keyword_is_refused_and_nothing_sent() -> None:
    """``kas.germinate(slot, bp, hidden=8)`` built the default seed (the keyword was dropped);
    it is a TypeError naming ``params={...}`` now, and the slot's inbox gets nothing."""
    model, opt, x, y = _task()
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x[:64], y[:64])
    ) as kas:
        inbox = streams.inbox(kas.run, "seed", "h")
        before = len(kas.portal.call(kas.bus.range, inbox))
        with pytest.raises(TypeError, match=r"params=\{"):
            kas.germinate("h", "residual_mlp", hidden=8)
        assert len(kas.portal.call(kas.bus.range, inbox)) == before
        assert kas.stage("h") == "DORMANT"
