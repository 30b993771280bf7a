"""The growth demo: a Tolaria stand-in trains a too-small network, a Tamiyo stand-in germinates
seeds, and every Kasmina actor runs over the bus; the run is recorded for ``kasmina replay``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from contracts import KeyRing
from scenarios.demo.budgets import Budgets
from scenarios.demo.policy import Plan, Tamiyo, plans_for
from scenarios.demo.report import summary, write_model, write_plot, write_report
from scenarios.demo.runner import DemoOptions, DemoRun, Progress, run_demo, static_host
from scenarios.demo.tasks import TASKS

__all__ = [
    "TASKS",
    "Budgets",
    "DemoOptions",
    "DemoRun",
    "Plan",
    "Progress",
    "Tamiyo",
    "demo",
    "plans_for",
    "run_demo",
    "static_host",
]


async def demo(opts: DemoOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the demo and write report.md, plot.png, recording.kasrec, model.safetensors (and keys.json
    when no key ring was given) to ``opts.out``; returns the summary."""
    out = Path(opts.out)
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out / "report.md",
        "plot": out / "plot.png",
        "recording": out / "recording.kasrec",
        "model": out / "model.safetensors",
    }
    if opts.keys is None:
        ring = KeyRing.generate()
        paths["keys"] = out / "keys.json"
        ring.save(paths["keys"])
        opts = DemoOptions(opts.task, opts.steps, opts.seed, opts.bus, out, ring)
    run = await run_demo(opts, progress)
    info = summary(run, paths)
    write_model(run, paths["model"])
    write_report(run, info, paths["report"])
    write_plot(run, paths["plot"])
    return info
