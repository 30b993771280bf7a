"""Safety settings that work together; emergency checkpoints that hold the whole training state at
the step they are labelled with; rollback requests."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import backward, germinate, order
from other_models import NormMLP, batches, host_tensors, same
from pydantic import ValidationError

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.checkpoint import read_checkpoint
from contracts import KasminaConfig
from leyline import pb


def test_safety_settings_that_can_never_open_a_breaker_are_refused() -> None:
    """Probes every 50 steps, 3 strikes, a 100-step window: refused with the reason; the defaults
    and a fitting combination load; the runtime settings follow the run's config."""
    with pytest.raises(ValidationError, match="could never open"):
        KasminaConfig.load(env={}, overrides={"safety.probe_every_steps": 50})
    with pytest.raises(ValidationError, match="could never open"):
        KasminaConfig.load(env={}, overrides={"safety.strike_window_steps": 40})
    ok = KasminaConfig.load(
        env={}, overrides={"safety.probe_every_steps": 50, "safety.strike_window_steps": 101}
    )
    default = KasminaConfig.load(env={})
    span = (default.safety.strikes_to_open - 1) * default.safety.probe_every_steps
    assert span < default.safety.strike_window_steps
    rc = RuntimeConfig.from_config(ok, device="cpu")
    assert (rc.probe_every, rc.barrier_frequency) == (50, ok.barrier.frequency)
    assert RuntimeConfig().probe_every == default.safety.probe_every_steps


def _setup(
    tmp: pathlib.Path,
) -> tuple[torch.nn.Module, dict[str, object], torch.optim.Optimizer, ExecutionRuntime]:
    torch.manual_seed(0)
    model = NormMLP()
    slots = insert_slots(model, {"m": "mid"})
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-3)
    cfg = RuntimeConfig(
        device="cpu", probe_every=0, report_every=0, barrier_frequency=0, checkpoint_dir=str(tmp)
    )
    rt = ExecutionRuntime(model, slots, opt, cfg, probe_batch=batches((16, 12), 3, 1, 99)[0])
    return model, dict(slots), opt, rt


def test_emergency_checkpoint_holds_host_seeds_and_optimizers_of_its_step(
    tmp_path: pathlib.Path,
) -> None:
    """Asked for between steps, the checkpoint is written at the end of the next step and labelled
    with it: host tensors, host optimizer, seed weights and seed optimizer all as of that step."""
    model, slots, opt, rt = _setup(tmp_path)
    data = batches((16, 12), 3, 4, seed=1)
    rt.submit(germinate("m", 1))
    rt.submit(order("m", pb.SEED_STAGE_TRAINING, 2))
    for step in range(8):
        if step == 5:
            rt.request_checkpoint("test")
        x, y = data[step % 4]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss, batch=(x, y))
        if step == 5:
            host, seed = (
                host_tensors(model),
                [p.detach().clone() for p in slots["m"].seed_parameters()],
            )  # type: ignore[attr-defined]
            host_opt = opt.state_dict()["state"][0]["exp_avg"].clone()
            seed_opt = rt.states["m"].optimizer.state_dict()["state"][0]["exp_avg"].clone()  # type: ignore[union-attr]
    emergency = [(s, p) for s, p in rt.checkpoints if pathlib.Path(p).name.startswith("emergency-")]
    assert [s for s, _ in emergency] == [5]
    saved = read_checkpoint(emergency[0][1])
    assert saved["step"] == 5
    assert same(host, {k: v for k, v in saved["host"].items()}) == []
    assert torch.equal(saved["host_optimizer"]["state"][0]["exp_avg"], host_opt)
    entry = saved["slots"]["m"]
    assert all(torch.equal(a, b) for a, b in zip(seed, entry["seed"].values(), strict=True))
    assert torch.equal(entry["optimizer"]["state"][0]["exp_avg"], seed_opt)


def test_rollback_waits_for_the_seed_to_leave_the_forward_and_restores_the_guard(
    tmp_path: pathlib.Path,
) -> None:
    """A rollback asked while the seed is still TRAINING waits; once the seed is culled the host
    goes back to the guard checkpoint written when the seed entered the forward."""
    model, _, opt, rt = _setup(tmp_path)
    data = batches((16, 12), 3, 4, seed=2)
    rt.submit(germinate("m", 1))
    rt.submit(order("m", pb.SEED_STAGE_TRAINING, 2))
    rt.submit(order("m", pb.SEED_STAGE_CULLED, 9))
    at: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(12):
        if step == 6:
            rt.request_rollback("test", ["m"], step)
        x, y = data[step % 4]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss)
        at[step] = host_tensors(model)
        if step in (6, 8):
            assert not rt.rolled_back  # the seed is still in the forward
    assert [(a, s) for a, s, _ in rt.rolled_back] == [(9, 2)]
    assert same(at[9], at[2]) == [] and same(at[8], at[2]) != []
