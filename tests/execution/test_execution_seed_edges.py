"""Seeds that misbehave only after germination, and hosts the other tests do not use: eval under
``torch.inference_mode``, autocast, outputs that change shape, dtype or size, inputs written in
place later, random draws only under autograd, a checkpoint directory that cannot be written, and
parents that read their children's attributes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import backward, germinate, kinds, order, runtime
from torch import Tensor, nn

from actors.execution import (
    Blueprint,
    ExecutionRuntime,
    host_parameters,
    insert_slots,
    register_blueprint,
    unregister_blueprint,
)
from leyline import pb

Factory = Callable[[int], nn.Module]


class _Zeroed(nn.Module):
    """A two-layer residual delta whose output layer starts at zero."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def delta(self, h: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(h)))
        return out


class LateWriter(_Zeroed):
    """Initialises on its first call; from its eighth on (after every germination check) it
    centres its input in place."""

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.register_buffer("mean", torch.zeros(d))
        self.calls = 0

    def forward(self, h: Tensor) -> Tensor:
        """The delta of the (rewritten) input."""
        self.calls += 1
        if self.calls == 1:
            self.mean.copy_(h.mean(0))
        elif self.calls >= 8:
            h = h.sub_(self.mean)
        return self.delta(h)


class Turns(_Zeroed):
    """Behaves until ``armed``; then returns ``how(z)``."""

    armed = False
    how: Callable[[Tensor], Tensor] = staticmethod(lambda z: z)

    def forward(self, h: Tensor) -> Tensor:
        """The delta, or what ``how`` makes of it once armed."""
        z = self.delta(h)
        return Turns.how(z) if Turns.armed else z


class GradNoise(_Zeroed):
    """Adds noise to its input only while autograd records (train-time noise)."""

    def forward(self, h: Tensor) -> Tensor:
        """The delta of the noised input."""
        if self.training and torch.is_grad_enabled():
            h = h + 0.01 * torch.randn_like(h)
        return self.delta(h)


