"""Default configuration, real torch runtime: a seed that leaks only in train mode passes the
attach checks, the sampled probes catch it, the breaker culls it, and the SafetyActor's rollback
puts the host back bit for bit to the checkpoint taken before the seed entered the forward."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.checkpoint import read_checkpoint
from actors.execution.restore import host_state
from actors.execution.testing import LEAKY_TRAIN, register_train_leak, unregister_train_leak
from bus import open_bus
from contracts import KasminaConfig
from leyline import pb
from scenarios.cluster import running_cluster

SLOT = "body.s0"


class Net(nn.Module):
    """Linear-LayerNorm-GELU body with dropout and a head (not the project's TinyMLP)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 20), nn.LayerNorm(20), nn.GELU())
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(20, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.head(self.drop(self.body(x)))
        return out


@pytest.fixture
def train_leak() -> Iterator[None]:
    """The planted train-mode leak, registered for this test only."""
    register_train_leak()
    yield
    unregister_train_leak()


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("train_leak")
async def test_default_config_culls_a_leak_and_rolls_the_host_back(tmp_path: pathlib.Path) -> None:
    """At every default, the leak is struck and culled by the breaker, and the rollback leaves
    the host (parameters, buffers, optimizer) equal to the pre-leak checkpoint and to the host as
    it was at the end of the step the seed entered the forward."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(128, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = Net()
    slots = insert_slots(model, {SLOT: "body"})
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-3)
    config = KasminaConfig.load(env={})
    settings = RuntimeConfig.from_config(config, device="cpu", checkpoint_dir=str(tmp_path))
    runtime = ExecutionRuntime(model, slots, opt, settings, probe_batch=(x[:32], y[:32]))
    bus = open_bus(f"memory://{uuid.uuid4().hex}")
    snapshots: dict[int, dict[str, Tensor]] = {}
    async with running_cluster(
        bus, run="rollback", slots=[SLOT], runtimes=[runtime], config=config
    ) as cl:
        for step in range(400):
            idx = torch.randint(0, 128, (32,))
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            await cl.step(step, loss=loss, batch=(x[idx], y[idx]))
            await cl.settle()
            snapshots[step] = {k: v.clone() for k, v in host_state(model).items()}
            if step == 1:
                await cl.client.command(SLOT, "germinate", blueprint=LEAKY_TRAIN)
            if runtime.rolled_back:
                break
        events = await cl.events()
    await bus.close()
    assert runtime.rolled_back, "no rollback happened"
    _, entered, path = runtime.rolled_back[0]
    verdicts = [m for _, k, m in events if k == "safety.verdict" and m.slot == SLOT]
    strikes = [v for v in verdicts if v.action == pb.VERDICT_STRIKE]
    assert len(strikes) >= 3 and all("ISOLATION_VIOLATION" in v.reason for v in strikes)
    assert [v.action for v in verdicts].count(pb.VERDICT_CULL) == 1
    transitions = [m for _, k, m in events if k == "lifecycle.transition"]
    culled = [t for t in transitions if t.to_stage == pb.SEED_STAGE_CULLED]
    assert culled and "circuit breaker" in culled[0].cause
    training = [t for t in transitions if t.to_stage == pb.SEED_STAGE_TRAINING]
    assert training and entered == runtime.states[SLOT].forward_since
    # the host now is the pre-leak checkpoint, and the host of that step, bit for bit
    saved = read_checkpoint(path)
    now = host_state(model)
    assert saved["step"] == entered and set(saved["host"]) == set(now)
    assert all(torch.equal(now[k], saved["host"][k]) for k in now)
    assert all(torch.equal(now[k], snapshots[entered][k]) for k in now)
    assert not all(torch.equal(now[k], snapshots[max(snapshots) - 1][k]) for k in now)
    state = opt.state_dict()["state"]
    assert all(
        torch.equal(state[i]["exp_avg"], saved["host_optimizer"]["state"][i]["exp_avg"])
        for i in saved["host_optimizer"]["state"]
    )
