"""Patterns of users' models and loops the runtime must live with: activation checkpointing
around a slot, optimizers whose state a fossil cannot share, and hosts whose forward writes
their own parameters."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from actors.execution import insert_slots
from leyline import pb
from tests.execution.execution_helpers import backward, data, germinate, kinds, order, runtime


class Checkpointed(nn.Module):
    """A host that runs its middle block through activation checkpointing while training."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.block = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        self.reentrant = reentrant

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        h = torch.relu(self.fc1(x))
        if self.training:
            h = checkpoint(self.block, h, use_reentrant=self.reentrant)
        else:
            h = self.block(h)
        out: Tensor = self.head(torch.relu(h))
        return out


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_slot_keeps_a_healthy_seed(reentrant: bool) -> None:
    """torch stops a non-reentrant checkpoint's recompute by raising through the seed's forward:
    that is torch steering itself, not the seed failing, so the seed trains on and nothing is
    culled or signalled."""
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    slots = insert_slots(model, {"t": "block"})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("t", 1))
    rt.submit(order("t", pb.SEED_STAGE_TRAINING, 3))
    batches = data()
    for step in range(12):
        x, y = batches[step % len(batches)]
        _plain(model, opt, x, y)
        rt.on_step(step, None)
    sent = rt.drain_outbox()
    assert slots["t"].failure is None and rt.seed_failures == 0
    assert not [s for s in kinds(sent, "safety.signal") if s.slot == "t"]
    assert slots["t"].stage == pb.SEED_STAGE_TRAINING


def _plain(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    backward(loss)
    opt.step()
    return loss.detach()


def _closure(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        return loss

    return opt.step(closure)  # type: ignore[return-value]


OPTIMIZERS = {
    "Adam": (lambda p: torch.optim.Adam(p, lr=1e-2), _plain),
    "Adam(amsgrad)": (lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), _plain),
    "AdamW(amsgrad)": (lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True), _plain),
    "LBFGS": (lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=3), _closure),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_users_optimizer_steps_on_after_fossilization(name: str) -> None:
    """A fossil joins the user's optimizer without breaking its next step: a seed's state of
    another layout (a plain Adam's, for an amsgrad group) is left for the host optimizer to
    start, and LBFGS's flat history restarts at the new size; the fossil then trains."""
    from tests.execution.execution_helpers import tiny

    make, loop = OPTIMIZERS[name]
    model, slots = tiny(points={"b": "fc2"})
    opt = make([p for p in model.parameters()])
    rt = runtime(model, slots, opt, blend_steps=2)
    rt.submit(germinate("b", 1))
    for i, stage in enumerate(("TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED")):
        rt.submit(order("b", getattr(pb, f"SEED_STAGE_{stage}"), 2 + 2 * i))
    batches = data()
    fossil_at = None
    for step in range(24):
        x, y = batches[step % len(batches)]
        loss = loop(model, opt, x, y)  # raises into the test if the optimizer broke
        rt.on_step(step, loss, batch=(x, y))
        if fossil_at is None and slots["b"].fossil:
            fossil_at = step
            before = [p.detach().clone() for p in slots["b"].seed_parameters()]
    assert fossil_at is not None and fossil_at < 20
    after = slots["b"].seed_parameters()
    assert not all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    if name == "Adam":  # same layout: the seed's moments were carried over, not restarted
        assert all(float(opt.state[p]["step"]) > 24 - fossil_at for p in after)


class Renormed(nn.Module):
    """A host whose forward writes its own parameters: an embedding with ``max_norm``
    renormalises (in place) every row it looks up."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8, max_norm=0.5)
        self.fc1 = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of the mean embedding of each row's tokens."""
        h = torch.relu(self.fc1(self.emb(tokens).mean(dim=1)))
        out: Tensor = self.head(h)
        return out


