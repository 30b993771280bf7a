"""The barrier state digest: every seed byte, a sampled host fingerprint, each slot's stage and
alpha. Seed bytes are hashed in fixed-size chunks on a small thread pool (``hashlib`` releases
the GIL), and the chunk hashes are folded in order, so the digest is the same on any number of
cores and its cost on the training thread falls with the cores the machine has."""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from collections.abc import Mapping
from concurrent.futures import Future

import torch
from torch import nn

from actors.execution.slot import SeedSlot

FINGERPRINT_SAMPLES = 64  # host elements sampled per parameter tensor for the barrier digest
CHUNK_BYTES = 256 * 1024  # seed bytes per chunk hash (fixed: the digest does not depend on cores)
PARALLEL_MIN_BYTES = 2 * CHUNK_BYTES  # below this, chunks are hashed on the calling thread


class _Hashers:
    """A few daemon threads that hash chunks (daemon: nothing to wait for at exit)."""

    def __init__(self, workers: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[memoryview, Future[bytes]]] = queue.SimpleQueue()
        for i in range(workers):
            threading.Thread(target=self._work, name=f"kasmina-digest-{i}", daemon=True).start()

    def _work(self) -> None:
        while True:
            chunk, done = self._jobs.get()
            try:
                done.set_result(_sha256(chunk))
            except BaseException as exc:  # handed to the caller, which raises it
                done.set_exception(exc)

    def map(self, chunks: list[memoryview]) -> list[bytes]:
        """The sha256 of each chunk, in order."""
        futures: list[Future[bytes]] = []
        for chunk in chunks:
            futures.append(Future())
            self._jobs.put((chunk, futures[-1]))
        return [f.result() for f in futures]


_pool: _Hashers | None = None
_pool_lock = threading.Lock()


def state_digest(model: nn.Module, slots: Mapping[str, SeedSlot]) -> bytes:
    """sha256 over a fingerprint of the host's parameters, then per slot its id, stage, alpha
    and, per seed parameter, its name and the sha256 of each ``CHUNK_BYTES`` chunk of its bytes.
    Cost: O(seed parameters) + O(host tensors): the host fingerprint reads
    ``FINGERPRINT_SAMPLES`` evenly strided elements of each host tensor (replicas that diverge do
    so everywhere, so sampled elements differ too), not every byte."""
    h = hashlib.sha256()
    in_slots = {id(p) for slot in slots.values() for p in slot.parameters()}
    samples: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if id(p) in in_slots:
            continue
        h.update(name.encode())
        flat = p.detach().reshape(-1)
        samples.append(flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)].float())
    if samples:
        h.update(_bytes(torch.cat(samples)))
    heads: list[bytes] = []  # what precedes each seed tensor's chunk hashes
    tensors: list[memoryview] = []
    for slot_id in sorted(slots):
        slot = slots[slot_id]
        head = slot_id.encode() + struct.pack("<id", slot.stage, float(slot.alpha))
        for name, p in slot.named_parameters():
            heads.append(head + name.encode())
            tensors.append(_bytes(p.detach()))
            head = b""
        if head:
            heads.append(head)
            tensors.append(memoryview(b""))
    for head, hashes in zip(heads, _chunk_hashes(tensors), strict=True):
        h.update(head)
        h.update(hashes)
    return h.digest()


def _chunk_hashes(tensors: list[memoryview]) -> list[bytes]:
    """Per tensor, the concatenated sha256 of each of its chunks (none for an empty tensor)."""
    chunks = [(i, view[o : o + CHUNK_BYTES]) for i, view in enumerate(tensors)
              for o in range(0, len(view), CHUNK_BYTES)]  # fmt: skip
    if sum(len(c) for _, c in chunks) >= PARALLEL_MIN_BYTES:
        digests = _hashers().map([c for _, c in chunks])
    else:
        digests = [_sha256(c) for _, c in chunks]
    out = [b""] * len(tensors)
    for (i, _), d in zip(chunks, digests, strict=True):
        out[i] += d
    return out


def _sha256(chunk: memoryview) -> bytes:
    return hashlib.sha256(chunk).digest()


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _hashers() -> _Hashers:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Hashers(max(1, min(4, os.cpu_count() or 1)))
        return _pool


def _bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy where it already sits contiguous in host memory."""
    flat = t.cpu().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy().data
