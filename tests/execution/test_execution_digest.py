"""The barrier state digest: chunked seed hashes, the same digest on one thread or many."""

from __future__ import annotations

import hashlib
import multiprocessing
import struct
from typing import Any
from unittest import mock

import torch
from torch import nn

from actors.execution import digest
from actors.execution.digest import CHUNK_BYTES, state_digest
from actors.execution.slot import SeedSlot, insert_slots


def _model_with_seed(seed_elems: int) -> tuple[nn.Module, dict[str, SeedSlot]]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    slots = insert_slots(model, {"s": "0"})
    slots["s"].register_parameter("w", nn.Parameter(torch.randn(seed_elems)))
    return model, slots


def _expected(model: nn.Module, slots: dict[str, SeedSlot]) -> bytes:
    """The digest as docs/integration.md states it, written out without the module's helpers."""
    h = hashlib.sha256()
    seed_ids = {id(p) for s in slots.values() for p in s.parameters()}
    samples = []
    for name, p in model.named_parameters():
        if id(p) not in seed_ids:
            h.update(name.encode())
            flat = p.detach().reshape(-1)
            samples.append(flat[:: max(1, flat.numel() // 64)].float())
    h.update(torch.cat(samples).numpy().tobytes())
    for slot_id in sorted(slots):
        s = slots[slot_id]
        h.update(slot_id.encode() + struct.pack("<id", s.stage, float(s.alpha)))
        for name, p in s.named_parameters():
            raw = p.detach().numpy().tobytes()
            h.update(name.encode())
            for o in range(0, len(raw), CHUNK_BYTES):
                h.update(hashlib.sha256(raw[o : o + CHUNK_BYTES]).digest())
    return h.digest()


def test_digest_is_the_documented_fold_of_chunk_hashes() -> None:
    """Seed bytes are hashed in 256 KiB chunks whose hashes are folded in order."""
    model, slots = _model_with_seed(3 * CHUNK_BYTES // 4 + 5)  # 3 chunks and a bit: 4 chunks
    assert state_digest(model, slots) == _expected(model, slots)


def test_digest_is_the_same_on_the_pool_and_on_the_calling_thread() -> None:
    """Whether chunks go to the thread pool or not changes nothing in the digest."""
    model, slots = _model_with_seed(CHUNK_BYTES)  # 4 chunks: above the parallel threshold
    pooled = state_digest(model, slots)
    with mock.patch.object(digest, "PARALLEL_MIN_BYTES", 1 << 62):
        inline = state_digest(model, slots)
    assert pooled == inline == _expected(model, slots)


def test_one_element_in_the_last_chunk_changes_the_digest() -> None:
    """A change in any chunk, the last one included, moves the digest."""
    model, slots = _model_with_seed(CHUNK_BYTES)
    before = state_digest(model, slots)
    with torch.no_grad():
        slots["s"].w[-1] += 1.0
    assert state_digest(model, slots) != before


def test_a_slot_without_seed_still_contributes_its_stage_and_alpha() -> None:
    """An empty slot's id, stage and alpha are part of the digest."""
    model, slots = _model_with_seed(4)
    del slots["s"].w
    before = state_digest(model, slots)
    slots["s"].alpha.fill_(0.5)
    assert state_digest(model, slots) != before


def _digest_in_child(conn: Any) -> None:
    model, slots = _model_with_seed(CHUNK_BYTES)
    conn.send(state_digest(model, slots))


def test_a_forked_child_hashes_on_a_pool_of_its_own() -> None:
    """After the parent's hasher threads started, a forked child (where they do not exist) still
    computes the digest on the pool, the same as the parent's, instead of waiting forever."""
    model, slots = _model_with_seed(CHUNK_BYTES)  # above the parallel threshold: the pool runs
    parent = state_digest(model, slots)
    assert digest._pool is not None
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_digest_in_child, args=(send,))
    child.start()
    try:
        assert receive.poll(60), "the child's digest never came (its pool's threads are gone)"
        assert receive.recv() == parent
    finally:
        child.kill()
        child.join()
