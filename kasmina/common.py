"""Shared CLI plumbing: defaults from the environment, output, errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from contracts import KeyRing, KeyRingError

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
ENV_PASSWORD_FILE = "KASMINA_REDIS_PASSWORD_FILE"


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def default_redis() -> str:
    """``$KASMINA_REDIS`` or the local default."""
    return os.environ.get("KASMINA_REDIS", DEFAULT_REDIS)


def default_run() -> str:
    """``$KASMINA_RUN`` or ``default``."""
    return os.environ.get("KASMINA_RUN", "default")


def add_redis(parser: argparse.ArgumentParser) -> None:
    """Add ``--redis URL`` and ``--run RUN``."""
    parser.add_argument(
        "--redis", default=None, metavar="URL", help=f"default: $KASMINA_REDIS or {DEFAULT_REDIS}"
    )
    parser.add_argument(
        "--run", default=None, metavar="RUN", help="default: $KASMINA_RUN or 'default'"
    )


def add_keys(parser: argparse.ArgumentParser) -> None:
    """Add ``--keys FILE``."""
    parser.add_argument(
        "--keys", default=None, metavar="FILE", help="key file (default: $KASMINA_KEYS)"
    )


def redis_url(args: argparse.Namespace) -> str:
    """The Redis URL from the arguments or the environment, with the password read from
    ``$KASMINA_REDIS_PASSWORD_FILE`` (a compose secret) when the URL carries none, so the
    password never sits in an environment variable or a command line."""
    return with_password(str(args.redis or default_redis()))


def with_password(url: str, env: dict[str, str] | None = None) -> str:
    """``url`` with the password of ``$KASMINA_REDIS_PASSWORD_FILE`` added (if set and the URL
    has none). Never print the result: print ``bus.redact_url`` of it."""
    source = os.environ if env is None else env
    path = source.get(ENV_PASSWORD_FILE)
    parts = urlsplit(url)
    if not path or parts.scheme not in ("redis", "rediss") or parts.password is not None:
        return url
    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(f"cannot read the Redis password file {path}: {exc.strerror}") from exc
    if not password:
        raise CliError(f"the Redis password file {path} is empty")
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def run_id(args: argparse.Namespace) -> str:
    """The run id from the arguments or the environment."""
    return str(args.run or default_run())


def load_keys(args: argparse.Namespace) -> KeyRing:
    """The key ring named by ``--keys`` or the environment."""
    try:
        if getattr(args, "keys", None):
            return KeyRing.load(Path(args.keys))
        return KeyRing.from_env()
    except KeyRingError as exc:
        raise CliError(str(exc)) from exc


def emit_json(obj: Any) -> None:
    """Print one JSON object on one line."""
    sys.stdout.write(json.dumps(obj, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
