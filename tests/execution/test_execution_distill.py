"""Knowledge distillation: a TRAINING seed learns from a teacher's soft targets on the shadow-loss
path, the teacher loaded from tensor-only files, run without grad, the host untouched."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import backward, data, germinate, host_state, kinds, order, runtime
from safetensors.torch import save_file
from torch import Tensor, nn

from actors.execution import RuntimeConfig, SeedSlot, host_parameters, insert_slots, kd_loss
from actors.execution.distill import load_teacher
from actors.execution.evidence import on_mode
from actors.execution.probing import probe_mode
from actors.seed.params import check_germinate
from leyline import pb


def _student(seed: int) -> tuple[nn.Module, dict[str, SeedSlot]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    return model, insert_slots(model, {"a": "0", "b": "3"})


def _teacher(seed: int = 7, out: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, out))


def _loop(model: nn.Module, opt: torch.optim.Optimizer, rt: object, steps: int) -> None:
    batches = data(6)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss, batch=(x, y))  # type: ignore[attr-defined]


def _run(teacher: nn.Module | None, **kw: object) -> tuple[list[Tensor], list[Tensor]]:
    model, slots = _student(1)
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-2)
    rt = runtime(model, slots, opt, probe_every=3, report_every=2, teacher=teacher, **kw)
    torch.manual_seed(123)
    if teacher is not None or kw:
        rt.submit(germinate("a", 1, params={"lr": 0.05}))
        rt.submit(germinate("b", 1, blueprint="lowrank"))
        rt.submit(order("a", pb.SEED_STAGE_TRAINING, 2))
        rt.submit(order("b", pb.SEED_STAGE_TRAINING, 2))
    _loop(model, opt, rt, 16)
    assert all(a.ok for a in kinds(rt.drain_outbox(), "exec.ack"))
    seeds = [p.detach().clone() for s in slots.values() for p in s.seed_parameters()]
    return host_state(model, slots), seeds


def test_distilling_seeds_leave_the_host_bit_identical() -> None:
    """With a teacher (dropout inside, probes on), host params equal a seedless run bit for bit,
    and the seeds learn something else than without the teacher."""
    host_plain, _ = _run(None)
    host_kd, seeds_kd = _run(_teacher())
    host_task, seeds_task = _run(None, kd_weight=0.3)  # a setting alone: no teacher, no KD
    assert all(torch.equal(a, b) for a, b in zip(host_plain, host_kd, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(host_plain, host_task, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(seeds_kd, seeds_task, strict=True))


def _one_training_seed(
    teacher: nn.Module | None, **params: float
) -> tuple[nn.Module, dict[str, SeedSlot], object]:
    model, slots = _student(2)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, teacher=teacher, kd_temperature=3.0, kd_weight=0.4)
    rt.submit(germinate("a", 0, params={"lr": 0.05, **params}))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0))
    rt.on_step(0)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert acks and all(a.ok for a in acks), acks
    return model, slots, rt


def _reference_grads(
    model: nn.Module, slot: SeedSlot, x: Tensor, y: Tensor, soft: Tensor | None, t: float, w: float
) -> list[Tensor]:
    params = slot.seed_parameters()
    with probe_mode(model, torch.device("cpu")), slot.forced(on_mode(slot), 1.0):
        out = model(x)
        loss = (
            F.cross_entropy(out, y)
            if soft is None
            else kd_loss(out, y, soft, temperature=t, weight=w)
        )
        return list(torch.autograd.grad(loss, params))


def test_shadow_gradient_is_the_kd_loss_gradient() -> None:
    """The seed's shadow gradient equals that of DESIGN's KD loss on the teacher's eval logits
    (RuntimeConfig's T and w, or the germinate's own), and plain CE with kd_weight = 0."""
    teacher = _teacher()
    x, y = data(1, seed=11)[0]
    with torch.no_grad():
        soft = teacher.eval()(x)
    teacher.train()
    for params, t, w in (({}, 3.0, 0.4), ({"kd_weight": 0.7, "kd_temperature": 2.0}, 2.0, 0.7)):
        model, slots, rt = _one_training_seed(teacher, **params)
        assert rt.shadow_backward((x, y)) == 1  # type: ignore[attr-defined]
        got = [p.grad for p in slots["a"].seed_parameters()]
        want = _reference_grads(model, slots["a"], x, y, soft, t, w)
        assert all(
            g is not None and torch.allclose(g, r, atol=1e-6)
            for g, r in zip(got, want, strict=True)
        )
        assert teacher.training  # its mode is restored
    model, slots, rt = _one_training_seed(teacher, kd_weight=0.0)
    rt.shadow_backward((x, y))  # type: ignore[attr-defined]
    got = [p.grad for p in slots["a"].seed_parameters()]
    want = _reference_grads(model, slots["a"], x, y, None, 1.0, 0.0)
    assert all(
        g is not None and torch.allclose(g, r, atol=1e-6) for g, r in zip(got, want, strict=True)
    )


def test_teacher_forward_saves_nothing_and_draws_no_random_numbers() -> None:
    """The teacher runs under no_grad (no tensor saved for backward: nothing to checkpoint), in
    eval mode (dropout off), and the global RNG stream is the same afterwards."""
    teacher = _teacher()
    model, slots = _student(0)
    rt = runtime(
        model, slots, torch.optim.SGD(host_parameters(model, slots), lr=0.1), teacher=teacher
    )
    x = data(1, batch=64)[0][0]
    saved: list[Tensor] = []
    state = torch.get_rng_state()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        a = rt.soft_targets(x)
    assert saved == [] and not a.requires_grad
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, rt.soft_targets(x))  # eval: dropout off


def test_autocast_and_micro_batches_give_the_same_soft_targets() -> None:
    """bf16 autocast (CPU) returns float32 logits close to full precision; micro-batches of the
    teacher give the whole batch's logits."""
    teacher = _teacher()
    x = data(1, batch=50)[0][0]
    model, slots = _student(0)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    full = runtime(model, slots, opt, teacher=teacher).soft_targets(x)
    bf16 = runtime(model, slots, opt, teacher=teacher, teacher_autocast="bfloat16").soft_targets(x)
    chunked = runtime(model, slots, opt, teacher=teacher, teacher_chunk=7).soft_targets(x)
    assert bf16.dtype == torch.float32 and full.shape == bf16.shape == chunked.shape == (50, 4)
    assert not torch.equal(bf16, full) and torch.allclose(bf16, full, atol=0.1, rtol=0.05)
    assert torch.allclose(chunked, full, atol=1e-6)


