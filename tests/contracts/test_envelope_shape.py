"""What the envelope claims and refuses before any MAC (docs/wire.md §2, §5): the id, kind and
sender a malformed frame claims, the header walk of frames over 1 KiB, run ids never seen before,
the MAC input layout of §3 for any version number, and what a seal fills in by itself."""

from __future__ import annotations

import hashlib
import struct
import uuid

import msgpack
import pytest

from contracts import Key, KeyRing, Reason, Signer, unpack
from contracts.envelope import mac_input
from contracts.errors import ContractError

NOW = 1_800_000_000 * 10**9 + 123_456_789
STREAM = "kasmina:{r1}:inbox:gate"
SIG = b"\x00" * 32


def clock() -> int:
    return NOW


def _pack(items: object) -> bytes:
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


def _items(**override: object) -> list[object]:
    """A well-formed 11-element frame (structure only; the MAC is not valid)."""
    fields: dict[str, object] = {
        "v": 2,
        "kind": "gate.request",
        "id": "m-1",
        "sender": "seed:a",
        "key_id": "k-1",
        "ts_ns": NOW,
        "causation": "",
        "run": "r1",
        "to": "inbox:gate",
        "body": b"",
        "sig": SIG,
    }
    fields.update(override)
    return list(fields.values())


def _refused(frame: bytes) -> ContractError:
    with pytest.raises(ContractError) as info:
        unpack(frame)
    return info.value


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize(
    ("override", "claims"),
    [
        ({"id": 7}, ("", "gate.request", "seed:a")),
        ({"kind": b"gate.request"}, ("m-1", "", "seed:a")),
        ({"sender": 3}, ("m-1", "gate.request", "")),
        ({"key_id": ""}, ("m-1", "gate.request", "seed:a")),
        ({"run": "no spaces"}, ("m-1", "gate.request", "seed:a")),
    ],
)
def test_a_malformed_frame_claims_its_readable_id_kind_and_sender(
    override: dict[str, object], claims: tuple[str, str, str]
) -> None:
    """A refused 11-element frame names the id, kind and sender it claims, each only if it is a
    string (else empty), unverified."""
    error = _refused(_pack(_items(**override)))
    assert (error.code, error.verified) == (Reason.BAD_FRAME, False)
    assert (error.message_id, error.kind, error.sender) == claims


def test_an_array_of_the_wrong_length_still_claims_what_it_can() -> None:
    """A 4-element array [v, kind, id, sender] is a bad frame naming the 11 fields expected and
    claiming that id, kind and sender; a 3-element one claims nothing; neither is verified."""
    four = _refused(_pack([2, "gate.request", "m-4", "seed:b"]))
    assert (four.code, four.message_id, four.kind, four.sender, four.verified) == (
        Reason.BAD_FRAME,
        "m-4",
        "gate.request",
        "seed:b",
        False,
    )
    assert "11" in four.detail
    three = _refused(_pack([2, "gate.request", "m-3"]))
    assert (three.code, three.message_id, three.kind, three.sender, three.verified) == (
        Reason.BAD_FRAME,
        "",
        "",
        "",
        False,
    )
    assert "11" in three.detail


@pytest.mark.parametrize("frame", [_pack({"id": "m-1"}), _pack("m-1"), _pack(2)])
def test_a_frame_that_is_not_an_array_claims_nothing(frame: bytes) -> None:
    """A map, a string or an integer in place of the array is a bad frame with no claims."""
    error = _refused(frame)
    assert (error.code, error.message_id, error.kind, error.sender, error.verified) == (
        Reason.BAD_FRAME,
        "",
        "",
        "",
        False,
    )


def test_a_version_that_is_not_an_integer_is_named() -> None:
    """Element 0 as the float 2.0 (no float may appear in a frame) is refused as 'bad v'."""
    error = _refused(_pack(_items(v=2.0)))
    assert error.code == Reason.BAD_FRAME and "bad v" in error.detail


@pytest.mark.parametrize("v", ["2", b"2", None])
def test_a_version_of_another_type_is_named_not_miscounted(v: object) -> None:
    """An 11-field frame whose v is text, bytes or nil is refused as 'bad v', not as a frame
    of the wrong length."""
    error = _refused(_pack(_items(v=v)))
    assert error.code == Reason.BAD_FRAME and "bad v" in error.detail
    assert "11" not in error.detail


