"""A stand-alone Kasmina client built from docs/wire.md and leyline/leyline.proto alone.

``python standalone_client.py --redis URL --run RUN --keys FILE --slot SLOT --proto-out DIR``

It imports no project package: redis-py, msgpack, the protobuf runtime, the classes protoc
generates from ``leyline.proto`` (into ``--proto-out``), and ``wire_client`` (the spec's envelope,
written in this folder). It drives one slot: germinate until TRAINING, pause, resume, cull; and
sends one forged command. For every command it reads the run's outcomes stream, checks each
record's signature and binding (docs/wire.md §5) and matches it by the command's id. One JSON line
per outcome goes to stdout; the exit code is 0 when every outcome was what the spec promises.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
from wire_client import Refused, load_keys, open_frame, seal

PROTO = Path(__file__).resolve().parents[2] / "leyline" / "leyline.proto"


def generate(out: Path) -> ModuleType:
    """protoc (grpcio-tools) -> ``out/leyline_pb2.py``, loaded under a name of its own."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        ["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)]  # no project import
    )
    if code != 0:
        raise SystemExit(f"protoc failed: {code}")
    spec = importlib.util.spec_from_file_location("interop_leyline_pb2", out / "leyline_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def uuid7() -> str:
    """A UUIDv7 (§5.1): 48-bit Unix milliseconds, version 7, variant, random bits."""
    ms = time.time_ns() // 1_000_000
    rand = bytearray(os.urandom(10))
    raw = ms.to_bytes(6, "big") + bytes(
        (0x70 | (rand[0] & 0x0F), rand[1], 0x80 | (rand[2] & 0x3F))
    ) + bytes(rand[3:])  # fmt: skip
    return str(uuid.UUID(bytes=raw))


class Client:
    """Sign commands, follow outcomes."""

    def __init__(self, url: str, run: str, keys: str, pb: ModuleType) -> None:
        self.r = redis.Redis.from_url(url)
        self.run = run
        self.pb = pb
        self.active, self.keys = load_keys(keys)
        self.outcomes = f"kasmina:{{{run}}}:outcomes"
        self.cursor = "0-0"

    def close(self) -> None:
        self.r.close()

    def send(self, slot: str, command: Any, *, forged: bool = False) -> str:
        """XADD a signed SeedCommand to the slot's inbox; returns its id."""
        stream = f"kasmina:{{{self.run}}}:inbox:seed:{slot}"
        mid = uuid7()
        secret = b"\x00" * 32 if forged else self.keys[self.active].secret
        frame = seal(secret, self.active, kind="seed.command", mid=mid, sender="interop-client",
                     ts_ns=time.time_ns(), stream=stream, body=command.SerializeToString())  # fmt: skip
        self.r.xadd(stream, {"m": frame, "kind": b"seed.command"})
        return mid

    def records(self, command_id: str, timeout_s: float) -> Any:
        """Yield the verified outcome records of ``command_id`` as they appear."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry_id, fields in self.r.xrange(self.outcomes, f"({self.cursor}", "+"):
                self.cursor = entry_id.decode()
                try:  # every record's MAC and binding is checked before it is believed
                    frame = open_frame(fields[b"m"], self.outcomes, self.keys, time.time_ns())
                except Refused as exc:
                    raise SystemExit(f"outcome record refused: {exc.reason}") from None
                assert frame.kind == "command.outcome", frame.kind
                record = self.pb.CommandOutcome.FromString(frame.body)
                if record.command_id == command_id:
                    yield record
            time.sleep(0.05)
        raise SystemExit(f"no outcome for {command_id} within {timeout_s} s")

    def until(self, command_id: str, done: Any, timeout_s: float) -> list[Any]:
        """Records of the command up to (and with) the first for which ``done`` holds."""
        seen = []
        for record in self.records(command_id, timeout_s):
            seen.append(record)
            if done(record):
                return seen
        return seen


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("--redis", "--run", "--keys", "--slot", "--proto-out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    pb = generate(Path(args.proto_out))
    client = Client(args.redis, args.run, args.keys, pb)
    stage = pb.SeedLifecycleStage
    ok = True

    def report(action: str, records: list[Any], expect: bool) -> None:
        nonlocal ok
        ok = ok and expect
        last = records[-1]
        print(json.dumps({
            "action": action,
            "command_id": last.command_id,
            "results": [pb.OutcomeResult.Name(r.result) for r in records],
            "to_stage": stage.Name(last.to_stage),
            "awaiting": [r.awaiting for r in records],
            "verified": last.verified,
            "reason": last.reason,
            "ok": expect,
        }), flush=True)  # fmt: skip

    def final(r: Any) -> bool:
        return r.result != pb.OUTCOME_ACCEPTED or not r.awaiting

    try:
        germ = pb.SeedCommand(slot=args.slot, germinate=pb.Germinate(blueprint="residual_mlp"))
        mid = client.send(args.slot, germ)
        seen = client.until(mid, lambda r: r.to_stage == stage.SEED_STAGE_TRAINING, args.timeout)
        report("germinate", seen, seen[-1].to_stage == stage.SEED_STAGE_TRAINING)
        for action in ("pause", "resume"):
            command = pb.SeedCommand(slot=args.slot)
            getattr(command, action).SetInParent()
            mid = client.send(args.slot, command)
            seen = client.until(mid, final, args.timeout)
            good = seen[-1].result == pb.OUTCOME_ACCEPTED and not seen[-1].awaiting
            report(action, seen, good)
        mid = client.send(args.slot, pb.SeedCommand(slot=args.slot, cull=pb.Cull()), forged=True)
        seen = client.until(mid, final, args.timeout)
        forged_ok = (seen[-1].result, seen[-1].verified) == (pb.OUTCOME_REJECTED, False)
        report("forged cull", seen, forged_ok and seen[-1].reason == "bad_signature")
        mid = client.send(args.slot, pb.SeedCommand(slot=args.slot, cull=pb.Cull()))
        seen = client.until(mid, final, args.timeout)
        report("cull", seen, seen[-1].to_stage == stage.SEED_STAGE_CULLED)
    finally:
        client.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