def test_teacher_loads_from_tensor_only_files(tmp_path: Path) -> None:
    """safetensors and weights_only state dicts load; a pickle of code, a misfit or non-finite
    file is refused and leaves the module as it was."""
    trained = _teacher(seed=3)
    st, pt = tmp_path / "t.safetensors", tmp_path / "t.pt"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(st))
    torch.save(trained.state_dict(), pt)
    x = data(1)[0][0]
    for path in (st, pt):
        module = load_teacher(_teacher(seed=4), path)
        assert not module.training and not any(p.requires_grad for p in module.parameters())
        assert torch.equal(module(x), trained.eval()(x))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Path("/etc/passwd")))
    bad = dict(trained.state_dict())
    bad["0.weight"] = torch.full_like(bad["0.weight"], math.nan)
    torch.save(bad, tmp_path / "nan.pt")
    save_file(
        {k: v.contiguous() for k, v in _teacher(out=3).state_dict().items()},
        str(tmp_path / "misfit.safetensors"),
    )
    for name in ("evil.pt", "nan.pt", "misfit.safetensors"):
        module = _teacher(seed=4)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        with pytest.raises(ValueError):
            load_teacher(module, tmp_path / name)
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_bad_distillation_settings_are_refused() -> None:
    """NaN/zero temperatures, weights outside [0, 1], unknown autocast types and a teacher that is
    the host are refused; so are germinations asking for KD without a teacher or with a teacher
    whose output does not fit, and the SeedActor's bounds refuse bad KD parameters."""
    for bad in ({"kd_temperature": math.nan}, {"kd_temperature": 0.0}, {"kd_weight": 1.5},
                {"teacher_autocast": "int8"}, {"teacher_chunk": -1}):  # fmt: skip
        with pytest.raises(ValueError):
            RuntimeConfig(**bad)  # type: ignore[arg-type]
    model, slots = _student(0)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    with pytest.raises(ValueError, match="shares"):
        runtime(model, slots, opt, teacher=model)
    for teacher, params, why in ((None, {"kd_weight": 0.5}, "no teacher"),
                                 (_teacher(out=3), {}, "teacher output shape"),
                                 (_teacher(), {"kd_temperature": 500.0}, "kd_temperature")):  # fmt: skip
        rt = runtime(model, slots, opt, teacher=teacher)
        rt.submit(germinate("a", 0, params=params))
        rt.on_step(0)
        (ack,) = kinds(rt.drain_outbox(), "exec.ack")
        assert not ack.ok and why in ack.error and slots["a"].seed is None
    for name, value in (("kd_temperature", 0.0), ("kd_temperature", math.nan), ("kd_weight", 2.0)):
        assert check_germinate(pb.Germinate(blueprint="residual_mlp", params={name: value}))
    assert check_germinate(pb.Germinate(params={"kd_weight": 0.3, "kd_temperature": 4.0})) is None


