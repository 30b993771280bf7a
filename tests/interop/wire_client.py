"""A second implementation of the wire protocol, written from docs/wire.md alone.

It imports no project package: only the standard library (hmac, hashlib, struct, json) and
msgpack. It signs frames (§2, §3), opens them with the receiver's checks in the order of §5
(nonces excepted), and reads key files (§4).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

DOMAIN = b"kasmina.leyline.v2\x00"
RUN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KINDS = {  # §6
    "seed.command", "lifecycle.transition", "lifecycle.refused", "lifecycle.progress",
    "gate.request", "gate.result", "exec.order", "exec.ack", "step.report", "telemetry.raw",
    "telemetry.batch", "telemetry.region", "telemetry.global", "telemetry.critical",
    "safety.signal", "safety.verdict", "checkpoint.request", "barrier.vote", "barrier.commit",
    "barrier.byzantine", "barrier.timeout", "rejection", "state.digest", "actor.heartbeat",
    "command.outcome", "barrier.tick", "barrier.propose", "pruning.order", "pruning.importance",
    "pruning.ack",
}  # fmt: skip
ROLE_KINDS = {  # §4, the roles table
    "controller": {"seed.command", "pruning.order"},
    "operator": {"seed.command", "pruning.order"},
    "trainer": {
        "exec.ack", "step.report", "telemetry.raw", "telemetry.batch", "telemetry.critical",
        "safety.signal", "barrier.vote", "actor.heartbeat", "pruning.importance", "pruning.ack",
        "rejection",
    },
    "actor": {
        "lifecycle.transition", "lifecycle.refused", "lifecycle.progress", "gate.request",
        "gate.result", "exec.order", "telemetry.region", "telemetry.global", "telemetry.critical",
        "safety.signal", "safety.verdict", "checkpoint.request", "barrier.propose", "barrier.tick",
        "barrier.vote", "barrier.commit", "barrier.byzantine", "barrier.timeout", "rejection",
        "command.outcome", "state.digest", "actor.heartbeat",
    },
}  # fmt: skip
ACTOR_STREAMS = {"events", "outcomes", "quarantine", "telemetry"}  # §4: run streams by role
RANK_STREAMS = {"rejected", "heartbeats"}
RANK = re.compile(r"^execution:[0-9]+$")


class Refused(Exception):
    """A frame failed a receiver check; ``reason`` is the §7 code."""

    def __init__(self, reason: str, claimed_id: str = "", verified: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.claimed_id = claimed_id
        self.verified = verified


@dataclass
class Frame:
    """The eleven elements of a frame (§2)."""

    v: int
    kind: str
    id: str
    sender: str
    key_id: str
    ts_ns: int
    causation_id: str
    run: str
    to: str
    body: bytes
    sig: bytes


@dataclass
class KeyEntry:
    """One key of a key file (§4)."""

    secret: bytes
    expires_ns: int | None
    revoked_ns: int | None
    roles: frozenset[str]


Keys = dict[str, KeyEntry]


def load_keys(path: str | Path) -> tuple[str, Keys]:
    """(active key id, {key id: entry}) from a key file (§4)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return keys_from_json(data)


def keys_from_json(data: dict[str, Any]) -> tuple[str, Keys]:
    """The same from the parsed JSON (a key without ``roles`` holds every role)."""
    assert data["format"] == "kasmina-keys" and data["version"] == 1
    keys = {
        k["id"]: KeyEntry(
            base64.b64decode(k["secret"], validate=True),
            k.get("expires_ns"),
            k.get("revoked_ns"),
            frozenset(k["roles"]) if "roles" in k else frozenset(ROLE_KINDS),
        )
        for k in data["keys"]
    }
    assert len(keys) == len(data["keys"]) and data["active"] in keys
    return data["active"], keys


def split_stream(stream: str) -> tuple[str, str]:
    """(run, destination) of a stream key ``kasmina:{RUN}:DEST`` (§1)."""
    head, _, rest = stream.partition("}:")
    assert head.startswith("kasmina:{") and rest, stream
    return head[len("kasmina:{") :], rest


def mac_input(
    v: int, kind: str, mid: str, sender: str, key_id: str, ts_ns: int, cause: str, run: str,
    to: str, body: bytes,
) -> bytes:  # fmt: skip
    """§3: domain tag, ten big-endian u32 lengths, ten fields."""
    fields = [
        str(v).encode("ascii"),
        kind.encode(),
        mid.encode(),
        sender.encode(),
        key_id.encode(),
        ts_ns.to_bytes(8, "big"),
        cause.encode(),
        run.encode(),
        to.encode(),
        hashlib.sha256(body).digest(),
    ]
    return DOMAIN + b"".join(struct.pack(">I", len(f)) for f in fields) + b"".join(fields)


