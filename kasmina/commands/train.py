"""``kasmina train``: a trainer process attached to a run served by ``kasmina run``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from kasmina.common import (
    CliError,
    add_keys,
    add_redis,
    count,
    emit_json,
    load_keys,
    redis_url,
    run_id,
)

if TYPE_CHECKING:
    from kasmina.training import TrainResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "train", help="train a model attached to a run (the run's ExecutionActor for one rank)"
    )
    _add_model_args(parser)
    _add_execution_args(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")
    parser.add_argument("--log-level", default="INFO")
    add_redis(parser)
    add_keys(parser)
    parser.set_defaults(func=run)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """What is trained: the task or model factory, steps, seed and the run's config."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--task", choices=("digits", "spirals"), default=None, help="a demo task (default digits)"
    )
    what.add_argument(
        "--model",
        default=None,
        metavar="PKG.MODULE:FACTORY",
        help="factory(seed=, rank=, world_size=) returning a kasmina.training.TrainSpec",
    )
    parser.add_argument(
        "--steps",
        type=count,
        default=0,
        metavar="N",
        help="stop after N steps (0: until SIGTERM); a run's step count goes on from its last "
        "trainer's",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="KasminaConfig TOML (default: $KASMINA_CONFIG)",
    )


def _add_execution_args(parser: argparse.ArgumentParser) -> None:
    """How the rank executes the run's orders: lockstep, device, seed memory, fossils, release."""
    parser.add_argument(
        "--no-lockstep",
        dest="lockstep",
        action="store_false",
        help="never wait for the run (default: on barrier boundaries, wait until the run has "
        "handled what was sent, so orders always arrive before their step)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--seed-memory-budget",
        type=count,
        default=None,
        metavar="BYTES",
        help="the rank's seed memory budget, enforced at G0 (default: none)",
    )
    parser.add_argument(
        "--fossil-merge",
        action="store_true",
        help="fold a fossilized low-rank or width seed into the host's weights",
    )
    parser.add_argument(
        "--release-ttl",
        type=count,
        default=0,
        metavar="STEPS",
        help="release a culled seed's tensors this many steps later (default 0: at once)",
    )


def _process_group() -> tuple[int, int]:
    """Join the torchrun-style process group named by ``RANK``/``WORLD_SIZE`` (gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world


def _check_device(device: str) -> None:
    """A device name torch cannot parse is a usage error (exit 2), not an unexpected one."""
    import torch

    try:
        torch.device(device)
    except RuntimeError as exc:
        raise CliError(f"--device {device!r}: {' '.join(str(exc).split())[:200]}") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    import torch

    from kasmina.training import load_factory, train

    torch.set_num_threads(1)  # small models: one thread each leaves cores to the actors
    stop = _stop_on_signals()
    try:
        if args.model is not None and ":" not in args.model:
            raise CliError(f"--model {args.model!r}: expected PKG.MODULE:FACTORY")
        factory = load_factory(args.model or args.task or "digits")
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _check_device(args.device)
    rank, world = _process_group()
    try:
        spec = factory(seed=args.seed, rank=rank, world_size=world)
        result = train(
            spec,
            steps=args.steps,
            stop=stop,
            progress=_progress(rank),
            redis=redis_url(args),
            run=run_id(args),
            keys=load_keys(args),
            config=args.config,
            lockstep=args.lockstep,
            device=args.device,
            seed_memory_budget=args.seed_memory_budget,
            release_ttl_steps=args.release_ttl,
            fossil_merge=args.fossil_merge,
        )
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    _report(result, args.json)
    if world > 1:
        # gloo worker threads can outlive destroy_process_group and abort the interpreter's
        # shutdown (docs/integration.md); everything is flushed and printed by now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (the training loop stops at its next step)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _progress(rank: int) -> Callable[[int, float, float, dict[str, str]], None]:
    """The progress callback: a log line every 500 steps."""
    log = logging.getLogger("kasmina.train")

    def progress(step: int, loss: float, val_acc: float, stages: dict[str, str]) -> None:
        if step % 500 == 0:
            shown = " ".join(f"{k}={v}" for k, v in stages.items())
            log.info("rank %d step %d loss %.3f val acc %.3f %s", rank, step, loss, val_acc, shown)

    return progress


def _report(result: TrainResult, as_json: bool) -> None:
    """The end of training: one JSON object, or two lines (stages; orders confirmed)."""
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    stages = ", ".join(f"{k} {v}" for k, v in result.stages.items())
    first = (
        f" (from step {result.first_step}, after an earlier trainer)" if result.first_step else ""
    )
    print(f"run {result.run} rank {result.rank}: {result.steps} steps{first}; {stages}")
    refused = sum(not c["ok"] for c in result.confirmed)
    print(f"confirmed {len(result.confirmed) - refused} orders, refused {refused}")