def test_distillation_benchmark_runs_both_arms_ci_sized() -> None:
    """The benchmark's CI-sized run trains a teacher and both arms on real digits and reports
    paired figures: the teacher beats the host, both arms fossilize or cull, the cost is > 0."""
    from benchmarks.distill import markdown, run_task

    r = run_task("digits", seeds=1, steps=150, weight=0.3)
    assert r["teacher"]["mean"] > 80.0 and 0.0 < r["plain"]["mean"] <= 100.0
    assert r["kd_minus_plain"]["mean"] == pytest.approx(r["kd"]["mean"] - r["plain"]["mean"])
    assert set(r["fossilized"]) == {"plain", "kd"} and r["teacher_forward_vs_host_step"] > 0
    assert r["gate_gain_kd_minus_plain"]["mean"] == pytest.approx(
        r["gate_gain"]["kd"]["mean"] - r["gate_gain"]["plain"]["mean"]
    )
    assert f"| digits ({r['train_examples']}) |" in markdown([r])


def test_attach_hands_the_teacher_to_the_runtime_and_the_seed_actor_checks_kd_params() -> None:
    """kasmina.attach(teacher=, kd_weight=) reaches the runtime; a distilling seed germinated
    through the actors trains; a zero temperature is refused by the SeedActor with its reason."""
    from test_attach import CONFIG, _step, _task

    import kasmina

    model, opt, x, y = _task()
    torch.manual_seed(9)
    big = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    with kasmina.attach(
        model, {"h": "1"}, opt, config=CONFIG, device="cpu", probe_batch=(x[:64], y[:64]),
        teacher=big, kd_weight=0.6,
    ) as kas:  # fmt: skip
        assert kas.runtime.teacher is big and kas.runtime.config.kd_weight == 0.6
        bad = kas.command(
            "h", "germinate", blueprint="residual_mlp", params={"kd_temperature": 0.0}
        )
        kas.germinate("h", "residual_mlp", params={"hidden": 8, "kd_temperature": 2.0})
        state = kas.runtime.states["h"]
        for step in range(40):
            kas.on_step(step, _step(model, opt, x, y), batch=(x, y))
            if state.training_steps >= 5:
                break
        kas.settle()
        slot = kas.runtime.slots["h"]
        assert state.training_steps >= 5 and state.params["kd_temperature"] == 2.0
        assert float(slot.seed.get_submodule("fc2").weight.detach().abs().sum()) > 0  # type: ignore[union-attr]
        refused = [m for _, k, m in kas.events() if k == "lifecycle.refused"]
        assert bad and [m.request for m in refused] == ["germinate"]
        assert "kd_temperature" in refused[0].reason
