"""KasminaClient: how Tolaria (trainer) and Tamiyo (controller) drive a run from Python.

Commands are signed and published to the slot's SeedActor inbox. ``wait=True`` returns the outcome:
the first lifecycle transition or refusal caused by the command, or the rejection of the command
itself (bad signature, replay, …), whichever the run records first.

Publishing rides out a Redis outage for up to ``retry_s`` seconds without ever sending a command
twice: the envelope is sealed once, and after a failed try the client first looks for it in the
target stream (the reply may have been lost after the entry was written) and resends the same
bytes only if it is not there (:mod:`actors.delivery`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from actors.delivery import since, written
from actors.eventlog import LogRecord, read_log
from actors.hosting import FRAME
from bus import Bus, BusUnavailable, backoff_s
from contracts import REGISTRY, Signer, Verifier, kinds, streams
from leyline import pb

T = TypeVar("T")

ACTIONS = (
    "germinate",
    "cull",
    "pause",
    "resume",
    "terminate",
    "emergency_stop",
    "adjust_optimizer",
)


class CommandTimeout(TimeoutError):
    """No outcome was recorded for a command in time."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a command."""

    command_id: str
    kind: str  # lifecycle.transition | lifecycle.refused | rejection
    message: Message
    entry_id: str

    @property
    def ok(self) -> bool:
        """True for a transition."""
        return self.kind == "lifecycle.transition"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        body = MessageToDict(self.message, preserving_proto_field_name=True)
        return {
            "command_id": self.command_id,
            "ok": self.ok,
            "kind": self.kind,
            "entry_id": self.entry_id,
            **body,
        }


def build_command(slot: str, action: str, *, reason: str = "", **params: Any) -> pb.SeedCommand:
    """A SeedCommand for ``action`` (one of ACTIONS)."""
    streams.check_slot(slot)
    command = pb.SeedCommand(slot=slot, reason=reason)
    if action == "germinate":
        blueprint = params.get("blueprint") or ""
        if not blueprint:
            raise ValueError("germinate needs a blueprint")
        germ = command.germinate
        germ.blueprint = blueprint
        for key, value in (params.get("params") or {}).items():
            germ.params[key] = float(value)
        if params.get("blend_mode"):
            germ.blend_mode = pb.BlendMode.Value(f"BLEND_MODE_{params['blend_mode'].upper()}")
        if params.get("alpha_schedule"):
            germ.alpha_schedule = pb.AlphaSchedule.Value(
                f"ALPHA_SCHEDULE_{params['alpha_schedule'].upper()}"
            )
        germ.blend_steps = int(params.get("blend_steps") or 0)
    elif action == "adjust_optimizer":
        command.adjust_optimizer.lr_scale = float(params.get("lr_scale", 1.0))
        command.adjust_optimizer.weight_decay = float(params.get("weight_decay", -1.0))
    elif action in ACTIONS:
        getattr(command, action).SetInParent()
    else:
        raise ValueError(f"unknown action {action!r}; choose from {', '.join(ACTIONS)}")
    return command


class KasminaClient:
    """Sign and send commands; optionally wait for their outcome."""

    def __init__(
        self, bus: Bus, run: str, signer: Signer, verifier: Verifier, *, retry_s: float = 30.0
    ) -> None:
        self.bus = bus
        self.run = run
        self.signer = signer
        self.verifier = (
            verifier.with_replay()
        )  # reading the run's own log: MAC checked, no freshness
        self.retry_s = retry_s
        self.retries = 0  # tries that failed and were retried (or found already written)

    async def publish(self, stream: str, message: Message, *, causation_id: str = "") -> str:
        """Sign and publish any Leyline message exactly once; returns its message id.

        While Redis is unavailable it retries for up to ``retry_s`` (then raises
        :class:`~bus.BusUnavailable`), never writing the envelope twice (see module docstring).
        """
        kind = REGISTRY.kind_of(message)
        frame = self.signer.seal(kind, message, stream=stream, causation_id=causation_id)
        env = self.verifier.open(frame, stream=stream)
        await self._publish_once(stream, {FRAME: frame, "kind": kind.encode()})
        return env.id

    async def _publish_once(self, stream: str, fields: dict[str, bytes]) -> None:
        start = since(self.verifier.tolerance_s)
        tried = False

        async def attempt() -> None:
            nonlocal tried
            if tried and await written(self.bus, stream, fields[FRAME], start):
                return  # an earlier try was written; only its reply was lost
            tried = True
            await self.bus.publish(stream, fields)

        await self._retrying(attempt)

    async def command(
        self,
        slot: str,
        action: str,
        *,
        wait: bool = False,
        timeout_s: float = 30.0,
        reason: str = "",
        **params: Any,
    ) -> str | Outcome:
        """Send a command to a slot's SeedActor; with ``wait`` return its :class:`Outcome`."""
        message = build_command(slot, action, reason=reason, **params)
        if not wait:
            return await self.publish(streams.inbox(self.run, "seed", slot), message)
        mark = await self._retrying(self._marks)
        command_id = await self.publish(streams.inbox(self.run, "seed", slot), message)
        return await self.wait(command_id, after=mark, timeout_s=timeout_s)

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (safe to repeat), retrying while Redis is unavailable for up to ``retry_s``."""
        deadline = anyio.current_time() + self.retry_s
        failures = 0
        while True:
            try:
                return await op()
            except BusUnavailable:
                failures += 1
                self.retries += 1
                if anyio.current_time() >= deadline:
                    raise
                await anyio.sleep(backoff_s(failures, cap_s=1.0, jitter=False))

    async def _marks(self) -> Mapping[str, str]:
        marks = {}
        for stream in (streams.events(self.run), streams.rejected(self.run)):
            info = await self.bus.info(stream)
            marks[stream] = info.last_id if info.length else "0-0"
        return marks

    async def wait(
        self, command_id: str, *, after: Mapping[str, str] | None = None, timeout_s: float = 30.0
    ) -> Outcome:
        """Poll the event and rejected streams for the command's outcome."""
        events, rejected = streams.events(self.run), streams.rejected(self.run)
        cursors = {events: "0-0", rejected: "0-0", **(after or {})}
        with anyio.move_on_after(timeout_s):
            while True:
                found = await self._scan(events, cursors, command_id)
                if found is None:
                    found = await self._scan(rejected, cursors, command_id)
                    if found is not None:
                        # A refusal writes its lifecycle event and its rejection record in one
                        # commit: once the record is visible so is the event, which is the outcome.
                        found = await self._scan(events, cursors, command_id) or found
                if found is not None:
                    return found
                await anyio.sleep(0.05)
        raise CommandTimeout(f"no outcome for command {command_id} within {timeout_s:g} s")

    async def _scan(self, stream: str, cursors: dict[str, str], command_id: str) -> Outcome | None:
        """The command's outcome among ``stream``'s entries after its cursor (advanced)."""
        start = f"({cursors[stream]}"
        async for record in read_log(self.bus, stream, self.verifier, start=start, page=500):
            cursors[stream] = record.entry_id
            if isinstance(record, LogRecord) and _answers(record, command_id):
                return Outcome(command_id, record.kind, record.message, record.entry_id)
        return None


def _answers(record: LogRecord, command_id: str) -> bool:
    """Whether ``record`` is the outcome of the command ``command_id``."""
    if record.kind == kinds.REJECTION:
        assert isinstance(record.message, pb.Rejection)
        return bool(record.message.message_id == command_id)
    if record.kind in (kinds.LIFECYCLE_TRANSITION, kinds.LIFECYCLE_REFUSED):
        return bool(getattr(record.message, "command_id", "") == command_id)
    return False
