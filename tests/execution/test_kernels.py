"""Kernel management: germination by artifact id, verified and loaded through the kernel cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from execution_helpers import data, host_state, kinds, order, tiny, train
from kernel_helpers import germinate_artifact, kernel_runtime, program

from actors.artifacts import ArtifactError, DirectoryStore, Manifest, seal
from actors.execution import SlotShape
from actors.execution.kernels import pack_weights
from contracts import KeyRing
from leyline import pb


@pytest.fixture
def ring() -> KeyRing:
    """A publishing key ring."""
    return KeyRing.generate()


def test_a_program_artifact_germinates_trains_and_loads_once(ring: KeyRing, tmp_path: Path) -> None:
    """A seed known only as an exported program germinates at two slots; it loads once (one miss,
    one hit), its evidence says it was verified, and it learns in TRAINING."""
    store = DirectoryStore(tmp_path)
    sealed = program(ring)
    store.put_sync(sealed)
    model, slots = tiny(points={"a": "fc1", "b": "fc2"})
    rt = kernel_runtime(model, slots, ring, tmp_path)
    rt.submit(germinate_artifact("a", 1, sealed.id, params={"lr": 0.05}))
    rt.submit(germinate_artifact("b", 1, sealed.id))
    batches = data()
    train(model, rt.host_optimizer, rt, batches, range(2))
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [a.ok for a in acks] == [True, True], [a.error for a in acks]
    assert acks[0].evidence.metrics["artifact_verified"] == 1.0
    assert acks[0].evidence.blueprint == "gated"
    assert (rt.kernels.stats.loads, rt.kernels.stats.misses, rt.kernels.stats.hits) == (1, 1, 1)
    seed_a, seed_b = slots["a"].seed, slots["b"].seed
    assert seed_a is not None and seed_b is not None
    assert {p.data_ptr() for p in seed_a.parameters()}.isdisjoint(
        p.data_ptr() for p in seed_b.parameters()
    )  # every germination owns its copy
    before = [p.detach().clone() for p in seed_a.parameters()]
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 2))
    for step in range(2, 8):
        x, y = batches[step % len(batches)]
        train(model, rt.host_optimizer, None, [(x, y)], range(1))
        rt.on_step(step, batch=(x, y))
    assert any(not torch.equal(b, p) for b, p in zip(before, seed_a.parameters(), strict=True))


@pytest.mark.parametrize("tamper", ["payload", "manifest", "signer", "signature"])
def test_a_tampered_artifact_is_refused_and_changes_nothing(
    ring: KeyRing, tmp_path: Path, tamper: str
) -> None:
    """Changed payload bytes, a changed manifest, an unknown signer or a forged MAC: the ack is
    refused with the reason, the slot stays empty, the host is untouched, the refusal counted."""
    sealed = program(ring)
    if tamper == "payload":
        payload = bytearray(sealed.payload)
        payload[-1] ^= 1
        sealed = dataclasses.replace(sealed, payload=bytes(payload))
    elif tamper == "manifest":
        m = Manifest.decode(sealed.manifest)
        sealed = dataclasses.replace(
            sealed, manifest=dataclasses.replace(m, blueprint="x").encode()
        )
    elif tamper == "signer":
        sealed = program(KeyRing.generate())
    else:
        signer = sealed.signature.rpartition(":")[0]
        sealed = dataclasses.replace(sealed, signature=f"{signer}:{'0' * 64}")
    DirectoryStore(tmp_path).put_sync(sealed)
    model, slots = tiny()
    rt = kernel_runtime(model, slots, ring, tmp_path)
    host = host_state(model, slots)
    rt.submit(germinate_artifact("a", 0, sealed.id))
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    reason = {"payload": "checksum_mismatch", "manifest": "manifest_changed",
              "signer": "unknown_signer", "signature": "bad_signature"}[tamper]  # fmt: skip
    assert not ack.ok and reason in ack.error
    assert ack.evidence.metrics["artifact_verified"] == 0.0
    assert slots["a"].seed is None and ack.stage == pb.SEED_STAGE_DORMANT
    assert all(torch.equal(a, b) for a, b in zip(host, host_state(model, slots), strict=True))
    assert rt.kernels.stats.refusals == 1 and rt.kernels.stats.refused == {reason: 1}
    assert rt.kernels.ids() == []


def test_an_unknown_artifact_or_a_shape_that_does_not_fit_is_refused(
    ring: KeyRing, tmp_path: Path
) -> None:
    """An id not in the store, or a program exported for other features, is refused with why."""
    narrow = program(ring, features=8)
    DirectoryStore(tmp_path).put_sync(narrow)
    model, slots = tiny()
    rt = kernel_runtime(model, slots, ring, tmp_path)
    rt.submit(germinate_artifact("a", 0, "ab" * 32))
    rt.submit(germinate_artifact("b", 0, narrow.id))
    rt.on_step(0)
    first, second = kinds(rt.drain_outbox(), "exec.ack")
    assert not first.ok and "unknown_artifact" in first.error
    assert not second.ok and "not signed off" in second.error
    assert slots["a"].seed is None and slots["b"].seed is None


def test_a_weights_artifact_builds_its_blueprint_with_the_stored_state(
    ring: KeyRing, tmp_path: Path
) -> None:
    """A ``weights_only`` artifact of a registered blueprint germinates with exactly its tensors."""
    shape = SlotShape((2, 16), torch.float32)
    torch.manual_seed(3)
    manifest, payload = pack_weights("residual_mlp", shape, {"hidden": 6})
    sealed = seal(manifest, payload, ring)
    DirectoryStore(tmp_path).put_sync(sealed)
    model, slots = tiny()
    rt = kernel_runtime(model, slots, ring, tmp_path)
    rt.submit(germinate_artifact("a", 0, sealed.id))
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert ack.ok, ack.error
    seed = slots["a"].seed
    assert seed is not None and seed.fc1.weight.shape == (6, 16)
    from safetensors.torch import load

    stored = load(payload)
    assert all(torch.equal(stored[k], v) for k, v in seed.state_dict().items())


def test_a_checkpoint_restores_an_artifact_seed_through_the_cache(
    ring: KeyRing, tmp_path: Path
) -> None:
    """A seed germinated from a program artifact is checkpointed and restored (another runtime,
    same store) with bit-identical weights; the restore loads the artifact through its cache."""
    sealed = program(ring)
    DirectoryStore(tmp_path / "store").put_sync(sealed)
    model, slots = tiny()
    rt = kernel_runtime(model, slots, ring, tmp_path / "store")
    rt.submit(germinate_artifact("a", 0, sealed.id))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    batches = data()
    for step in range(4):
        x, y = batches[step]
        train(model, rt.host_optimizer, None, [(x, y)], range(1))
        rt.on_step(step, batch=(x, y))
    rt.checkpoint(str(tmp_path / "ck"))
    seed = slots["a"].seed
    assert seed is not None
    model2, slots2 = tiny(seed=1)
    rt2 = kernel_runtime(model2, slots2, ring, tmp_path / "store")
    assert rt2.restore(str(tmp_path / "ck")) == 3
    restored = slots2["a"].seed
    assert restored is not None and rt2.states["a"].artifact == sealed.id
    assert all(torch.equal(a, b) for a, b in zip(seed.state_dict().values(),
                                                  restored.state_dict().values(), strict=True))  # fmt: skip
    assert rt2.kernels.stats.loads == 1


def test_a_program_that_calls_a_python_function_is_refused(ring: KeyRing) -> None:
    """A program whose graph names a Python function instead of an operator (here torch.hub.load)
    does not load, even when its manifest verifies: only registered operators may run."""
    import time

    from safetensors.torch import load, save

    from actors.artifacts import verify
    from actors.execution.kernels import load_kernel

    sealed = program(ring)
    tensors = load(sealed.payload)
    header = json.loads(sealed.payload[8 : 8 + int.from_bytes(sealed.payload[:8], "little")])
    graph = header["__metadata__"]["torch.export"]
    assert "torch.ops.aten.tanh.default" in graph
    hostile = save(tensors, metadata={"torch.export": graph.replace(
        "torch.ops.aten.tanh.default", "torch.hub.load")})  # fmt: skip
    resealed = seal(Manifest.decode(sealed.manifest), hostile, ring)
    manifest = verify(resealed, ring, time.time_ns())
    with pytest.raises(ArtifactError, match="not an allowed operator"):
        load_kernel(resealed.id, manifest, resealed.payload, torch.device("cpu"))
