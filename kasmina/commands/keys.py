"""``kasmina keys generate|rotate|revoke|prune|list``: manage a key file (mode 0600)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from contracts import KeyRing, KeyRingError
from contracts.roles import ROLES
from kasmina.common import CliError, emit_json, seconds


def _roles(text: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    if not roles or roles - ROLES:
        raise argparse.ArgumentTypeError(f"roles: a comma-separated subset of {sorted(ROLES)}")
    return roles


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="manage HMAC key files")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True, metavar="VERB")
    gen = keys_sub.add_parser("generate", help="write a new key file")
    gen.add_argument("-o", "--output", required=True, metavar="FILE")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    gen.add_argument(
        "--roles",
        type=_roles,
        default=None,
        help=f"what the key may sign, comma-separated from {','.join(sorted(ROLES))} (default: all)",
    )
    gen.set_defaults(func=generate)
    rot = keys_sub.add_parser(
        "rotate", help="add a new signing key; the old one verifies for --grace seconds"
    )
    rot.add_argument("file", metavar="FILE")
    rot.add_argument(
        "--grace",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="default: security.key_grace_s of the config",
    )
    rot.set_defaults(func=rotate)
    rev = keys_sub.add_parser("revoke", help="a key verifies nothing any more (it leaked)")
    rev.add_argument("file", metavar="FILE")
    rev.add_argument("key_id", metavar="KEY_ID")
    rev.set_defaults(func=revoke)
    pru = keys_sub.add_parser("prune", help="drop revoked keys and keys expired for --older-than")
    pru.add_argument("file", metavar="FILE")
    pru.add_argument(
        "--older-than",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="keep keys that expired less than this long ago (default 0: drop every expired key)",
    )
    pru.set_defaults(func=prune)
    lst = keys_sub.add_parser("list", help="key ids, roles, expiry (never the secrets)")
    lst.add_argument("file", metavar="FILE")
    lst.set_defaults(func=list_keys)


def _load(path: Path) -> KeyRing:
    try:
        return KeyRing.load(path)
    except KeyRingError as exc:
        raise CliError(str(exc)) from exc


def _save(ring: KeyRing, path: Path) -> None:
    try:
        ring.save(path)
    except (KeyRingError, OSError) as exc:
        raise CliError(f"cannot write {path}: {exc}") from exc


def generate(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if path.exists() and not args.force:
        raise CliError(f"{path} exists (use --force to overwrite)")
    ring = KeyRing.generate(roles=args.roles)
    _save(ring, path)
    emit_json({"keys": str(path), "active": ring.active.id})
    return 0


def rotate(args: argparse.Namespace) -> int:
    from kasmina.wiring import load_config

    grace = args.grace if args.grace is not None else load_config().security.key_grace_s
    path = Path(args.file)
    ring = _load(path).rotate(grace_s=grace)
    _save(ring, path)
    emit_json({"keys": str(path), "active": ring.active.id, "verifying": ring.ids()})
    return 0


def revoke(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        ring = _load(path).revoke(args.key_id)
    except KeyRingError as exc:
        raise CliError(str(exc)) from exc
    _save(ring, path)
    emit_json({"keys": str(path), "revoked": args.key_id, "verifying": _verifying(ring)})
    return 0


def prune(args: argparse.Namespace) -> int:
    path = Path(args.file)
    ring = _load(path)
    pruned = ring.prune(before_ns=time.time_ns() - int(args.older_than * 1e9))
    dropped = sorted(set(ring.ids()) - set(pruned.ids()))
    _save(pruned, path)
    emit_json({"keys": str(path), "dropped": dropped, "kept": pruned.ids()})
    return 0


def _verifying(ring: KeyRing) -> list[str]:
    now = time.time_ns()
    return [k.id for k in ring.members() if k.valid_at(now)]


def list_keys(args: argparse.Namespace) -> int:
    ring = _load(Path(args.file))
    for key in ring.members():
        emit_json(
            {
                "id": key.id,
                "active": key.id == ring.active.id,
                "roles": sorted(key.roles),
                "created_ns": key.created_ns,
                "expires_ns": key.expires_ns,
                "revoked_ns": key.revoked_ns,
            }
        )
    return 0
