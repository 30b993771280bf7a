"""KasminaClient: how Tolaria (trainer) and Tamiyo (controller) drive a run from Python.

Commands are signed and published to the slot's SeedActor inbox. ``wait=True`` follows the run's
outcomes stream (docs/wire.md §9) and returns the command's outcome: its transition, its refusal,
its acceptance (pause, resume, adjust_optimizer) or its rejection (bad signature, replay, …, matched
by the id the frame claimed). Records before it (accepted, awaiting execution evidence) are
progress.

Publishing rides out a Redis outage for up to ``retry_s`` seconds without ever sending a command
twice: the envelope is sealed once, and after a failed try the client first looks for it in the
target stream (the reply may have been lost after the entry was written) and resends the same
bytes only if it is not there (:mod:`actors.delivery`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, TypeVar

import anyio
from google.protobuf.message import Message

from actors.attached import confirmations
from actors.delivery import shed_record, since, written_at
from actors.eventlog import BadEntry, read_log
from actors.hosting import FRAME
from actors.outcome import CommandTimeout, Following, Outcome, shed_outcome
from bus import Bus, BusUnavailable, backoff_s
from contracts import REGISTRY, Signer, Verifier, streams
from leyline import pb

__all__ = [
    "ACTIONS",
    "LIFECYCLE_KINDS",
    "CommandTimeout",
    "Event",
    "KasminaClient",
    "Outcome",
    "build_command",
]

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


def build_command(slot: str, action: str, *, reason: str = "", **params: Any) -> pb.SeedCommand:
    """A SeedCommand for ``action`` (one of ACTIONS)."""
    streams.check_slot(slot)
    _check_keywords(action, params)
    command = pb.SeedCommand(slot=slot, reason=reason)
    if action == "germinate":
        _fill_germinate(command.germinate, params)
    elif action == "adjust_optimizer":
        command.adjust_optimizer.lr_scale = float(params.get("lr_scale", 1.0))
        command.adjust_optimizer.weight_decay = float(params.get("weight_decay", -1.0))
    elif action in ACTIONS:
        getattr(command, action).SetInParent()
    else:
        raise ValueError(f"unknown action {action!r}; choose from {', '.join(ACTIONS)}")
    return command


#: the keywords each action takes besides ``reason`` (none for the others)
KEYWORDS = {
    "germinate": ("blueprint", "artifact", "params", "blend_mode", "alpha_schedule", "blend_steps"),
    "adjust_optimizer": ("lr_scale", "weight_decay"),
}


def _check_keywords(action: str, params: dict[str, Any]) -> None:
    """Refuse a keyword ``action`` does not take (a blueprint's own parameter belongs in
    ``params={...}``: passed as a keyword it used to be dropped, and the default seed built)."""
    unknown = sorted(set(params) - set(KEYWORDS.get(action, ())))
    if not unknown:
        return
    hint = (
        f"; a blueprint's parameters go in params={{...}}, e.g. params={{{unknown[0]!r}: ...}}"
        if action == "germinate"
        else ""
    )
    takes = ", ".join(KEYWORDS.get(action, ())) or "nothing but reason"
    raise TypeError(f"{action} takes no {', '.join(unknown)} (it takes {takes}){hint}")


def _germinate_params(given: Any) -> dict[str, float]:
    """``params`` of a germinate: a mapping of parameter names to numbers."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"germinate params must be a mapping of names to numbers, not {given!r}")
    out = {}
    for key, value in given.items():
        try:  # a number, a numeric string (YAML, argparse), a one-element tensor
            number = float(value) if isinstance(key, str) and not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise TypeError(f"germinate param {key!r}: {value!r} is not a number")
        if not math.isfinite(number):
            raise ValueError(f"germinate param {key!r}: {value!r} is not finite")
        out[key] = number
    return out


def _enum(enum: Any, prefix: str, name: str, what: str) -> int:
    """The value of ``prefix + NAME`` in ``enum`` (or the value itself, when it is one), or a
    ValueError listing the names."""
    if isinstance(name, int) and not isinstance(name, bool) and name in enum.values():
        return int(name)
    try:
        return int(enum.Value(f"{prefix}{str(name).upper()}"))
    except ValueError:
        names = [n.removeprefix(prefix).lower() for n in enum.keys()]  # noqa: SIM118 (a protobuf enum wrapper)
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(names)}") from None