def seal(
    secret: bytes, key_id: str, *, kind: str, mid: str, sender: str, ts_ns: int, stream: str,
    body: bytes, cause: str = "",
) -> bytes:  # fmt: skip
    """A v2 frame for ``stream``."""
    run, to = split_stream(stream)
    data = mac_input(2, kind, mid, sender, key_id, ts_ns, cause, run, to, body)
    sig = hmac.new(secret, data, hashlib.sha256).digest()
    packed: bytes = msgpack.packb(
        [2, kind, mid, sender, key_id, ts_ns, cause, run, to, body, sig], use_bin_type=True
    )
    return packed


def _decode(raw: bytes, max_bytes: int) -> Frame:
    """§2 with its limits (steps 2-3 of §5)."""
    if len(raw) > max_bytes:
        raise Refused("too_large")
    try:
        items = msgpack.unpackb(
            raw, raw=False, max_array_len=11, max_map_len=0, max_ext_len=0, max_str_len=256,
            max_bin_len=max_bytes,
        )  # fmt: skip
    except Exception:
        raise Refused("bad_frame") from None
    if not isinstance(items, list):
        raise Refused("bad_frame")
    claimed = items[2] if len(items) > 2 and isinstance(items[2], str) else ""
    if items and type(items[0]) is int and items[0] != 2:
        raise Refused("unsupported_version", claimed)
    if len(items) != 11:
        raise Refused("bad_frame", claimed)
    v, kind, mid, sender, key_id, ts, cause, run, to, body, sig = items
    strings_ok = all(type(s) is str and s for s in (kind, mid, sender, key_id, to))
    if not (
        strings_ok
        and type(cause) is str
        and type(ts) is int
        and 0 <= ts < 2**63
        and type(run) is str
        and RUN.fullmatch(run)
        and type(body) is bytes
        and type(sig) is bytes
        and len(sig) == 32
    ):
        raise Refused("bad_frame", claimed)
    return Frame(v, kind, mid, sender, key_id, ts, cause, run, to, body, sig)


def open_frame(
    raw: bytes,
    stream: str,
    keys: Keys,
    now_ns: int,
    *,
    max_bytes: int = 1 << 20,
    tolerance_ns: int = 60 * 10**9,
    replay: bool = False,
) -> Frame:
    """§5 steps 2-10 (the nonce is the receiver's business)."""
    f = _decode(raw, max_bytes)
    key = keys.get(f.key_id)
    if key is None:
        raise Refused("unknown_key", f.id)
    if key.revoked_ns is not None:
        raise Refused("revoked_key", f.id)
    if key.expires_ns is not None and (
        f.ts_ns >= key.expires_ns or (not replay and now_ns >= key.expires_ns)
    ):
        raise Refused("expired_key", f.id)
    data = mac_input(f.v, f.kind, f.id, f.sender, f.key_id, f.ts_ns, f.causation_id, f.run, f.to,
                     f.body)  # fmt: skip
    if not hmac.compare_digest(hmac.new(key.secret, data, hashlib.sha256).digest(), f.sig):
        raise Refused("bad_signature", f.id)
    run, to = split_stream(stream)
    if f.run != run:
        raise Refused("wrong_run", f.id, True)
    if f.to != to:
        raise Refused("wrong_destination", f.id, True)
    if not replay:
        if f.ts_ns < now_ns - tolerance_ns:
            raise Refused("stale", f.id, True)
        if f.ts_ns > now_ns + tolerance_ns:
            raise Refused("from_future", f.id, True)
    if f.kind not in KINDS:
        raise Refused("unknown_kind", f.id, True)
    if not _may_sign(key.roles, f.kind, to, f.sender):
        raise Refused("forbidden_kind", f.id, True)
    return f


def _may_sign(roles: frozenset[str], kind: str, to: str, sender: str) -> bool:
    """§4: a kind of the key's roles, and for the run's own logs the role (and name) they need."""
    if not any(kind in ROLE_KINDS[r] for r in roles):
        return False
    if to in ACTOR_STREAMS:
        return "actor" in roles
    if to in RANK_STREAMS:
        return "actor" in roles or ("trainer" in roles and RANK.fullmatch(sender) is not None)
    return True
