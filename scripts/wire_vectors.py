"""Write (or check) docs/wire-vectors.json: the envelope v2 test vectors of docs/wire.md.

Usage: python scripts/wire_vectors.py [--check]

Every vector is deterministic (fixed keys, ids, timestamps); ``--check`` exits non-zero when the
file differs from what the code produces now (a change of the signed format is a breaking change).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts import Key, KeyRing, Signer, mac_input, streams, unpack  # noqa: E402
from contracts.envelope import VERSION  # noqa: E402
from leyline import pb  # noqa: E402

OUT = ROOT / "docs" / "wire-vectors.json"
K1 = Key(id="k-vector-0001", secret=bytes(range(32)), created_ns=1_800_000_000_000_000_000)
K2 = Key(id="k-vector-0002", secret=bytes(range(32, 80)), created_ns=1_800_000_000_000_000_000)
TS = 1_800_000_000_123_456_789
S = 10**9
#: a rotated-out key: it expires 10 s after TS
K3 = Key(
    id="k-vector-0003",
    secret=bytes(range(80, 112)),
    created_ns=1_800_000_000_000_000_000,
    expires_ns=TS + 10 * S,
)
#: a revoked key
K4 = Key(
    id="k-vector-0004",
    secret=bytes(range(112, 144)),
    created_ns=1_800_000_000_000_000_000,
    revoked_ns=TS - S,
)
#: a key that holds only the trainer role
K5 = Key(
    id="k-vector-0005",
    secret=bytes(range(144, 176)),
    created_ns=1_800_000_000_000_000_000,
    roles=frozenset({"trainer"}),
)


def _ring(active: str) -> KeyRing:
    return KeyRing([K1, K2, K3, K4, K5], active)


def _signer(key: Key, sender: str) -> Signer:
    """A signer with ``key`` (the ring's rules on an active key do not apply to vectors)."""
    signer = Signer(KeyRing([replace(key, expires_ns=None, revoked_ns=None)], key.id), sender)
    return signer


def _valid(
    name: str,
    *,
    kind: str,
    body: bytes,
    stream: str,
    sender: str,
    msg_id: str,
    causation: str = "",
    key: str = K1.id,
    ts: int = TS,
) -> dict[str, Any]:
    frame = Signer(_ring(key), sender).seal(
        kind, body, stream=stream, causation_id=causation, msg_id=msg_id, ts_ns=ts
    )
    env = unpack(frame)
    data = mac_input(VERSION, kind, msg_id, sender, key, ts, causation, env.run, env.to, body)
    return {
        "name": name,
        "fields": {
            "v": VERSION,
            "kind": kind,
            "id": msg_id,
            "sender": sender,
            "key_id": key,
            "ts_ns": ts,
            "causation_id": causation,
            "run": env.run,
            "to": env.to,
        },
        "body_hex": body.hex(),
        "stream": stream,
        "now_ns": ts,
        "mac_input_hex": data.hex(),
        "sig_hex": env.sig.hex(),
        "frame_hex": frame.hex(),
    }


def _invalid(
    name: str,
    frame: bytes,
    stream: str,
    reason: str,
    *,
    claimed_id: str | None = "",
    verified: bool = False,
    now_ns: int = TS,
    max_bytes: int = 1 << 20,
) -> dict[str, Any]:
    if reason in ("bad_frame", "too_large"):
        claimed_id = None  # how far a malformed frame can be read depends on the decoder
    return {
        "name": name,
        "frame_hex": frame.hex(),
        "stream": stream,
        "now_ns": now_ns,
        "max_bytes": max_bytes,
        "reason": reason,
        "claimed_id": claimed_id,
        "verified": verified,
    }


def _reencode(frame: bytes, index: int, value: object) -> bytes:
    items = msgpack.unpackb(frame, raw=False)
    items[index] = value
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


def _packed(items: list[Any], encoded: dict[int, bytes], head: bytes = b"\x9b") -> bytes:
    """The 11 elements as a msgpack array, element ``i`` written as ``encoded[i]`` where given
    (another valid encoding than the shortest one ``msgpack.packb`` picks)."""
    parts = [encoded.get(i) or msgpack.packb(x, use_bin_type=True) for i, x in enumerate(items)]
    return head + b"".join(parts)


def _reencoded(
    name: str, of: dict[str, Any], encoded: dict[int, bytes], head: bytes = b"\x9b"
) -> dict[str, Any]:
    """A valid frame ``of`` written with other msgpack encodings: the same frame to a receiver."""
    frame = _packed(msgpack.unpackb(bytes.fromhex(of["frame_hex"]), raw=False), encoded, head)
    return {
        "name": name,
        "of": of["name"],
        "frame_hex": frame.hex(),
        "stream": of["stream"],
        "now_ns": of["now_ns"],
        "id": of["fields"]["id"],
    }


def build() -> dict[str, Any]:
    """The vectors document."""
    inbox = streams.inbox("t2", "seed", "layer1.s0")
    command = pb.SeedCommand(
        slot="layer1.s0", reason="grow", germinate=pb.Germinate(blueprint="residual_mlp")
    ).SerializeToString()
    transition = pb.LifecycleTransition(
        slot="layer1.s0", from_stage=1, to_stage=2, step=40, cause="gate G0_SANITY passed", seq=3
    ).SerializeToString()
    big = bytes((i * 7) % 251 for i in range(3000))  # a body past 1 KiB: the shape walk runs
    valid = [
        _valid(
            "command to a slot inbox",
            kind="seed.command",
            body=command,
            stream=inbox,
            sender="tamiyo",
            msg_id="01890000-0000-7000-8000-000000000001",
        ),
        _valid(
            "event with a causation id",
            kind="lifecycle.transition",
            body=transition,
            stream=streams.events("t2"),
            sender="seed:layer1.s0",
            msg_id="01890000-0000-7000-8000-000000000002",
            causation="01890000-0000-7000-8000-000000000001",
        ),
        _valid(
            "second key, non-ASCII sender, empty body",
            kind="seed.command",
            body=b"",
            stream=streams.inbox("run_2.b-c", "gate"),
            sender="opérateur",
            msg_id="01890000-0000-7000-8000-000000000003",
            key=K2.id,
        ),
        _valid(
            "large opaque body",
            kind="telemetry.raw",
            body=big,
            stream=streams.inbox("t2", "telemetry"),
            sender="execution:0",
            msg_id="01890000-0000-7000-8000-000000000004",
        ),
    ]
    good = bytes.fromhex(valid[0]["frame_hex"])
    gid = valid[0]["fields"]["id"]
    items = msgpack.unpackb(good, raw=False)
    reencoded = [
        _reencoded(
            "ts_ns as int 64 (0xd3)",
            valid[0],
            {5: b"\xd3" + struct.pack(">q", valid[0]["fields"]["ts_ns"])},
        ),
        _reencoded("v as int 8 (0xd0)", valid[0], {0: b"\xd0\x02"}),
        _reencoded("v as uint 8 (0xcc)", valid[0], {0: b"\xcc\x02"}),
        _reencoded(
            "past 1 KiB: ts_ns as int 64, v as int 8, an array 16 header",
            valid[3],
            {5: b"\xd3" + struct.pack(">q", valid[3]["fields"]["ts_ns"]), 0: b"\xd0\x02"},
            b"\xdc\x00\x0b",
        ),
        _reencoded("past 1 KiB: an array 32 header", valid[3], {}, b"\xdd\x00\x00\x00\x0b"),
    ]
    signer = Signer(_ring(K1.id), "tamiyo")
    stranger = Signer(KeyRing([Key(id="k-stranger", secret=b"\x07" * 32)], "k-stranger"), "x")
    v1 = msgpack.packb(
        [1, "seed.command", "v1-id", "tamiyo", K1.id, TS, "", command, b"\x00" * 32],
        use_bin_type=True,
    )
    invalid = [
        _invalid(
            "moved to another run's inbox",
            good,
            streams.inbox("t3", "seed", "layer1.s0"),
            "wrong_run",
            claimed_id=gid,
            verified=True,
        ),
        _invalid(
            "moved to another slot's inbox",
            good,
            streams.inbox("t2", "seed", "layer2.s0"),
            "wrong_destination",
            claimed_id=gid,
            verified=True,
        ),
        _invalid(
            "run field rewritten to the new run",
            _reencode(good, 7, "t3"),
            streams.inbox("t3", "seed", "layer1.s0"),
            "bad_signature",
            claimed_id=gid,
        ),
        _invalid(
            "sender rewritten",
            _reencode(good, 3, "mallory"),
            inbox,
            "bad_signature",
            claimed_id=gid,
        ),
        _invalid(
            "body rewritten",
            _reencode(good, 9, b"\x0a\x01x"),
            inbox,
            "bad_signature",
            claimed_id=gid,
        ),
        _invalid(
            "signed by a key the receiver does not have",
            stranger.seal("seed.command", command, stream=inbox, msg_id="stranger-1", ts_ns=TS),
            inbox,
            "unknown_key",
            claimed_id="stranger-1",
        ),
        _invalid(
            "61 s old", good, inbox, "stale", claimed_id=gid, verified=True, now_ns=TS + 61 * S
        ),
        _invalid(
            "61 s ahead",
            good,
            inbox,
            "from_future",
            claimed_id=gid,
            verified=True,
            now_ns=TS - 61 * S,
        ),
        _invalid(
            "kind without a type",
            signer.seal("no.such.kind", b"", stream=inbox, msg_id="nokind-1", ts_ns=TS),
            inbox,
            "unknown_kind",
            claimed_id="nokind-1",
            verified=True,
        ),
        _invalid("a v1 frame", v1, inbox, "unsupported_version", claimed_id="v1-id"),
        _invalid("truncated", good[:-5], inbox, "bad_frame"),
        _invalid(
            "31-byte signature",
            _reencode(good, 10, b"\x00" * 31),
            inbox,
            "bad_frame",
            claimed_id=gid,
        ),
        _invalid(
            "nested array in a header field",
            _reencode(good, 6, [[], [], []]),
            inbox,
            "bad_frame",
            claimed_id=gid,
        ),
        _invalid(
            "one array of 2000 empty arrays", b"\xdc\x07\xd0" + b"\x90" * 2000, inbox, "bad_frame"
        ),
        _invalid(
            "nested arrays in a frame past 1 KiB",
            _reencode(bytes.fromhex(valid[3]["frame_hex"]), 6, [[[]] * 11] * 11),
            streams.inbox("t2", "telemetry"),
            "bad_frame",
            claimed_id=valid[3]["fields"]["id"],
        ),
        _invalid("over the frame limit", good, inbox, "too_large", max_bytes=64),
        _invalid("negative ts_ns (0xff)", _packed(items, {5: b"\xff"}), inbox, "bad_frame"),
        _invalid(
            "ts_ns of 2^63",
            _packed(items, {5: b"\xcf" + struct.pack(">Q", 1 << 63)}),
            inbox,
            "bad_frame",
        ),
        _invalid("empty id", _reencode(good, 2, ""), inbox, "bad_frame"),
        _invalid("empty kind", _reencode(good, 1, ""), inbox, "bad_frame"),
        _invalid("empty to", _reencode(good, 8, ""), inbox, "bad_frame"),
        *_key_vectors(inbox, command),
    ]
    return {
        "format": "kasmina-wire-vectors",
        "version": VERSION,
        "spec": "docs/wire.md",
        "keys": _ring(K1.id).to_json(),
        "valid": valid,
        "reencoded": reencoded,
        "invalid": invalid,
        "accepted": _accepted(valid[0]),
        "nonces": _nonces(valid),
    }


def _nonces(valid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a receiver's nonce store is asked for valid frames read as inbox entries (§5.1): the
    key, TOKEN and DEADLINE the actors' own verification path computes (``verify_entries``)."""
    import anyio

    from actors.hosting.inbox import FRAME, verify_entries
    from bus import Entry
    from bus.testing import RecordingNonceGuard
    from contracts import Verifier

    cases = [  # (valid vector, entry id, group, tolerance_s)
        (valid[0], "1800000000123-0", streams.group("seed:layer1.s0"), 60.0),
        (valid[0], "1800000000124-7", streams.group("seed:layer1.s0"), 2.5),
        (valid[2], "1800000000200-0", streams.group("gate"), 60.0),
    ]
    out = []
    for vector, entry_id, group, tolerance in cases:
        asked = RecordingNonceGuard()
        verifier = Verifier(
            _ring(K1.id), clock=lambda: TS, nonce_guard=asked, tolerance_s=tolerance
        )
        entry = Entry(vector["stream"], entry_id, {FRAME: bytes.fromhex(vector["frame_hex"])})
        (env,) = anyio.run(verify_entries, verifier, [entry], group)
        assert not isinstance(env, Exception), env
        ((nonce, token, deadline),) = asked.items
        out.append({
            "of": vector["name"], "stream": vector["stream"], "entry_id": entry_id,
            "group": group, "tolerance_s": tolerance, "ts_ns": vector["fields"]["ts_ns"],
            "key": streams.nonce_key(vector["fields"]["run"], nonce), "token": token,
            "deadline_ms": deadline,
        })  # fmt: skip
    return out


def _key_vectors(inbox: str, command: bytes) -> list[dict[str, Any]]:
    """Invalid frames that are refused for their key: expiry, revocation and roles (§4, §5)."""
    expired, revoked, trainer = _signer(K3, "tamiyo"), _signer(K4, "tamiyo"), _signer(K5, "x")
    expires = K3.expires_ns or 0
    rejection = pb.Rejection(reason_code="bad_signature", actor="gate").SerializeToString()
    return [
        _invalid(
            "key expired by the receiver's clock",
            expired.seal("seed.command", command, stream=inbox, msg_id="exp-1", ts_ns=TS),
            inbox,
            "expired_key",
            claimed_id="exp-1",
            now_ns=expires,
        ),
        _invalid(
            "stamped at its key's expiry",
            expired.seal("seed.command", command, stream=inbox, msg_id="exp-2", ts_ns=expires),
            inbox,
            "expired_key",
            claimed_id="exp-2",
            now_ns=expires - 1,
        ),
        _invalid(
            "revoked key",
            revoked.seal("seed.command", command, stream=inbox, msg_id="rev-1", ts_ns=TS),
            inbox,
            "revoked_key",
            claimed_id="rev-1",
        ),
        _invalid(
            "trainer key signs a command",
            trainer.seal("seed.command", command, stream=inbox, msg_id="role-1", ts_ns=TS),
            inbox,
            "forbidden_kind",
            claimed_id="role-1",
            verified=True,
        ),
        _invalid(
            "trainer key writes to events",
            trainer.as_sender("execution:0").seal(
                "rejection", rejection, stream=streams.events("t2"), msg_id="role-2", ts_ns=TS
            ),
            streams.events("t2"),
            "forbidden_kind",
            claimed_id="role-2",
            verified=True,
        ),
        _invalid(
            "trainer key on rejected in an actor's name",
            trainer.as_sender("gate").seal(
                "rejection", rejection, stream=streams.rejected("t2"), msg_id="role-3", ts_ns=TS
            ),
            streams.rejected("t2"),
            "forbidden_kind",
            claimed_id="role-3",
            verified=True,
        ),
    ]


def _accepted(of: dict[str, Any]) -> list[dict[str, Any]]:
    """Frames a receiver accepts at the edges of its checks: the clock tolerance (inclusive),
    a key read just before its expiry, a trainer key on ``rejected`` as its rank."""
    good = bytes.fromhex(of["frame_hex"])
    ts, mid = of["fields"]["ts_ns"], of["fields"]["id"]
    expires = K3.expires_ns or 0
    rejected = streams.rejected("t2")
    rejection = pb.Rejection(reason_code="bad_signature", actor="execution:0").SerializeToString()
    cases = [
        ("exactly 60 s old", good, of["stream"], ts + 60 * S, mid),
        ("exactly 60 s ahead", good, of["stream"], ts - 60 * S, mid),
        (
            "stamped and read 1 ns before its key's expiry",
            _signer(K3, "tamiyo").seal(
                "seed.command",
                bytes.fromhex(of["body_hex"]),
                stream=of["stream"],
                msg_id="exp-0",
                ts_ns=expires - 1,
            ),
            of["stream"],
            expires - 1,
            "exp-0",
        ),
        (
            "trainer key on rejected as its rank",
            _signer(K5, "execution:0").seal(
                "rejection", rejection, stream=rejected, msg_id="role-0", ts_ns=TS
            ),
            rejected,
            TS,
            "role-0",
        ),
    ]
    return [
        {"name": name, "frame_hex": frame.hex(), "stream": stream, "now_ns": now, "id": mid}
        for name, frame, stream, now, mid in cases
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python scripts/wire_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
