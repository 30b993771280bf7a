"""The barrier state digest: every seed byte, a sampled host fingerprint, each slot's stage and
alpha. Seed bytes are hashed in fixed-size chunks on a small thread pool (``hashlib`` releases
the GIL), and the chunk hashes are folded in order, so the digest is the same on any number of
cores.

At a barrier step the training thread only takes a :class:`Snapshot` (the fingerprint samples
and one copy of the seed bytes, no hashing); :func:`submit` hashes it on the digest thread, so
the seeds may train on while their step's digest is computed from the copy."""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from actors.execution.slot import SeedSlot

Buffer = bytes | torch.Tensor  # a snapshot's bytes: on cpu bytes, on cuda pinned memory
FINGERPRINT_SAMPLES = 64  # host elements sampled per parameter tensor for the barrier digest
CHUNK_BYTES = 256 * 1024  # seed bytes per chunk hash (fixed: the digest does not depend on cores)
PARALLEL_MIN_BYTES = 2 * CHUNK_BYTES  # below this, chunks are hashed on the calling thread


@dataclass
class Snapshot:
    """What a digest reads, copied at one step: ``prefix`` (host parameter names) is hashed
    first, then the fingerprint bytes (``bounds[0]``), then per entry of ``heads`` its head and
    the chunk hashes of its bytes (``bounds[i + 1]``: offsets into ``data``)."""

    prefix: bytes
    heads: list[bytes]
    data: Buffer  # on cuda a pinned uint8 tensor, filled by a copy ``ready`` waits for
    bounds: list[tuple[int, int]]
    ready: torch.cuda.Event | None = None

    def digest(self) -> bytes:
        """The state digest of the step the snapshot was taken at (any thread)."""
        if self.ready is not None:
            self.ready.synchronize()
        raw = memoryview(self.data) if isinstance(self.data, bytes) else self.data.numpy().data
        views = [raw[a:b] for a, b in self.bounds]
        h = hashlib.sha256(self.prefix)
        if self.bounds[0][1] > self.bounds[0][0]:
            h.update(views[0])
        for head, hashes in zip(self.heads, _chunk_hashes(views[1:]), strict=True):
            h.update(head)
            h.update(hashes)
        return h.digest()


def snapshot(model: nn.Module, slots: Mapping[str, SeedSlot]) -> Snapshot:
    """Copy what :func:`state_digest` hashes: the host fingerprint (``FINGERPRINT_SAMPLES``
    evenly strided elements of each host tensor, as float32) and every seed byte, into one
    buffer. Cost on the calling thread: one copy of the seed bytes, no hashing; on cuda the copy
    is asynchronous (into pinned memory, an event marks its end)."""
    in_slots = {id(p) for slot in slots.values() for p in slot.parameters()}
    host = [(n, p.detach()) for n, p in model.named_parameters() if id(p) not in in_slots]
    sources = [_bytes(_fingerprint([p for _, p in host]))] if host else []
    heads: list[bytes] = []  # what precedes each seed tensor's chunk hashes
    for slot_id in sorted(slots):
        slot = slots[slot_id]
        head = slot_id.encode() + struct.pack("<id", slot.stage, float(slot.alpha))
        for name, p in slot.named_parameters():
            heads.append(head + name.encode())
            sources.append(_bytes(p.detach()))
            head = b""
        if head:
            heads.append(head)
            sources.append(torch.empty(0, dtype=torch.uint8))
    if not host:
        sources.insert(0, torch.empty(0, dtype=torch.uint8))
    data, bounds, ready = _gather(sources)
    return Snapshot(b"".join(n.encode() for n, _ in host), heads, data, bounds, ready)


