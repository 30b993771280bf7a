"""Shared CLI plumbing: defaults from the environment, output, errors."""

from __future__ import annotations

import argparse
import json
import math
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


def seconds(text: str) -> float:
    """An argument of seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argument of seconds above 0."""
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def count(text: str) -> int:
    """An argument counting something: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port (0: any free port)."""
    value = count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0 to 65535): {text!r}")
    return value


def nonempty(text: str) -> str:
    """A name or URL that may not be empty (an empty one would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("may not be empty (leave the option out for the default)")
    return text


def bus_url(text: str) -> str:
    """An argument naming a bus: a Redis URL (one server, a cluster or sentinels), or
    ``fakeredis://`` / ``memory://`` (in-process), checked before anything connects."""
    from bus import is_redis_url
    from bus.connect import parse_bus_url

    scheme = urlsplit(text).scheme.lower()
    if scheme in ("fakeredis", "memory"):
        return text
    if not is_redis_url(text):
        raise argparse.ArgumentTypeError(
            f"not a bus URL (redis://, rediss://, redis+cluster://, redis+sentinel://, "
            f"unix://, fakeredis:// or memory://): {text!r}"
        )
    try:
        parse_bus_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


async def bus_answers(url: str) -> bool:
    """Whether the bus at ``url`` answers now (an in-process one always does)."""
    from bus import is_redis_url, open_bus

    if not is_redis_url(url):
        return True
    bus = open_bus(url)
    try:
        return bool(await bus.ping())
    finally:
        await bus.close()


def add_redis(parser: argparse.ArgumentParser) -> None:
    """Add ``--redis URL`` and ``--run RUN``."""
    parser.add_argument(
        "--redis",
        type=nonempty,
        default=None,
        metavar="URL",
        help=f"default: $KASMINA_REDIS or {DEFAULT_REDIS}",
    )
    parser.add_argument(
        "--run",
        type=nonempty,
        default=None,
        metavar="RUN",
        help="default: $KASMINA_RUN or 'default'",
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