def _fill_germinate(germ: pb.Germinate, params: dict[str, Any]) -> None:
    """A germinate action from ``build_command``'s parameters (a blueprint or an artifact id)."""
    blueprint = params.get("blueprint") or ""
    artifact = params.get("artifact") or ""
    if not blueprint and not artifact:
        raise ValueError("germinate needs a blueprint or an artifact id")
    germ.blueprint = blueprint
    germ.artifact_id = artifact
    for key, value in _germinate_params(params.get("params")).items():
        germ.params[key] = value
    if params.get("blend_mode"):
        mode = _enum(pb.BlendMode, "BLEND_MODE_", params["blend_mode"], "blend mode")
        germ.blend_mode = pb.BlendMode.ValueType(mode)
    if params.get("alpha_schedule"):
        schedule = params["alpha_schedule"]
        value = _enum(pb.AlphaSchedule, "ALPHA_SCHEDULE_", schedule, "schedule")
        germ.alpha_schedule = pb.AlphaSchedule.ValueType(value)
    germ.blend_steps = _blend_steps(params.get("blend_steps"))


def _blend_steps(given: Any) -> int:
    """``blend_steps``: a whole number of steps, 0 (or None) for the runtime's default."""
    steps = 0.0 if given is None else given
    whole = isinstance(steps, Real) and not isinstance(steps, bool) and float(steps).is_integer()
    if not whole or float(steps) < 0:
        raise ValueError(f"blend_steps must be a whole number >= 0, not {given!r}")
    return int(float(steps))


@dataclass(frozen=True, slots=True)
class Event:
    """One verified entry of a run's event log, parsed: ``message`` is the Leyline message of
    ``kind`` (``pb.LifecycleTransition`` for ``lifecycle.transition``, ``pb.GateResult`` for
    ``gate.result``, ``pb.LifecycleRefused`` for ``lifecycle.refused``, …)."""

    entry_id: str
    kind: str
    message: Message

    @property
    def slot(self) -> str:
        """The slot the event is about ("" for run-wide events)."""
        return str(getattr(self.message, "slot", ""))


#: what a controller usually follows: lifecycle moves, refusals and gate verdicts
LIFECYCLE_KINDS = ("lifecycle.transition", "lifecycle.refused", "gate.result")