def _fingerprint(host: list[torch.Tensor]) -> torch.Tensor:
    """``FINGERPRINT_SAMPLES`` evenly strided elements of each tensor, as float32, in order
    (sliced with numpy where every tensor is a float32 one on cpu: a torch slice per tensor
    costs more than the rest of the snapshot)."""
    strides = [max(1, p.numel() // FINGERPRINT_SAMPLES) for p in host]
    if all(p.dtype == torch.float32 and p.device.type == "cpu" for p in host):
        flats = [p.reshape(-1).numpy()[::k] for p, k in zip(host, strides, strict=True)]
        return torch.from_numpy(np.concatenate(flats))
    return torch.cat([p.reshape(-1)[::k].float() for p, k in zip(host, strides, strict=True)])


def state_digest(model: nn.Module, slots: Mapping[str, SeedSlot]) -> bytes:
    """sha256 over a fingerprint of the host's parameters, then per slot its id, stage, alpha
    and, per seed parameter, its name and the sha256 of each ``CHUNK_BYTES`` chunk of its bytes.
    Cost: O(seed parameters) + O(host tensors): the host fingerprint reads
    ``FINGERPRINT_SAMPLES`` evenly strided elements of each host tensor (replicas that diverge do
    so everywhere, so sampled elements differ too), not every byte."""
    return snapshot(model, slots).digest()


def _gather(sources: list[torch.Tensor]) -> tuple[Buffer, list[tuple[int, int]], Any]:
    """One host buffer holding every source's bytes, each source's (start, end) in it, and on
    cuda the event that marks the end of the (asynchronous) copies. On cpu the copy is a plain
    memcpy into ``bytes`` (a torch ``uint8`` copy is many times slower)."""
    bounds, at = [], 0
    for s in sources:
        bounds.append((at, at + s.numel()))
        at += s.numel()
    if not any(s.is_cuda for s in sources):  # .cpu(): a no-op on cpu (another device: a copy)
        return b"".join(s.cpu().numpy().data for s in sources), bounds, None
    data = torch.empty(at, dtype=torch.uint8, pin_memory=True)
    for s, (a, b) in zip(sources, bounds, strict=True):
        if b > a:
            data[a:b].copy_(s, non_blocking=True)
    ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
    ready.record()
    return data, bounds, ready


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


class Job:
    """One snapshot to hash, and what to do with its digest; ``done`` holds the digest."""

    def __init__(self, snap: Snapshot, then: Callable[[bytes], None]) -> None:
        self.snapshot, self.then = snap, then
        self.done: Future[bytes] = Future()
        self.pid = os.getpid()  # a job queued before a fork is run by the forked child itself

    def run(self) -> None:
        """Hash the snapshot, hand the digest to ``then``, then resolve ``done``."""
        if not self.done.set_running_or_notify_cancel():
            return
        try:
            value = self.snapshot.digest()
            self.then(value)
        except BaseException as exc:  # handed to whoever waits on the job
            self.done.set_exception(exc)
            return
        self.done.set_result(value)

    def wait(self, timeout: float | None = None) -> bytes:
        """The digest, once ``then`` has run; raises ``TimeoutError`` after ``timeout`` s. In a
        forked child whose digest thread never ran the job, the job runs here."""
        if self.pid != os.getpid() and not self.done.done():
            self.pid, self.done = os.getpid(), Future()  # the parent's thread may have held it
            self.run()
        return self.done.result(timeout)


def submit(snap: Snapshot, then: Callable[[bytes], None]) -> Job:
    """Hash ``snap`` on the digest thread (jobs run one at a time, in submission order) and call
    ``then(digest)`` there; returns at once."""
    job = Job(snap, then)
    with _pool_lock:
        global _queue
        if _queue is None:
            _queue = queue.SimpleQueue()
            threading.Thread(
                target=_serve, args=(_queue,), name="kasmina-digest", daemon=True
            ).start()
        _queue.put(job)
    return job


def _serve(jobs: queue.SimpleQueue[Job]) -> None:
    while True:
        jobs.get().run()


_pool: _Hashers | None = None
_queue: queue.SimpleQueue[Job] | None = None  # the digest thread's jobs
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the threads do not exist: start new ones there when needed."""
    global _pool, _queue, _pool_lock
    _pool, _queue, _pool_lock = None, None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _hashers() -> _Hashers:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Hashers(max(1, min(4, os.cpu_count() or 1)))
        return _pool


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 view (a copy only where it is not contiguous)."""
    return t.contiguous().reshape(-1).view(torch.uint8)