def _renormed_run(kasmina: bool, probe: Tensor) -> tuple[dict[str, Tensor], list[float]]:
    """Train the Renormed host 16 steps (Adam); with Kasmina a seed germinates and trains with
    shadow steps and isolation probes on a probe batch that looks up rows training does not."""
    torch.manual_seed(0)
    model = Renormed()
    slots = insert_slots(model, {"s": "fc1"}) if kasmina else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 25, (16, 5), generator=gen), torch.randint(0, 4, (16,), generator=gen))
               for _ in range(4)]  # fmt: skip
    rt = None
    if kasmina:
        rt = runtime(model, slots, opt, probe_every=2, probe_batch=(probe, probe[:, 0] % 4))
        rt.submit(germinate("s", 1))
        rt.submit(order("s", pb.SEED_STAGE_TRAINING, 3))
    losses = []
    for step in range(16):
        x, y = batches[step % 4]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        losses.append(float(loss.detach()))
        if rt is not None:
            rt.on_step(step, loss.detach(), batch=(x, y))
    if rt is not None:
        assert slots["s"].stage == pb.SEED_STAGE_TRAINING
    state = {k.replace(".host", ""): v.clone() for k, v in model.state_dict().items()
             if ".slot." not in k}  # fmt: skip
    return state, losses


def test_probes_put_back_parameters_the_hosts_forward_writes() -> None:
    """Germination, shadow steps and isolation probes on a probe batch of rows 25-49 leave the
    max_norm embedding's rows, every host parameter and the loss sequence bit-identical to a
    run without Kasmina."""
    probe = torch.arange(25, 50).reshape(5, 5) * 1
    plain, plain_losses = _renormed_run(False, probe)
    grown, grown_losses = _renormed_run(True, probe)
    assert grown_losses == plain_losses
    assert plain.keys() == grown.keys()
    assert all(torch.equal(plain[k], grown[k]) for k in plain)


class Decaying(nn.Module):
    """A user's module that shrinks its own weight in place on every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        """``x * w``, then ``w`` halved in place."""
        out = x * self.w
        with torch.no_grad():
            self.w.mul_(0.5)
        return out


def test_an_unknown_parameter_writer_is_learned_after_one_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write by a module the runtime does not know is seen (version counter) and said once;
    from the next probe on that parameter is copied and put back."""
    from actors.execution.probing import probe_mode

    model = Decaying()
    with probe_mode(model, torch.device("cpu")):
        model(torch.ones(4))
    assert torch.equal(model.w.detach(), torch.full((4,), 0.5))  # the first write stays
    assert "writes its parameters in place (w)" in caplog.text
    for _ in range(3):
        with probe_mode(model, torch.device("cpu")):
            model(torch.ones(4))
        assert torch.equal(model.w.detach(), torch.full((4,), 0.5))


