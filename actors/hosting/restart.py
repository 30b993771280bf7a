"""Restarting a crashed actor: capped exponential backoff, a restart counter, one-line log lines.

Both hosts use it: the :class:`~actors.supervisor.Supervisor` for each actor shell of
``kasmina run``, and :class:`~actors.execution.actor.ExecutionActor` for itself (a trainer's
process has no supervisor). An actor's task that raises (a bug, or a Redis reply that is not a
lost connection: a key of the wrong type, an OOM refusal under ``maxmemory``) is logged and
served again after the backoff; what it had not acknowledged is still pending on its inbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskStatus

from actors.hosting.quarantine import UnverifiableLog
from bus import BusError, backoff_s

__all__ = ["Restarts", "keep_serving", "one_line"]

log = logging.getLogger("kasmina.supervisor")

QUIET_S = 60.0  # the same reason again within this long is logged at debug level only
HEALTHY_S = 30.0  # a life this long ends a crash streak: the next crash backs off from the start


def one_line(exc: BaseException) -> str:
    """What went wrong, on one line: the first innermost error of an exception group, as
    ``Type: message`` (at most 200 characters)."""
    exc = _innermost(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class _Once:
    """A task status whose ``started`` passes through the first time only (a restarted actor
    reports started again)."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self._inner: TaskStatus[None] | None = inner

    def started(self, value: None = None) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.started(value)


class Restarts:
    """The restarts of one actor: how many, how long to wait before the next, and its log lines
    (a bus error is one line; any other error, a bug, comes with its traceback). The same reason
    again within ``QUIET_S`` is logged at debug level, so a condition that lasts (a full Redis)
    gives one line a minute, not one per restart."""

    def __init__(self, name: str, *, max_backoff_s: float = 5.0) -> None:
        self.name = name
        self.max_backoff_s = max_backoff_s
        self.total = 0  # restarts since the process started
        self.streak = 0  # crashes since the actor last served for HEALTHY_S
        self.last_reason = ""
        self._logged_at = -QUIET_S

    def crashed(self, exc: BaseException, lived_s: float) -> float:
        """Count a crash after a life of ``lived_s`` seconds, log it, and return the backoff."""
        if lived_s >= HEALTHY_S:
            self.streak = 0
        delay = backoff_s(self.streak, base_s=0.1, cap_s=self.max_backoff_s, jitter=False)
        self.total += 1
        self.streak += 1
        reason = one_line(exc)
        now = time.monotonic()
        if reason == self.last_reason and now - self._logged_at < QUIET_S:
            log.debug("actor %s crashed again (%s); restart %d", self.name, reason, self.total)
        elif isinstance(_innermost(exc), UnverifiableLog):  # what to do is in the message
            self._logged_at = now
            log.error("actor %s does not serve: %s (trying again in %.1f s)", self.name,
                      _innermost(exc), delay)  # fmt: skip
        elif isinstance(_innermost(exc), BusError):
            self._logged_at = now
            log.warning("actor %s stopped on a Redis error (%s); restarting in %.1f s (restart %d)",
                        self.name, reason, delay, self.total)  # fmt: skip
        else:
            self._logged_at = now
            log.error("actor %s crashed (%s); restarting in %.1f s (restart %d)",
                      self.name, reason, delay, self.total, exc_info=exc)  # fmt: skip
        self.last_reason = reason
        return delay


async def keep_serving(
    serve: Callable[..., Awaitable[None]],
    restarts: Restarts,
    *,
    stopping: Callable[[], bool],
    stopped: anyio.Event | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``serve(task_status=...)`` until it returns or ``stopping()``; after a crash, wait the
    backoff (cut short by ``stopped``) and serve again. ``task_status`` is passed through once,
    and reported started on the way out too (a stop before Redis ever answered holds up no
    one)."""
    started = _Once(task_status)
    while not stopping():
        begun = time.monotonic()
        try:
            await serve(task_status=started)
            break
        except Exception as exc:
            started.started()  # a crash before (or after) the first start holds up no one
            delay = restarts.crashed(exc, time.monotonic() - begun)
        with anyio.move_on_after(delay):
            if stopped is None:
                await anyio.sleep(delay)
            else:
                await stopped.wait()
    started.started()
