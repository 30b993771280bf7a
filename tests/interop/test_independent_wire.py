"""docs/wire-vectors.json checked by the independent implementation in wire_client.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from wire_client import Refused, keys_from_json, mac_input, open_frame, seal

HERE = Path(__file__).resolve().parent
VECTORS = json.loads((HERE.parents[1] / "docs" / "wire-vectors.json").read_text(encoding="utf-8"))
ACTIVE, KEYS = keys_from_json(VECTORS["keys"])
PROJECT = {"contracts", "bus", "actors", "leyline", "kasmina", "scenarios", "benchmarks"}


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_independent_seal_matches_every_byte(vector: dict[str, Any]) -> None:
    """MAC input, MAC and frame computed from the spec equal the vector's bytes."""
    f = vector["fields"]
    body = bytes.fromhex(vector["body_hex"])
    data = mac_input(f["v"], f["kind"], f["id"], f["sender"], f["key_id"], f["ts_ns"],
                     f["causation_id"], f["run"], f["to"], body)  # fmt: skip
    assert data.hex() == vector["mac_input_hex"]
    frame = seal(
        KEYS[f["key_id"]].secret, f["key_id"], kind=f["kind"], mid=f["id"], sender=f["sender"],
        ts_ns=f["ts_ns"], stream=vector["stream"], body=body, cause=f["causation_id"],
    )  # fmt: skip
    assert frame.hex() == vector["frame_hex"]
    assert frame[-32:].hex() == vector["sig_hex"]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_independent_receiver_accepts_valid_vectors(vector: dict[str, Any]) -> None:
    """Every valid vector passes the receiver checks of §5 at its clock and stream."""
    frame = open_frame(bytes.fromhex(vector["frame_hex"]), vector["stream"], KEYS,
                       vector["now_ns"])  # fmt: skip
    assert frame.id == vector["fields"]["id"]


@pytest.mark.parametrize("vector", VECTORS["reencoded"], ids=_ids(VECTORS["reencoded"]))
def test_independent_receiver_accepts_reencoded_vectors(vector: dict[str, Any]) -> None:
    """A valid frame in another msgpack integer encoding passes the checks of §5 too."""
    frame = open_frame(bytes.fromhex(vector["frame_hex"]), vector["stream"], KEYS,
                       vector["now_ns"])  # fmt: skip
    assert frame.id == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["accepted"], ids=_ids(VECTORS["accepted"]))
def test_independent_receiver_accepts_frames_at_the_edges(vector: dict[str, Any]) -> None:
    """Frames at the edge of a check (clock tolerance, key expiry, a rank's key) pass §5."""
    frame = open_frame(bytes.fromhex(vector["frame_hex"]), vector["stream"], KEYS,
                       vector["now_ns"])  # fmt: skip
    assert frame.id == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=_ids(VECTORS["invalid"]))
def test_independent_receiver_refuses_invalid_vectors(vector: dict[str, Any]) -> None:
    """Each invalid vector is refused with the vector's reason and claimed id."""
    with pytest.raises(Refused) as info:
        open_frame(
            bytes.fromhex(vector["frame_hex"]),
            vector["stream"],
            KEYS,
            vector["now_ns"],
            max_bytes=vector["max_bytes"],
        )
    assert info.value.reason == vector["reason"]
    if vector["claimed_id"] is not None:
        assert (info.value.claimed_id, info.value.verified) == (
            vector["claimed_id"],
            vector["verified"],
        )


@pytest.mark.parametrize("vector", VECTORS["nonces"], ids=lambda v: f"{v['group']}-{v['entry_id']}")
def test_independent_nonce_key_token_and_deadline(vector: dict[str, Any]) -> None:
    """§5.1 from the spec: key ``kasmina:{RUN}:nonce:G|ID``, TOKEN the stream key, ``/`` and the
    entry id, DEADLINE ``ceil((ts_ns + tolerance) / 1e6)`` in whole Unix milliseconds."""
    of = next(v for v in VECTORS["valid"] if v["name"] == vector["of"])
    run, mid = of["fields"]["run"], of["fields"]["id"]
    assert vector["key"] == f"kasmina:{{{run}}}:nonce:{vector['group']}|{mid}"
    assert vector["token"] == f"{vector['stream']}/{vector['entry_id']}"
    tolerance_ns = round(vector["tolerance_s"] * 10**9)
    assert vector["deadline_ms"] == -(-(vector["ts_ns"] + tolerance_ns) // 10**6)


def test_interop_code_imports_no_project_package() -> None:
    """Nothing under tests/interop imports the project's packages: the spec alone suffices."""
    for path in HERE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & PROJECT, (path.name, names)