class KasminaClient:
    """Sign and send commands; optionally wait for their outcome; follow the event log."""

    def __init__(
        self,
        bus: Bus,
        run: str,
        signer: Signer,
        verifier: Verifier,
        *,
        retry_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> None:
        self.bus = bus
        self.run = run
        self.signer = signer
        self.verifier = (
            verifier.with_replay()
        )  # reading the run's own log: MAC checked, no freshness
        self.retry_s = retry_s
        self.poll_s = poll_s  # how often wait() reads the outcomes stream
        self.retries = 0  # tries that failed and were retried (or found already written)

    async def publish(self, stream: str, message: Message, *, causation_id: str = "") -> str:
        """Sign and publish any Leyline message exactly once; returns its message id.

        While Redis is unavailable it retries for up to ``retry_s`` (then raises
        :class:`~bus.BusUnavailable`), never writing the envelope twice (see module docstring).
        """
        return (await self._publish_entry(stream, message, causation_id))[0]

    async def _publish_entry(
        self, stream: str, message: Message, causation_id: str = ""
    ) -> tuple[str, str]:
        """:meth:`publish`, returning the message id and the id of its entry."""
        kind = REGISTRY.kind_of(message)
        frame = self.signer.seal(kind, message, stream=stream, causation_id=causation_id)
        env = self.verifier.open(frame, stream=stream)
        entry_id = await self._publish_once(stream, {FRAME: frame, "kind": kind.encode()})
        return env.id, entry_id

    async def _publish_once(self, stream: str, fields: dict[str, bytes]) -> str:
        start = since(self.verifier.tolerance_s)
        tried = False

        async def attempt() -> str:
            nonlocal tried
            if tried:
                found = await written_at(self.bus, stream, fields[FRAME], start)
                if found is not None:
                    return found  # an earlier try was written; only its reply was lost
            tried = True
            return await self.bus.publish(stream, fields)

        return await self._retrying(attempt)

    async def command(
        self,
        slot: str,
        action: str,
        *,
        wait: bool = False,
        timeout_s: float = 30.0,
        reason: str = "",
        on_progress: Callable[[Outcome], None] | None = None,
        **params: Any,
    ) -> str | Outcome:
        """Send a command to a slot's SeedActor; with ``wait`` return its :class:`Outcome`
        (``on_progress`` sees the records before it: accepted, awaiting …)."""
        if not wait:
            message = build_command(slot, action, reason=reason, **params)
            return await self.publish(streams.inbox(self.run, "seed", slot), message)
        mark = await self.outcomes_mark()
        command_id, entry = await self.send(slot, action, reason=reason, **params)
        return await self.wait(
            command_id, after=mark, timeout_s=timeout_s, on_progress=on_progress, entry=entry
        )

    async def send(
        self, slot: str, action: str, *, reason: str = "", **params: Any
    ) -> tuple[str, tuple[str, str]]:
        """Send a command to a slot's SeedActor: its message id, and the inbox and entry id it
        was written at (what :meth:`wait` takes as ``entry``)."""
        inbox = streams.inbox(self.run, "seed", slot)
        message = build_command(slot, action, reason=reason, **params)
        command_id, entry_id = await self._publish_entry(inbox, message)
        return command_id, (inbox, entry_id)

    async def served(self, slot: str) -> bool:
        """Whether a SeedActor has served ``slot`` in this run (its inbox has the actor's consumer
        group): a command to a slot no SeedActor serves waits unread, and no record answers it."""
        info = await self._retrying(lambda: self.bus.info(streams.inbox(self.run, "seed", slot)))
        return any(g.name == streams.group(f"seed:{slot}") for g in info.groups)

    async def served_slots(self) -> list[str]:
        """The slots SeedActors have served in this run (from the seed registry), sorted."""
        names = await self._retrying(lambda: self.bus.members(streams.registry(self.run, "seed")))
        slots = (streams.inbox_key(self.run, "seed", n) for n in names)
        return sorted(s for s in slots if s is not None)

    async def outcomes_mark(self) -> str:
        """The outcomes stream's last entry id now: a wait started after it misses nothing
        recorded later."""
        return await self._retrying(self._marks)

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

    async def _marks(self) -> str:
        info = await self.bus.info(streams.outcomes(self.run))
        return info.last_id if info.length else "0-0"

    async def wait(
        self,
        command_id: str,
        *,
        after: str | None = None,
        timeout_s: float = 30.0,
        on_progress: Callable[[Outcome], None] | None = None,
        entry: tuple[str, str] | None = None,
    ) -> Outcome:
        """Follow the run's outcomes stream (entries after ``after``) to the command's outcome.

        Records before it (accepted, still awaiting something) go to ``on_progress``; on timeout
        :class:`CommandTimeout` carries the last of them (what the command still awaits). With
        ``entry`` (the command's inbox and entry id), a shed run covering it is its outcome too:
        rejected, ``overloaded``, whether or not the actor named the command's id, and a
        rejection of another entry claiming the command's id (a copy of its frame) is passed
        over. While Redis is unavailable it keeps trying until ``timeout_s``."""
        stream = streams.outcomes(self.run)
        follow = Following(command_id, entry, on_progress, cursor=after or "0-0")
        shed_cursor: str | None = None
        failures = 0
        with anyio.move_on_after(timeout_s):
            while True:
                try:
                    start = f"({follow.cursor}"
                    async for record in read_log(self.bus, stream, self.verifier, start=start):
                        outcome = follow.see(record)
                        if outcome is not None:
                            return outcome
                    if entry is not None:  # after the outcomes: a decided command costs no more
                        shed, shed_cursor = await shed_record(
                            self.bus, self.run, self.verifier, entry, shed_cursor
                        )
                        if shed is not None:
                            return shed_outcome(command_id, *shed)
                except BusUnavailable:  # Redis restarting or failing over: resume where it was
                    failures += 1
                    self.retries += 1
                    await anyio.sleep(backoff_s(failures, cap_s=1.0, jitter=False))
                    continue
                failures = 0
                await anyio.sleep(self.poll_s)
        raise follow.timed_out(timeout_s)

    async def confirmations(
        self, *, slot: str | None = None, order_id: str | None = None
    ) -> list[pb.ExecutionAck]:
        """The step confirmations of the run so far, oldest first: every rank's acknowledgement
        of every order it applied (``ok``) or refused, with the step it applied at (only
        ``slot``'s, or one order's, when given)."""
        return await self._retrying(
            lambda: confirmations(self.bus, self.run, self.verifier, slot=slot, order_id=order_id)
        )

    async def subscribe(
        self,
        kinds: Collection[str] = LIFECYCLE_KINDS,
        *,
        slot: str | None = None,
        since: str = "$",
        poll_s: float = 0.05,
    ) -> AsyncIterator[Event]:
        """Yield the run's events of ``kinds`` (all kinds if empty), of one ``slot`` if given, as
        typed :class:`Event` objects in log order, until the caller stops iterating.

        ``since`` is an entry id: ``"$"`` (the default) follows only events recorded from now on,
        ``"0-0"`` replays the whole log first. Entries that fail verification are skipped; while
        Redis is unavailable the subscription waits and resumes where it was."""
        stream = streams.events(self.run)
        cursor = since
        if since == "$":
            info = await self._retrying(lambda: self.bus.info(stream))
            cursor = info.last_id if info.length else "0-0"
        wanted = frozenset(kinds)
        while True:
            read = 0
            try:
                async for record in read_log(
                    self.bus, stream, self.verifier, start=f"({cursor}", page=500
                ):
                    cursor, read = record.entry_id, read + 1
                    if isinstance(record, BadEntry):
                        continue  # failed verification: no part of the run's history
                    if wanted and record.kind not in wanted:
                        continue
                    event = Event(record.entry_id, record.kind, record.message)
                    if slot is None or event.slot == slot:
                        yield event
            except BusUnavailable:
                await anyio.sleep(min(1.0, poll_s * 10))
                continue
            if not read:
                await anyio.sleep(poll_s)