def test_a_timestamp_of_zero_is_not_what_is_wrong_with_a_frame() -> None:
    """ts_ns 0 is within its range, so a frame with ts_ns 0 and a bad run is refused for its run."""
    error = _refused(_pack(_items(ts_ns=0, run="bad run!")))
    assert "bad run" in error.detail and "ts_ns" not in error.detail


# --------------------------------------------------------------------------- header walk


def test_a_frame_over_1_kib_that_ends_before_its_last_element_is_refused_by_the_walk() -> None:
    """A frame over 1 KiB announcing 11 elements but holding 10 is not one flat array: a bad
    frame, refused by the header walk (never a crash)."""
    whole = _pack(_items(body=b"b" * 2000))
    cut = whole[: -len(_pack(SIG))]
    assert len(cut) > 1024
    error = _refused(cut)
    assert error.code == Reason.BAD_FRAME
    assert "not an array of scalar fields" in error.detail


# --------------------------------------------------------------------------- runs


def test_a_run_id_never_seen_before_parses_the_first_time() -> None:
    """The first frame of a new, well-formed run id is accepted (and so is the second)."""
    run = f"fresh-{uuid.uuid4().hex}"
    for _ in range(2):
        assert unpack(_pack(_items(run=run))).run == run


# --------------------------------------------------------------------------- MAC input


def _layout(v: int, ts_ns: int) -> bytes:
    """docs/wire.md §3 written out: domain, ten big-endian lengths, ten fields."""
    fields = [
        str(v).encode("ascii"),
        b"gate.request",
        b"m-1",
        b"seed:a",
        b"k-1",
        struct.pack(">Q", ts_ns),
        b"c-1",
        b"r1",
        b"inbox:gate",
        hashlib.sha256(b"body").digest(),
    ]
    domain = bytes.fromhex("6b61736d696e612e6c65796c696e652e763200")
    return domain + struct.pack(">10I", *map(len, fields)) + b"".join(fields)


@pytest.mark.parametrize("v", [2, 1, 3, 10])
def test_the_mac_input_writes_the_version_as_decimal_text(v: int) -> None:
    """The MAC input carries v as decimal ASCII ("2", "10", ...), whatever the version."""
    got = mac_input(
        v, "gate.request", "m-1", "seed:a", "k-1", NOW, "c-1", "r1", "inbox:gate", b"body"
    )
    assert got == _layout(v, NOW)


def _spelled_out(
    kind: str,
    mid: str,
    sender: str,
    key_id: str,
    ts: int,
    cause: str,
    run: str,
    to: str,
    body: bytes,
) -> bytes:
    """docs/wire.md §3's MAC input for v2, written out field by field."""
    fields = [b"2", kind.encode(), mid.encode(), sender.encode(), key_id.encode(),
              struct.pack(">Q", ts), cause.encode(), run.encode(), to.encode(),
              hashlib.sha256(body).digest()]  # fmt: skip
    return b"kasmina.leyline.v2\x00" + struct.pack(">10I", *map(len, fields)) + b"".join(fields)


def test_the_mac_input_of_remembered_headers_is_still_each_messages_own() -> None:
    """Headers seen before (and thousands more than are remembered) give each message its own
    input: another id (of another length too), stamp, body, or any other header field."""
    base = ("gate.request", "m-1", "seed:a", "k-1", NOW, "c-1", "r1", "inbox:gate", b"body")
    variants = [base]
    for i, value in enumerate(["seed.command", "m-22", "seed:b", "k-2", NOW + 1, "", "r2",
                               "inbox:seed", b"other"]):  # fmt: skip
        variants.append((*base[:i], value, *base[i + 1 :]))  # type: ignore[arg-type]
    variants += [(*base[:2], f"sender-{n}", *base[3:]) for n in range(5000)]  # type: ignore[arg-type]
    for args in [*variants, *variants[:20]]:
        assert mac_input(2, *args) == _spelled_out(*args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sealing


def test_a_seal_without_cause_or_id_has_an_empty_cause_and_a_uuid7_of_its_stamp() -> None:
    """No causation_id: the frame's is empty; no msg_id: a UUIDv7 whose 48-bit time is the signing
    time in Unix milliseconds (docs/wire.md §5.1)."""
    ring = KeyRing([Key(id="k-1", secret=b"s" * 32)], "k-1")
    env = unpack(Signer(ring, "seed:a", clock=clock).seal("gate.request", b"", stream=STREAM))
    assert env.causation_id == ""
    parsed = uuid.UUID(env.id)
    assert parsed.version == 7 and str(parsed) == env.id
    assert int(env.id.replace("-", "")[:12], 16) == NOW // 1_000_000
