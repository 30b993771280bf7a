"""A hostile client: forged, replayed and malformed traffic at a high rate, without the run's keys.

It sees the run's inboxes (it can read Redis) but holds no signing key. What it sends:
- ``forged``: a captured legitimate frame with its body or header altered (signature no longer
  matches), or a command signed with a key of its own (unknown key id);
- ``replayed``: captured legitimate frames published again, byte for byte;
- ``malformed``: random bytes, truncated frames, oversized frames, entries without a frame field.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import anyio
import msgpack

from actors.client import build_command
from actors.hosting import FRAME
from bus import Append, Bus, BusUnavailable
from contracts import KeyRing, Signer, streams

__all__ = ["Hostile", "forge"]


def forge(frame: bytes, rng: random.Random) -> bytes:
    """A legitimate frame with one header field or the body changed, the MAC kept."""
    parts = msgpack.unpackb(frame, raw=False)
    which = rng.choice(("body", "kind", "sender", "ts"))
    if which == "body":
        body = bytearray(parts[9] or b"\x00")
        body[rng.randrange(len(body))] ^= 0x01
        parts[9] = bytes(body)
    elif which == "kind":
        parts[1] = "seed.command"
    elif which == "sender":
        parts[3] = "tamiyo"
    else:
        parts[5] = int(parts[5]) + 1
    out: bytes = msgpack.packb(parts, use_bin_type=True)
    return out


@dataclass
class Hostile:
    """Floods a run's inboxes; :meth:`run` until ``stop`` is set. ``sent`` counts by kind."""

    bus: Bus
    run_id: str
    slots: tuple[str, ...]
    rate_per_s: float = 5000.0
    max_seconds: float = 15.0
    batch: int = 200
    seed: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    _captured: list[bytes] = field(default_factory=list)

    def targets(self) -> list[str]:
        """Every inbox of the run: seed actors, singletons and the trainer's execution inbox."""
        run = self.run_id
        return [
            *(streams.inbox(run, "seed", s) for s in self.slots),
            streams.inbox(run, "gate"),
            streams.inbox(run, "safety"),
            streams.inbox(run, "barrier"),
            streams.inbox(run, "telemetry"),
            streams.inbox(run, "execution", "0"),
        ]

    async def capture(self) -> int:
        """Copy legitimate frames from the inboxes (the material for replays and forgeries)."""
        for stream in self.targets():
            for entry in await self.bus.range(stream, "-", "+", count=200):
                if FRAME in entry.fields:
                    self._captured.append(entry.fields[FRAME])
        return len(self._captured)

    def _entry(self, rng: random.Random, own: Signer, target: str) -> tuple[str, dict[str, bytes]]:
        roll = rng.random()
        captured = self._captured
        if captured and roll < 0.35:
            self.sent["replayed"] += 1
            return "replayed", {FRAME: rng.choice(captured)}
        if roll < 0.55 and captured:
            self.sent["forged"] += 1
            return "forged", {FRAME: forge(rng.choice(captured), rng)}
        if roll < 0.7:
            self.sent["forged"] += 1
            cmd = build_command(rng.choice(self.slots), "germinate", blueprint="residual_mlp")
            return "forged", {FRAME: own.seal("seed.command", cmd, stream=target)}
        self.sent["malformed"] += 1
        pick = rng.randrange(4)
        if pick == 0:
            return "malformed", {FRAME: rng.randbytes(rng.randrange(1, 300))}
        if pick == 1 and captured:
            frame = rng.choice(captured)
            return "malformed", {FRAME: frame[: rng.randrange(1, len(frame))]}
        if pick == 2 and rng.random() < 0.01:  # oversized: over the 1 MiB frame limit
            return "malformed", {FRAME: b"\x99" + bytes((1 << 20) + 64)}
        return "malformed", {"junk": rng.randbytes(16)}

    async def run(self, stop: anyio.Event) -> None:
        """Publish batches at about ``rate_per_s`` until ``stop`` or ``max_seconds``."""
        rng = random.Random(self.seed)
        own = Signer(KeyRing.generate(), "tamiyo")
        targets = self.targets()
        started = time.monotonic()
        while not stop.is_set() and time.monotonic() - started < self.max_seconds:
            t0 = time.monotonic()
            appends = []
            for _ in range(self.batch):
                target = rng.choice(targets)
                _, fields = self._entry(rng, own, target)
                appends.append(Append(target, fields))
            try:
                await self.bus.publish_many(appends)
            except BusUnavailable:
                await anyio.sleep(0.2)
                continue
            spare = self.batch / self.rate_per_s - (time.monotonic() - t0)
            if spare > 0:
                with anyio.move_on_after(spare):
                    await stop.wait()
        self.seconds = time.monotonic() - started
