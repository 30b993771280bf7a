"""Pins the signed bytes: the documented MAC layout, checked against an independent computation."""

from __future__ import annotations

import hashlib
import hmac
import struct

import msgpack

from contracts import Key, KeyRing, Signer, unpack

SECRET = bytes(range(32))
RING = KeyRing([Key(id="k-test", secret=SECRET)], "k-test")
BODY = b"\x0a\x09layer1.s0\x1a\x00"
MSG_ID = "01890000-0000-7000-8000-000000000001"
TS = 1_800_000_000_123_456_789
# hex of the MAC for the fields below; changing the layout (or the domain tag) changes it
GOLDEN = "9d6d301e05f7bb3f4bbd20c25efec6a5085544f1cce68d7e9914036394bf361e"


def _independent_mac() -> bytes:
    fields = [
        b"1",
        b"seed.command",
        MSG_ID.encode(),
        b"tamiyo",
        b"k-test",
        struct.pack(">Q", TS),
        b"cause-1",
        hashlib.sha256(BODY).digest(),
    ]
    data = b"kasmina.leyline.v1\x00" + struct.pack(">8I", *map(len, fields)) + b"".join(fields)
    return hmac.new(SECRET, data, hashlib.sha256).digest()


def test_signature_matches_the_documented_layout() -> None:
    """seal() signs DOMAIN, eight big-endian lengths, then v, kind, id, sender, key id, ts, cause, sha256(body)."""
    frame = Signer(RING, "tamiyo").seal(
        "seed.command", BODY, causation_id="cause-1", msg_id=MSG_ID, ts_ns=TS
    )
    env = unpack(frame)
    assert env.sig == _independent_mac()
    assert msgpack.unpackb(frame, raw=False) == [
        1,
        "seed.command",
        MSG_ID,
        "tamiyo",
        "k-test",
        TS,
        "cause-1",
        BODY,
        env.sig,
    ]


def test_signature_golden_vector() -> None:
    """The MAC of a fixed message is a fixed value (a change of the signed format is a breaking change)."""
    assert _independent_mac().hex() == GOLDEN
