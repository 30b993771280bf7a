"""Composition: which bus, which keys, which verifier — chosen once, at the edge."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from actors.assemble import live_verifier
from bus import Bus, open_bus
from contracts import KasminaConfig, KeyRing, Signer, Verifier, streams


@dataclass(slots=True)
class Wiring:
    """Everything a process needs to talk on a run."""

    bus: Bus
    run: str
    ring: KeyRing
    config: KasminaConfig

    def signer(self, sender: str) -> Signer:
        """A signer with the active key."""
        return Signer(self.ring, sender)

    def verifier(self, *, replay: bool = False) -> Verifier:
        """A live verifier whose nonce guard is shared through the bus (or a replay verifier)."""
        return live_verifier(self.bus, self.run, self.ring, self.config, replay=replay)


def load_config(path: str | Path | None = None) -> KasminaConfig:
    """Config from ``path`` (or ``$KASMINA_CONFIG``) and ``KASMINA__…`` variables."""
    path = path or os.environ.get("KASMINA_CONFIG") or None
    return KasminaConfig.load(path)


def connect(url: str, run: str, ring: KeyRing, config: KasminaConfig | None = None) -> Wiring:
    """Open the bus at ``url`` for ``run``."""
    streams.prefix(run)  # validates the run id
    config = config or load_config()
    bus = open_bus(url, processed_ttl_ms=int(config.bus.processed_ttl_s * 1000))
    return Wiring(bus=bus, run=run, ring=ring, config=config)
