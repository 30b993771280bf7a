"""Pins compose.yaml and the Dockerfile: Redis durability, keys from a secret, real kasmina commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.assemble import ACTORS
from kasmina.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SINGLETONS = tuple(a for a in ACTORS if a != "seed")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _kasmina_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items() if name != "redis"}


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_redis_is_7_0_with_aof_and_noeviction() -> None:
    """Redis runs 7.0 with AOF on, a durable fsync policy, noeviction and a health check."""
    redis = _compose()["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7.0")
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") in ("everysec", "always")
    assert _option(command, "--maxmemory-policy") == "noeviction"
    assert redis["healthcheck"]["test"]


@pytest.mark.parametrize("name", sorted(_kasmina_services()))
def test_every_service_command_is_a_kasmina_command(name: str) -> None:
    """Each service's command parses with the CLI's own parser to the sub-command it names."""
    command = [str(part) for part in _kasmina_services()[name]["command"]]
    assert command[0] == "kasmina"
    try:
        args = build_parser().parse_args(command[1:])
    except SystemExit as exc:  # argparse exits on an unknown command or flag
        pytest.fail(f"{name}: {command} does not parse (exit {exc.code})")
    assert args.command == command[1]


@pytest.mark.parametrize("name", sorted(_kasmina_services()))
def test_keys_come_from_a_compose_secret(name: str) -> None:
    """KASMINA_KEYS names a mounted compose secret backed by a file; no inline key anywhere."""
    compose = _compose()
    svc = _kasmina_services()[name]
    env = svc["environment"]
    assert "KASMINA_KEY" not in env
    secret = Path(env["KASMINA_KEYS"])
    assert secret.parent == Path("/run/secrets")
    assert secret.name in svc["secrets"]
    assert "file" in compose["secrets"][secret.name]
    assert env["KASMINA_REDIS"] == "redis://kasmina@redis:6379/0"  # password from a secret file
    password = Path(env["KASMINA_REDIS_PASSWORD_FILE"])
    assert password.parent == Path("/run/secrets") and password.name in svc["secrets"]
    assert env["KASMINA_RUN"]
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_run_services_serve_each_actor_and_slot_once() -> None:
    """Across `kasmina run` services every singleton actor is served once and no slot twice."""
    singletons: list[str] = []
    slots: list[str] = []
    for svc in _kasmina_services().values():
        command = [str(part) for part in svc["command"]]
        if command[1] != "run":
            continue
        args = build_parser().parse_args(command[1:])
        actors = [a for a in args.actors.split(",") if a]
        singletons += [a for a in actors if a != "seed"]
        if "seed" in actors:
            slots += [s for s in args.slots.split(",") if s]
    assert sorted(singletons) == sorted(SINGLETONS)
    assert slots and len(slots) == len(set(slots))


def test_demo_service_uses_the_compose_redis() -> None:
    """The demo trainer runs `kasmina demo` on the compose Redis."""
    demos = [
        [str(p) for p in svc["command"]]
        for svc in _kasmina_services().values()
        if str(svc["command"][1]) == "demo"
    ]
    assert len(demos) == 1
    assert _option(demos[0], "--bus") == "redis://kasmina@redis:6379/0"


def test_redis_requires_a_password_and_the_demo_has_its_own_key() -> None:
    """Redis loads an ACL from a secret; the demo signs with a key the actor services do not hold."""
    compose = _compose()
    redis = compose["services"]["redis"]
    command = [str(part) for part in redis["command"]]
    acl = Path(_option(command, "--aclfile"))
    assert acl.parent == Path("/run/secrets") and acl.name in redis["secrets"]
    assert "file" in compose["secrets"][acl.name]
    keys = {name: svc["environment"]["KASMINA_KEYS"] for name, svc in _kasmina_services().items()}
    assert keys["demo"] != keys["actors"] and keys["actors"] == keys["seeds"]
    files = {compose["secrets"][Path(k).name]["file"] for k in keys.values()}
    assert len(files) == 2


def test_torch_floor_excludes_the_weights_only_bypass() -> None:
    """torch >= 2.6: older releases' ``torch.load(weights_only=True)`` can run code (CVE-2025-32434)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (spec,) = [line.strip().strip('",') for line in text.splitlines() if '"torch' in line]
    floor = tuple(int(x) for x in spec.split(">=")[1].split(".")[:2])
    assert floor >= (2, 6)


def test_trainer_service_trains_the_run_the_actor_services_serve() -> None:
    """The trainer is a `kasmina train` on the actor services' Redis, run id and keys, and every
    slot of its model is served by a seed service."""
    services = _kasmina_services()
    trainers = [s for s in services.values() if str(s["command"][1]) == "train"]
    assert len(trainers) == 1
    trainer = trainers[0]
    args = build_parser().parse_args([str(p) for p in trainer["command"][1:]])
    runs = [s for s in services.values() if str(s["command"][1]) == "run"]
    for svc in runs:
        for var in ("KASMINA_REDIS", "KASMINA_RUN", "KASMINA_KEYS"):
            assert svc["environment"][var] == trainer["environment"][var]
    assert args.redis is None and args.run is None and args.keys is None  # from the environment
    from kasmina.training import load_factory  # the trainer's model and slots, as it builds them

    spec = load_factory(args.model or args.task or "digits")(seed=args.seed, rank=0, world_size=1)
    served = set()
    for svc in runs:
        run_args = build_parser().parse_args([str(p) for p in svc["command"][1:]])
        if "seed" in run_args.actors.split(","):
            served |= set(run_args.slots.split(","))
    assert set(spec.slots) == served


def test_dockerfile_is_minimal_and_holds_no_keys() -> None:
    """The image is python:3.11-slim with the package pip-installed and no key file copied in."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(
        line.startswith("RUN pip install") and ('"."' in line or '".[' in line) for line in lines
    )
    copies = [line for line in lines if line.startswith(("COPY", "ADD"))]
    assert copies and not any("key" in line or "secret" in line for line in copies)
    assert not any(line.startswith("COPY . ") for line in copies)  # never the whole tree (.venv)
