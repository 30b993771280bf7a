"""``kasmina keys generate -o FILE``: write a new key file (mode 0600)."""

from __future__ import annotations

import argparse
from pathlib import Path

from contracts import KeyRing
from kasmina.common import CliError, emit_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="manage HMAC key files")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write a new key file")
    gen.add_argument("-o", "--output", required=True, metavar="FILE")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    gen.set_defaults(func=generate)
    rot = keys_sub.add_parser(
        "rotate", help="add a new signing key; the old one verifies for --grace seconds"
    )
    rot.add_argument("file", metavar="FILE")
    rot.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="default: security.key_grace_s of the config",
    )
    rot.set_defaults(func=rotate)


def generate(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if path.exists() and not args.force:
        raise CliError(f"{path} exists (use --force to overwrite)")
    ring = KeyRing.generate()
    ring.save(path)
    emit_json({"keys": str(path), "active": ring.active.id})
    return 0


def rotate(args: argparse.Namespace) -> int:
    from kasmina.wiring import load_config

    grace = args.grace if args.grace is not None else load_config().security.key_grace_s
    path = Path(args.file)
    ring = KeyRing.load(path).rotate(grace_s=grace)
    ring.save(path)
    emit_json({"keys": str(path), "active": ring.active.id, "verifying": ring.ids()})
    return 0
