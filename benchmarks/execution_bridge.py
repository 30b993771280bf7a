"""Bus bridges for the execution benchmark: while inside, a run's actors (or only the
ExecutionActor) serve a runtime on a bus in a background thread, so its step time can be measured
with the bus traffic against without."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from actors.execution import ExecutionRuntime

Bridge = Callable[[ExecutionRuntime], AbstractContextManager[Any]]


@contextlib.contextmanager
def bus_bridge_for(
    runtime: Any, url: str = "fakeredis://", *, actors: bool = True
) -> Iterator[None]:
    """While inside: every actor of a run and an ExecutionActor for ``runtime`` run on ``url`` in a
    background thread (their own event loop), flushing the runtime's outbox as it trains."""
    import threading
    import uuid

    import anyio

    from bus import open_bus
    from bus.testing import purge_prefix
    from contracts import streams
    from scenarios.cluster import running_cluster

    stop = threading.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    def main() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # told to the timing thread: at its start, or at its end
            failed.append(exc)
            ready.set()

    async def serve() -> None:
        bus = open_bus(url)
        run = f"bench-{uuid.uuid4().hex[:8]}"
        slots = sorted(runtime.slots) if actors else []
        names = ("seed", "gate", "safety", "telemetry", "barrier") if actors else ("gate",)
        async with running_cluster(bus, run=run, slots=slots, runtimes=[runtime], actors=names):
            ready.set()
            while not stop.is_set():
                await anyio.sleep(0.05)
        await purge_prefix(bus, streams.prefix(run))  # leave nothing behind on a shared server
        await bus.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    if not ready.wait(30) or failed:
        stop.set()
        reason = failed[0] if failed else TimeoutError(f"no bus bridge on {url} within 30 s")
        raise RuntimeError(f"the bus bridge on {url} did not start: {reason}") from None
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    if failed:  # the bridge stopped while the blocks were timed: their figure is not one
        raise RuntimeError(f"the bus bridge on {url} failed: {failed[0]}") from None


def bus_bridge(url: str = "fakeredis://", *, actors: bool = True) -> Bridge:
    """A ``bridge=`` for :func:`run_execution_bench` over ``url`` (see :func:`bus_bridge_for`)."""
    return lambda runtime: bus_bridge_for(runtime, url, actors=actors)


def bus_bridges(url: str = "fakeredis://") -> dict[str, Bridge]:
    """Both traffic figures: the ExecutionActor alone on the bus, and every actor in-process."""
    return {
        "execution.bus_step_executor": bus_bridge(url, actors=False),
        "execution.bus_step_all_actors": bus_bridge(url, actors=True),
    }
