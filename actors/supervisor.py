"""Run a set of actor shells in one process under one task group; stop cleanly on SIGTERM/SIGINT.

Services (such as the TelemetryActor's metrics server) run in the same task group: they start
before the shells and stop with them.

A shell that crashes (a bug of ours, or a Redis reply that is not a lost connection) is logged
and restarted (its state is rebuilt from the event stream and its pending entries are re-read),
with capped exponential backoff (:mod:`actors.hosting.restart`).
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from actors.hosting.restart import Restarts, keep_serving
from actors.shell import ActorShell

log = logging.getLogger("kasmina.supervisor")


def freeze_startup_heap() -> int:
    """Move every object alive now (imports, configuration, the built actors) out of the cyclic
    garbage collector's reach (``gc.freeze``), after one collection of what start-up left over.

    An actor process calls it once, before serving: a full collection then walks only what
    serving allocates, not the tens of thousands of long-lived start-up objects, so it costs the
    inbox loop less and pauses it for less. Returns the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class Supervisor:
    """Owns shells; ``run`` returns after ``stop`` or a termination signal."""

    def __init__(
        self,
        shells: Sequence[ActorShell],
        *,
        services: Sequence[Callable[..., Coroutine[Any, Any, Any]]] = (),
        max_backoff_s: float = 5.0,
    ) -> None:
        self.shells = list(shells)
        self.services = list(services)  # each takes task_status and runs until cancelled
        self.max_backoff_s = max_backoff_s
        self.crashes: dict[ActorShell, Restarts] = {}  # each shell's, from its first start
        self._stopping = False
        self._stopped = anyio.Event()

    @property
    def restarts(self) -> int:
        """Restarts of every shell since the supervisor started."""
        return sum(r.total for r in self.crashes.values())

    async def _keep(self, shell: ActorShell, *, task_status: TaskStatus[None]) -> None:
        restarts = Restarts(shell.logic.name, max_backoff_s=self.max_backoff_s)
        await keep_serving(
            shell.run,
            self.crashes.setdefault(shell, restarts),
            stopping=lambda: self._stopping,
            task_status=task_status,
        )

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                log.info("received %s: stopping", signal.Signals(signum).name)
                await self.stop()
                return

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start every shell (``started`` once all have rebuilt state), run until stopped."""
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._signals)
            for service in self.services:
                await tg.start(service)
            for shell in self.shells:
                await tg.start(self._keep, shell)
            task_status.started()
            await self._stopped.wait()
            tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Ask every shell to stop; ``run`` returns."""
        self._stopping = True
        with anyio.CancelScope(shield=True):
            for shell in self.shells:
                await shell.stop()
        self._stopped.set()