class Gated(nn.Module):
    """A float32 tanh gate (zero) times a linear map: float32 output under bf16 autocast."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: Tensor) -> Tensor:
        """The gated delta."""
        out: Tensor = torch.tanh(self.gate) * self.fc(h)
        return out


@contextmanager
def blueprint(name: str, make: Factory) -> Iterator[None]:
    """Register ``name`` (sized by the slot's last dimension) for the duration."""
    register_blueprint(
        Blueprint(name, lambda s, p, host: make(s.out_shape[-1]), lambda s: True), replace=True
    )
    try:
        yield
    finally:
        unregister_blueprint(name)


class TanhNet(nn.Module):
    """Linear, tanh (which saves its output for backward), dropout, linear."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(8, 16), nn.Tanh()
        self.drop, self.fc2 = nn.Dropout(dropout), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.fc2(self.drop(self.act(self.fc1(x))))
        return out


def _batches(n: int, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)
    ]


def _loop(
    target: str | None,
    bp: str,
    *,
    steps: int = 8,
    plan: dict[int, list[pb.ExecutionOrder]] | None = None,
    dropout: float = 0.0,
    autocast: bool = False,
    eval_every: Callable[[nn.Module, Tensor], None] | None = None,
    arm_at: int | None = None,
    **kw: Any,
) -> tuple[dict[str, Tensor], list[Tensor], ExecutionRuntime | None, list[tuple[str, Any]]]:
    """Train a TanhNet (with a slot at ``target`` and ``plan``'s orders, or plain): the host's
    tensors, the outputs, the runtime, its outbox. ``arm_at``: the step from which a
    :class:`Turns` seed turns."""
    torch.manual_seed(0)
    model = TanhNet(dropout)
    slots = insert_slots(model, {"s": target}) if target is not None else {}
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-2)
    rt = runtime(model, slots, opt, **kw) if target is not None else None
    if rt is not None:
        for _at, orders in sorted((plan or _training(bp)).items()):
            for o in orders:
                rt.submit(o)
    torch.manual_seed(1234)  # the host's dropout stream
    outs: list[Tensor] = []
    for step, (x, y) in enumerate(_batches(steps)):
        Turns.armed = arm_at is not None and step >= arm_at
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        backward(loss)
        opt.step()
        outs.append(out.detach().clone())
        if rt is not None:
            rt.on_step(step, loss)
        if eval_every is not None:
            eval_every(model, x)
    host = {
        k.replace(".host", ""): v.detach().clone()
        for k, v in model.state_dict().items()
        if ".slot." not in k
    }
    return host, outs, rt, rt.drain_outbox() if rt is not None else []


def _training(bp: str) -> dict[int, list[pb.ExecutionOrder]]:
    return {0: [germinate("s", 0, bp), order("s", pb.SEED_STAGE_TRAINING, 1)]}


def _same_as_plain(got: dict[str, Tensor], outs: list[Tensor], **kw: Any) -> None:
    plain, plain_outs, _, _ = _loop(None, "", **kw)
    assert sorted(k for k in plain if not torch.equal(plain[k], got[k])) == []
    assert all(
        a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(plain_outs, outs, strict=True)
    )


def test_eval_under_inference_mode_leaves_a_training_seed_in_place() -> None:
    """An evaluation under ``torch.inference_mode`` while a seed trains is harmless: no failure is
    recorded, the seed stays, no safety signal follows."""

    def evaluate(model: nn.Module, x: Tensor) -> None:
        with torch.inference_mode():
            model(x)

    with blueprint("t_edge_plain", lambda d: Turns(d)):
        _, _, rt, out = _loop("fc1", "t_edge_plain", eval_every=evaluate)
    assert rt is not None
    slot = rt.slots["s"]
    assert slot.failure is None and slot.seed is not None
    assert slot.stage == pb.SEED_STAGE_TRAINING and kinds(out, "safety.signal") == []


def test_a_checkpoint_directory_that_cannot_be_written_never_raises_into_the_loop(
    tmp_path: Path,
) -> None:
    """A guard checkpoint into a missing directory is reported as critical telemetry; the loop
    goes on and the seed still trains."""
    missing = str(tmp_path / "gone")
    with blueprint("t_edge_plain", lambda d: Turns(d)):
        _, _, rt, out = _loop("fc1", "t_edge_plain", checkpoint_dir=missing)
    assert rt is not None and rt.slots["s"].stage == pb.SEED_STAGE_TRAINING
    said = [t.message for t in kinds(out, "telemetry.raw") if "could not be written" in t.message]
    assert said and "guard checkpoint" in said[0]
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize(
    ("how", "stays"),
    [(lambda z: z.double(), True), (lambda z: z.unsqueeze(1), False), (lambda z: z.long(), False)],
    ids=["float64", "broadcasting-shape", "integer"],
)
@pytest.mark.parametrize("stage", [pb.SEED_STAGE_TRAINING, pb.SEED_STAGE_BLENDING])
def test_a_seed_output_that_changes_kind_never_reaches_the_host(
    how: Callable[[Tensor], Tensor], stays: bool, stage: int
) -> None:
    """A seed whose output turns float64 is cast to the host's dtype; one that turns to another
    shape or to integers leaves the forward: the host's outputs keep their shape and dtype and the
    user's loss never raises."""
    plan = {0: [germinate("s", 0, "t_edge_turns"), order("s", pb.SEED_STAGE_TRAINING, 1)]}
    if stage == pb.SEED_STAGE_BLENDING:
        plan[2] = [order("s", pb.SEED_STAGE_BLENDING, 2)]
    Turns.how = staticmethod(how)  # type: ignore[assignment]
    try:
        with blueprint("t_edge_turns", lambda d: Turns(d)):
            _, outs, rt, _ = _loop("fc1", "t_edge_turns", plan=plan, steps=7, arm_at=4)
    finally:
        Turns.armed = False
        Turns.how = staticmethod(lambda z: z)  # type: ignore[assignment]
    assert rt is not None
    assert all(o.shape == (16, 4) and o.dtype == torch.float32 for o in outs)
    assert (rt.slots["s"].seed is not None) is stays


def test_a_seed_output_under_autocast_keeps_the_host_bit_identical() -> None:
    """Under bf16 autocast a seed whose float32 gate makes its output float32 leaves the host's
    weights, optimizer path and outputs (dtype included) exactly those of a seedless run."""
    with blueprint("t_edge_gated", Gated):
        host, outs, rt, _ = _loop("fc1", "t_edge_gated", autocast=True)
    assert rt is not None and rt.slots["s"].seed is not None
    _same_as_plain(host, outs, autocast=True)


def test_a_seed_writing_its_input_after_germination_never_reaches_the_host() -> None:
    """A seed that first writes its input in place well after germination writes its own copy:
    the user's backward through the tanh never raises, the host stays bit-identical to a seedless
    run, and each write is an isolation violation signal."""
    with blueprint("t_edge_writer", LateWriter):
        host, outs, rt, out = _loop("act", "t_edge_writer")
    assert rt is not None and rt.slots["s"].seed is not None
    _same_as_plain(host, outs)
    signals = [s for s in kinds(out, "safety.signal") if "in place" in s.detail]
    assert signals and all(s.kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION for s in signals)


def test_a_seed_drawing_only_under_autograd_leaves_the_host_rng_alone() -> None:
    """A seed drawing random numbers only while autograd records runs on its own stream: the
    host's dropout masks, weights and outputs are those of a seedless run."""
    with blueprint("t_edge_noise", GradNoise):
        host, outs, rt, _ = _loop("fc1", "t_edge_noise", dropout=0.3)
    assert rt is not None and rt.slots["s"].seed is not None
    _same_as_plain(host, outs, dropout=0.3)


def test_a_blending_seed_gone_huge_never_reaches_the_host() -> None:
    """A blending seed whose output turns finite but huge (1e30) is zeroed like a non-finite one
    and signalled: the host's weights and the loss stay finite."""
    plan = {
        0: [germinate("s", 0, "t_edge_turns"), order("s", pb.SEED_STAGE_TRAINING, 1)],
        2: [order("s", pb.SEED_STAGE_BLENDING, 2)],
    }
    Turns.how = staticmethod(lambda z: z + 1e30)  # type: ignore[assignment]
    try:
        with blueprint("t_edge_turns", lambda d: Turns(d)):
            host, outs, _, out = _loop(
                "fc1", "t_edge_turns", plan=plan, blend_steps=4, arm_at=4, steps=10
            )
    finally:
        Turns.armed = False
        Turns.how = staticmethod(lambda z: z)  # type: ignore[assignment]
    assert all(bool(torch.isfinite(t).all()) for t in host.values())
    assert all(bool(torch.isfinite(o).all()) for o in outs)
    assert pb.SAFETY_SIGNAL_NON_FINITE_OUTPUT in {s.kind for s in kinds(out, "safety.signal")}


class ReadsChild(nn.Module):
    """A parent that reads its child's weight in its forward (a weight-norm style check)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        """Logits scaled by the child's weight norm."""
        out: Tensor = self.fc(x) / (1.0 + self.fc.weight.norm())
        return out


def test_a_parent_reading_its_childs_attributes_works_with_a_slot_in_place() -> None:
    """A slot on a child whose parent reads the child's ``weight`` is the identity while dormant
    (the wrapper reads through to the child)."""
    torch.manual_seed(0)
    model = ReadsChild()
    x = torch.randn(5, 8)
    before = model(x)
    insert_slots(model, {"s": "fc"})
    assert torch.equal(model(x), before)
    assert model.fc.in_features == 8


@pytest.mark.parametrize(
    ("make", "target"),
    [
        (lambda: nn.MultiheadAttention(8, 2), "out_proj"),
        (lambda: nn.TransformerEncoderLayer(8, 2, 16), "linear1"),
        (lambda: nn.TransformerEncoderLayer(8, 2, 16), "norm2"),
    ],
    ids=["attention-out-proj", "encoder-linear1", "encoder-norm2"],
)
def test_a_slot_its_parent_would_bypass_is_refused_at_insertion(
    make: Callable[[], nn.Module], target: str
) -> None:
    """A slot on a child its parent uses without calling (attention's output projection, the
    encoder layer's inference fast path) is refused with a reason, and the model is unchanged."""
    model = make()
    with pytest.raises(ValueError, match="without calling it"):
        insert_slots(model, {"s": target})
    assert type(getattr(model, target)) is not nn.Module and not hasattr(
        getattr(model, target), "slot"
    )


def test_an_empty_batch_through_a_training_seed_is_harmless() -> None:
    """A forward of zero examples while a seed trains returns an empty activation and records
    no failure: the seed stays."""
    with blueprint("t_edge_plain", lambda d: Turns(d)):
        _, _, rt, _ = _loop("fc1", "t_edge_plain", steps=3)
        assert rt is not None
        out = rt.model(torch.zeros(0, 8))
    assert out.shape == (0, 4)
    assert rt.slots["s"].failure is None and rt.slots["s"].seed is not None
