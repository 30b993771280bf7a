"""``kasmina demo``: grow a too-small network on a real dataset with every actor over the bus."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import anyio

from bus import is_redis_url, redact_url
from kasmina.common import (
    CliError,
    add_keys,
    bus_answers,
    count,
    emit_json,
    load_keys,
    with_password,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="grow seeds in a too-small network (spirals or digits)")
    parser.add_argument(
        "--bus",
        type=_bus,
        default="fakeredis",
        metavar="memory|fakeredis|redis://…",
        help="bus backend (default: an in-process fakeredis)",
    )
    parser.add_argument(
        "--steps", type=_steps, default=3000, metavar="N", help="at least 200 (default 3000)"
    )
    parser.add_argument("--seed", type=_seed, default=0, metavar="S", help="0 to 2**32 - 1")
    parser.add_argument("--out", default="kasmina-out", metavar="DIR")
    parser.add_argument("--task", choices=("digits", "spirals"), default="spirals")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no progress")
    add_keys(parser)
    parser.set_defaults(func=run)


def _bus(text: str) -> str:
    """``memory``, ``fakeredis`` or a Redis URL, checked before anything is written."""
    if text in ("memory", "fakeredis") or is_redis_url(text):
        return text
    raise argparse.ArgumentTypeError(f"must be memory, fakeredis or a Redis URL, not {text!r}")


def _steps(text: str) -> int:
    """The demo's step count: a lifecycle needs at least 200."""
    value = count(text)
    if value < 200:
        raise argparse.ArgumentTypeError(f"the demo needs at least 200 steps, not {value}")
    return value


def _seed(text: str) -> int:
    """A seed the data split and torch both take: an integer from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**32 - 1, not {value}")
    return value


def _out_dir(text: str) -> Path:
    """The output directory, made now (with its parents) so a path that cannot hold the files
    is refused before the run starts; nothing else is written yet."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {text}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kasmina-write-check"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CliError(f"--out {text}: cannot write there ({exc.strerror or exc})") from None
    return out


def run(args: argparse.Namespace) -> int:
    import torch  # imported here: other commands start without torch

    from contracts import KasminaConfig
    from scenarios.demo import DemoOptions, demo

    torch.set_num_threads(1)  # tiny networks: one thread is fastest and leaves a core to the actors
    keys = load_keys(args) if (args.keys or os.environ.get("KASMINA_KEYS")) else None
    bus = with_password(args.bus)  # the report and the JSON carry it redacted
    if not anyio.run(bus_answers, bus):  # the actors would wait for it without end
        raise CliError(f"Redis unavailable at {redact_url(bus)}")
    KasminaConfig.load()  # $KASMINA__… settings checked before anything is written
    opts = DemoOptions(args.task, args.steps, args.seed, bus, _out_dir(args.out), keys)
    if args.json:
        emit_json(anyio.run(demo, opts))
        return 0
    info = _with_progress(opts, demo)
    _print_summary(info)
    return 0


def _with_progress(opts: Any, demo: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(f"demo {opts.task}", total=opts.steps, status="")

        def progress(step: int, status: dict[str, Any]) -> None:
            stages = " ".join(f"{k}={v}" for k, v in status["stages"].items())
            text = f"loss {status['loss']:.3f} val acc {status['val_acc']:.3f} {stages}"
            bar.update(task, completed=min(step + 1, opts.steps), status=text)

        result: dict[str, Any] = anyio.run(demo, opts, progress)
    return result


def _gain_text(g: dict[str, Any]) -> str:
    """One G4 verdict: the gain (± its standard error where the test has one), n, the bound."""
    verdict = "fossilized" if g["passed"] else "culled"
    if g["gain"] is None:
        return f"not measured: {verdict}"
    se = "" if g["gain_se"] is None else f" ± {100 * g['gain_se']:.1f}"
    n = "" if g["n"] is None else f" (n {g['n']})"
    test = " (exact sign test)" if g["gain_se"] is None else ""
    bound = "n/a" if g["lower_bound"] is None else f"{100 * g['lower_bound']:+.1f} pp"
    return f"{100 * g['gain']:+.1f}{se} pp{n}, lower bound {bound}{test}: {verdict}"


def _print_summary(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    table = Table(title=f"Kasmina demo: {info['task']} ({info['elapsed_s']} s)")
    table.add_column("")
    table.add_column("value")
    table.add_row("test accuracy before growth (host)", pct(info["accuracy_before"]))
    table.add_row("test accuracy after growth", pct(info["accuracy_after"]))
    table.add_row("static host, same seed and steps", pct(info["accuracy_static_host"]))
    table.add_row("parameters host -> final", f"{info['host_params']} -> {info['final_params']}")
    table.add_row("seeds by final stage", ", ".join(f"{k}: {v}" for k, v in info["seeds"].items()))
    gates = info["gates"]
    table.add_row("gates passed / failed", f"{gates['passed']} / {gates['failed']}")
    for f in gates["failures"]:
        table.add_row(f"  failed {f['gate']} at {f['slot']}", f["reason"])
    for g in info.get("gated_gains", []):
        table.add_row(f"G4 gain at {g['slot']} (α=1 vs 0, validation)", _gain_text(g))
    for note in info.get("no_growth", []):
        table.add_row(f"no growth at step {note['step']}", note["why"])
    for key in ("report", "plot", "recording", "model"):
        table.add_row(key, info[key])
    if info.get("keys"):
        table.add_row("keys (for replay)", info["keys"])
    Console().print(table)
