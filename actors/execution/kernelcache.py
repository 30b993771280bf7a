"""The kernel cache: loaded blueprint artifacts on the execution device, LRU within a byte budget.

A germination by artifact id asks :meth:`KernelCache.get`. A hit hands back the loaded kernel; a
miss takes the artifact's parts (offered by the ExecutionActor, which fetched them from the
artifact store off the training thread, or read from a local directory store), verifies them
(signature, checksum: :func:`actors.artifacts.verify`), loads them onto the device and keeps the
result. Entries idle longer than ``ttl_s`` are dropped; inserting evicts least recently used
entries until the new one fits, and a kernel larger than the whole budget is used once and never
kept, so the held bytes never exceed the budget. Counters: hits, misses, loads, evictions,
expirations, refusals (an artifact that failed its checks).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from actors.artifacts import ArtifactError, DirectoryStore, Sealed, verify
from actors.execution.kernels import Kernel, load_kernel
from contracts import KeyRing

__all__ = ["CacheStats", "KernelCache"]

MAX_OFFERED = 16  # fetched artifacts waiting for their germination (oldest dropped first)


@dataclass
class CacheStats:
    """What the cache did so far and what it holds."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0
    expirations: int = 0
    refusals: int = 0
    bytes: int = 0
    entries: int = 0
    budget_bytes: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count

    def metrics(self) -> dict[str, float]:
        """The counters as ``kernel_cache_*`` telemetry metrics."""
        names = ("hits", "misses", "loads", "evictions", "expirations", "refusals", "bytes",
                 "entries", "budget_bytes")  # fmt: skip
        return {f"kernel_cache_{n}": float(getattr(self, n)) for n in names}


class KernelCache:
    """Loaded kernels by artifact id; used from the training thread (``offer`` from any)."""

    def __init__(
        self,
        device: torch.device,
        *,
        budget_bytes: int = 256 * 2**20,
        ttl_s: float = 3600.0,
        ring: KeyRing | None = None,
        source: DirectoryStore | None = None,
        max_artifact_bytes: int = 1 << 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_bytes < 0 or ttl_s <= 0:
            raise ValueError("kernel cache: budget_bytes >= 0 and ttl_s > 0")
        self.device = device
        self.budget_bytes, self.ttl_s = budget_bytes, ttl_s
        self.ring, self.source = ring, source
        self.max_artifact_bytes = max_artifact_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Kernel, float]] = OrderedDict()
        self._offered: OrderedDict[str, Sealed] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats(budget_bytes=budget_bytes)

    def __contains__(self, artifact_id: object) -> bool:
        return artifact_id in self._entries

    def offer(self, sealed: Sealed) -> None:
        """Hold a fetched artifact for the germination that needs it (thread-safe)."""
        with self._lock:
            self._offered[sealed.id] = sealed
            while len(self._offered) > MAX_OFFERED:
                self._offered.popitem(last=False)

    def get(self, artifact_id: str) -> Kernel:
        """The loaded kernel (a hit, or a verified load); ArtifactError when it is refused."""
        now = self.clock()
        self.expire(now)
        entry = self._entries.get(artifact_id)
        if entry is not None:
            self.stats.hits += 1
            self._entries[artifact_id] = (entry[0], now)
            self._entries.move_to_end(artifact_id)
            return entry[0]
        self.stats.misses += 1
        try:
            kernel = self._load(artifact_id)
        except ArtifactError as exc:
            self.stats.refusals += 1
            self.stats.refused[exc.reason] = self.stats.refused.get(exc.reason, 0) + 1
            raise
        self.stats.loads += 1
        self._insert(kernel, now)
        return kernel

    def _load(self, artifact_id: str) -> Kernel:
        with self._lock:
            sealed = self._offered.pop(artifact_id, None)
        if sealed is None and self.source is not None:
            sealed = self.source.get_sync(artifact_id)
        if sealed is None:
            raise ArtifactError("unknown_artifact", f"{artifact_id} is not in the artifact store")
        if self.ring is None:
            raise ArtifactError("unknown_signer", "this runtime holds no key ring to verify with")
        manifest = verify(sealed, self.ring, time.time_ns(), max_bytes=self.max_artifact_bytes)
        return load_kernel(artifact_id, manifest, sealed.payload, self.device)

    def _insert(self, kernel: Kernel, now: float) -> None:
        if kernel.nbytes > self.budget_bytes:
            return  # used by this germination only: keeping it would break the budget
        while self._entries and self.stats.bytes + kernel.nbytes > self.budget_bytes:
            _, (old, _) = self._entries.popitem(last=False)
            self.stats.bytes -= old.nbytes
            self.stats.evictions += 1
        self._entries[kernel.id] = (kernel, now)
        self.stats.bytes += kernel.nbytes
        self.stats.entries = len(self._entries)

    def expire(self, now: float | None = None) -> int:
        """Drop entries idle for longer than ``ttl_s``; returns how many."""
        now = self.clock() if now is None else now
        stale = [k for k, (_, used) in self._entries.items() if now - used > self.ttl_s]
        for key in stale:
            kernel, _ = self._entries.pop(key)
            self.stats.bytes -= kernel.nbytes
        self.stats.expirations += len(stale)
        self.stats.entries = len(self._entries)
        return len(stale)

    def peek(self, artifact_id: str) -> Kernel | None:
        """The kernel if held (counts nothing, refreshes nothing)."""
        entry = self._entries.get(artifact_id)
        return None if entry is None else entry[0]

    def ids(self) -> list[str]:
        """Ids held, least recently used first."""
        return list(self._entries)