def _resumable_run(resume: bool, path: str) -> tuple[list[float], tuple[float, int]]:
    """20 steps, BLENDING from step 12; with ``resume`` a checkpoint at step 13 restored into a
    fresh model, optimizer and runtime (another init) before going on. The losses after 13 and
    G2's loss-spike statistic of the stage."""
    from tests.execution.execution_helpers import tiny

    def make(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        model, slots = tiny(seed=seed, points={"b": "fc2"})
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, opt, runtime(model, slots, opt, blend_steps=10)

    model, opt, rt = make(0)
    rt.submit(germinate("b", 1))
    rt.submit(order("b", pb.SEED_STAGE_TRAINING, 3))
    rt.submit(order("b", pb.SEED_STAGE_BLENDING, 12))
    batches, losses = data(), []
    for step in range(20):
        if resume and step == 14:
            rt.checkpoint(path)
            model, opt, rt = make(9)
            rt.restore(path)
        x, y = batches[step % len(batches)]
        losses.append(float(_plain(model, opt, x, y)))
        rt.on_step(step, torch.tensor(losses[-1]), batch=(x, y))
    return losses[14:], rt.loss_spike(rt.states["b"].stage_since)


def test_a_resumed_run_judges_stability_on_the_same_loss_history(tmp_path: Any) -> None:
    """A checkpoint taken two steps into BLENDING and restored into a fresh runtime gives G2 the
    same loss history: the same losses and the same loss-spike statistic as the run that went
    on (without it, the stage had no reference and the statistic read 0)."""
    straight = _resumable_run(False, str(tmp_path / "unused.ckpt"))
    resumed = _resumable_run(True, str(tmp_path / "ck.ckpt"))
    assert resumed == straight and straight[1][1] > 0


class PaddedEncoder(nn.Module):
    """A TransformerEncoder (nested tensors on, the default) fed a padding mask: its inference
    fast path hands its layers a NestedTensor in eval mode under no_grad."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the summed encoding of 4 tokens, the last one padding."""
        h = self.emb(x.view(x.shape[0], 4, 8))
        mask = torch.zeros(x.shape[0], 4, dtype=torch.bool)
        mask[:, 3] = True
        out: Tensor = self.head(self.enc(h, src_key_padding_mask=mask).sum(1))
        return out


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_seed_on_an_encoder_layer_sits_out_the_nested_fast_path() -> None:
    """The user's eval-mode, no-grad forward (and the runtime's own validation) give the slot a
    NestedTensor: the seed sits those forwards out instead of failing and being culled."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    torch.manual_seed(0)
    model = PaddedEncoder()
    slots = insert_slots(model, {"s": "enc.layers.0"})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rt = runtime(model, slots, opt, probe_batch=(x, y), validation=(x, y), blend_steps=3)
    rt.submit(germinate("s", 0))
    rt.submit(order("s", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("s", pb.SEED_STAGE_BLENDING, 3))
    for step in range(6):
        model.train()
        loss = _plain(model, opt, x, y)
        model.eval()
        with torch.no_grad():
            model(x)  # the user's evaluation
        rt.on_step(step, loss, batch=(x, y))
    assert slots["s"].failure is None and rt.seed_failures == 0
    assert slots["s"].stage == pb.SEED_STAGE_BLENDING
    assert not [s for s in kinds(rt.drain_outbox(), "safety.signal") if s.slot == "s"]


def test_a_dict_output_is_judged_on_its_logits_wherever_they_sit() -> None:
    """A host returning ``{"feat": h, "logits": z}`` (features first): probes and the shadow loss
    take the ``logits`` entry, not the first tensor; a tuple still gives its first."""
    from actors.execution.probing import first_tensor

    feat, logits = torch.zeros(2, 16), torch.ones(2, 4)
    assert first_tensor({"feat": feat, "logits": logits}) is logits
    assert first_tensor({"loss": torch.tensor(1.0), "logits": logits}) is logits
    assert first_tensor({"feat": feat, "other": logits}) is feat
    assert first_tensor((logits, feat)) is logits


def test_a_loss_scalers_overflow_step_is_no_seeds_fault() -> None:
    """A step whose whole backward overflowed (non-finite gradients in the host too: a loss
    scaler skips it) raises no NaN-gradient signal naming the seed; only the run-wide loss
    signal says the loss was not finite."""
    from tests.execution.execution_helpers import tiny

    model, slots = tiny(points={"b": "fc2"})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("b", 1))
    rt.submit(order("b", pb.SEED_STAGE_TRAINING, 2))
    batches = data()
    for step in range(8):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y) * (float("inf") if step in (4, 5, 6) else 1.0)
        backward(loss)
        if step not in (4, 5, 6):  # (what a scaler does on an overflow: skip the step)
            opt.step()
        rt.on_step(step, loss.detach())
    signals = kinds(rt.drain_outbox(), "safety.signal")
    assert not [s for s in signals if s.kind == pb.SAFETY_SIGNAL_NON_FINITE_GRAD]
    assert [s.step for s in signals if s.kind == pb.SAFETY_SIGNAL_NON_FINITE_LOSS] == [4, 5, 6]
    # nor evidence against the seed at its gates (G1's grad_finite, G2's nonfinite_count)
    state = rt.states["b"]
    assert state.grad_nonfinite == 0 and state.grad_steps == 2  # steps 3 and 7; 4-6 skipped
