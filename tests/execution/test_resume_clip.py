"""A runtime restored from a checkpoint taken while a seed is in TRAINING resumes as the
uninterrupted run: its first forward already detaches the seed, so a clip over
``model.parameters()`` stays the seedless one."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from execution_helpers import germinate, order, runtime
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, insert_slots
from leyline import pb


def _model(seeded: bool) -> tuple[nn.Module, torch.optim.Optimizer, ExecutionRuntime | None]:
    torch.manual_seed(3)
    model: nn.Module = nn.Sequential(
        nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 5)
    )
    slots = insert_slots(model, {"s": "2"}) if seeded else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, runtime(model, slots, opt, probe_batch=_batch(-1)) if seeded else None


def _batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 10, generator=g), torch.randint(0, 5, (16,), generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, rt: ExecutionRuntime | None,
           steps: range) -> None:  # fmt: skip
    for step in steps:
        x, y = _batch(step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)  # the seed must not be in it
        opt.step()
        if rt is not None:
            rt.on_step(step, batch=(x, y))


def _host(model: nn.Module) -> dict[str, Tensor]:
    return {k.replace(".host.", "."): v for k, v in model.state_dict().items() if ".slot." not in k}


def test_a_restore_mid_training_keeps_the_host_bit_identical_from_the_first_step(
    tmp_path: Path,
) -> None:
    """Checkpoint at step 9 of a seed's TRAINING (the loop passes ``batch=``), restore into a
    fresh model, optimizer and runtime, train on: host equal to the seedless run and to the
    uninterrupted one, bit for bit (before, the first resumed step let the seed's gradient into
    the clip)."""
    plain, plain_opt, _ = _model(seeded=False)
    _train(plain, plain_opt, None, range(20))
    runs = []
    for resumed in (False, True):
        model, opt, rt = _model(seeded=True)
        assert rt is not None
        rt.submit(germinate("s", 1))
        rt.submit(order("s", pb.SEED_STAGE_TRAINING, 2))
        _train(model, opt, rt, range(10 if resumed else 20))
        if resumed:
            rt.checkpoint(str(tmp_path / "at9.kas"))
            model, opt, rt = _model(seeded=True)
            assert rt is not None
            at = rt.restore(str(tmp_path / "at9.kas"))
            assert at == 9 and rt.shadow_fed and rt.slots["s"].shadow_fed
            _train(model, opt, rt, range(at + 1, 20))
        assert rt.slots["s"].stage == pb.SEED_STAGE_TRAINING
        runs.append(_host(model))
    for host in runs:
        assert host.keys() == _host(plain).keys()
        assert all(torch.equal(host[k], v) for k, v in _host(plain).items())
