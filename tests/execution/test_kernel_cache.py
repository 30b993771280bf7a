"""The kernel cache: LRU within a byte budget, TTL expiry, counters in the runtime's telemetry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from execution_helpers import kinds, tiny
from kernel_helpers import germinate_artifact, kernel_runtime, program

from actors.artifacts import DirectoryStore
from actors.execution.kernelcache import KernelCache
from actors.telemetry import render
from actors.telemetry.slots import SlotBoard
from contracts import KeyRing


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache(ring: KeyRing, root: Path, budget: int, clock: Clock) -> KernelCache:
    return KernelCache(torch.device("cpu"), budget_bytes=budget, ttl_s=60.0, ring=ring,
                       source=DirectoryStore(root), clock=clock)  # fmt: skip


def test_the_cache_never_holds_more_than_its_budget(tmp_path: Path) -> None:
    """Loading six kernels through a budget of about two keeps at most the budget, evicting the
    least recently used; a kernel larger than the whole budget is served but never kept."""
    ring, store, clock = KeyRing.generate(), DirectoryStore(tmp_path), Clock()
    sealed = [program(ring, rank=r) for r in (2, 3, 4, 5, 6, 7)]
    for s in sealed:
        store.put_sync(s)
    one = _cache(ring, tmp_path, 1 << 30, clock).get(sealed[-1].id).nbytes
    cache = _cache(ring, tmp_path, int(one * 2.2), clock)
    for s in sealed:
        clock.now += 1
        cache.get(s.id)
        assert cache.stats.bytes <= cache.budget_bytes
        assert cache.stats.bytes == sum(cache.peek(i).nbytes for i in cache.ids())  # type: ignore[union-attr]
    assert cache.stats.evictions >= 3 and cache.ids()[-1] == sealed[-1].id
    assert sealed[0].id not in cache
    big = _cache(ring, tmp_path, one // 2, clock)
    assert big.get(sealed[-1].id).nbytes == one and big.ids() == [] and big.stats.bytes == 0


def test_hits_refresh_recency_and_idle_kernels_expire(tmp_path: Path) -> None:
    """A hit makes an entry most recent (it survives the next eviction); an entry unused for
    longer than the TTL is dropped and counted."""
    ring, store, clock = KeyRing.generate(), DirectoryStore(tmp_path), Clock()
    a, b, c = (program(ring, rank=r) for r in (4, 4 + 1, 4 + 2))
    for s in (a, b, c):
        store.put_sync(s)
    size = max(_cache(ring, tmp_path, 1 << 30, clock).get(s.id).nbytes for s in (a, b, c))
    cache = _cache(ring, tmp_path, 2 * size + size // 2, clock)
    cache.get(a.id)
    cache.get(b.id)
    cache.get(a.id)  # a is now more recent than b
    cache.get(c.id)
    assert a.id in cache and b.id not in cache
    assert (cache.stats.hits, cache.stats.misses, cache.stats.loads) == (1, 3, 3)
    clock.now += 61
    assert cache.expire() == 2 and cache.ids() == [] and cache.stats.bytes == 0
    assert cache.stats.expirations == 2


def test_cache_counters_reach_the_runtime_telemetry(tmp_path: Path) -> None:
    """Once the cache has served a germination, every report carries kernel_cache_* metrics, and
    a Prometheus scrape of the telemetry shows them per region."""
    ring = KeyRing.generate()
    sealed = program(ring)
    DirectoryStore(tmp_path).put_sync(sealed)
    model, slots = tiny()
    rt = kernel_runtime(model, slots, ring, tmp_path)
    rt.submit(germinate_artifact("a", 0, sealed.id))
    rt.submit(germinate_artifact("b", 0, sealed.id))
    rt.on_step(0)
    from actors.execution import monitor

    monitor.report(rt, 0, float("nan"), float("nan"))
    raws = [m for m in kinds(rt.drain_outbox(), "telemetry.raw") if not m.slot]
    assert len(raws) == 1
    metrics = raws[0].metrics
    assert metrics["kernel_cache_loads"] == 1.0 and metrics["kernel_cache_hits"] == 1.0
    assert metrics["kernel_cache_bytes"] == float(rt.kernels.stats.bytes) > 0
    board = SlotBoard()
    board.note(raws[0])
    text = render(None, None, board.views(), board.runtime_views()).decode()
    assert 'kasmina_runtime_metric{metric="kernel_cache_hits",region=""} 1.0' in text
    assert 'kasmina_runtime_metric{metric="kernel_cache_loads",region=""} 1.0' in text


def test_cache_settings_are_validated() -> None:
    """A negative budget or a non-positive TTL is refused."""
    with pytest.raises(ValueError, match="budget"):
        KernelCache(torch.device("cpu"), budget_bytes=-1)
    with pytest.raises(ValueError, match="ttl"):
        KernelCache(torch.device("cpu"), ttl_s=0)
