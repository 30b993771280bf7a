"""Structured pruning benchmark: accuracy vs sparsity, masks chosen by the exported unit importance
against masks chosen at random, and the cost of the masked forward.

Accuracy. Per task (digits: 64->8->10 host; spirals: 2->16->2) and seed, the demo host with its
slots inserted (no seed germinated) trains ``steps`` steps of Adam (lr 1e-2, batch 128) attached
to an ExecutionRuntime that tracks unit importance (``importance_every = steps // 4``). At the
end a checkpoint is written, which exports the last window's ``ImportanceReport``. The host's
hidden units (the outputs of ``mlp.host.0``) are then pruned one-shot, no fine-tuning, at each
sparsity: ``k`` units by the report (the ``k`` least important) and ``k`` units at random
(``RANDOM_DRAWS`` draws per seed, averaged). Every mask goes through the runtime's order path
(``submit_pruning`` + ``on_step``); accuracy is on the task's test split.

Overhead. Interleaved warm arms on one model (an MLP 256->1024->1024->10, batch 256, and the
digits host, batch 128): ``plain`` (no hook), ``masked`` (half the units of every hidden Linear
masked) and ``tracked`` (importance tracking on), for an eval forward and a training step
(forward, backward, SGD step). Each arm's median over rounds; ratios against ``plain``.

Run: ``python benchmarks/pruning.py [--seeds 5] [--steps 2000] [--json] [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch import nn

from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.execution.pruning import Pruner
from leyline import pb
from scenarios.demo.tasks import SLOT_POINTS, Split, batches, build_host, evaluate, load_task

LR, BATCH = 1e-2, 128
LAYER = "mlp.host.0"  # the demo host's hidden layer (under its ``units`` slot)
SPARSITIES = (0.25, 0.5, 0.75)
RANDOM_DRAWS = 20


# -- accuracy --------------------------------------------------------------------------------------
def trained(task: str, split: Split, seed: int, steps: int) -> tuple[ExecutionRuntime, list[float]]:
    """The demo host trained with importance tracking; returns it and the exported importance of
    its hidden units (the report the end-of-training checkpoint sends)."""
    model = build_host(task, split, seed)
    slots = insert_slots(model, SLOT_POINTS)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    cfg = RuntimeConfig(device="cpu", probe_every=0, report_every=0, barrier_frequency=0,
                        importance_every=max(steps // 4, 1), seed_salt=seed)  # fmt: skip
    rt = ExecutionRuntime(model, slots, opt, cfg)
    order = batches(len(split.y_train), BATCH, steps, seed)
    for step in range(steps):
        x, y = split.x_train[order[step]], split.y_train[order[step]]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        rt.on_step(step, loss.detach())
    rt.drain_outbox()
    with tempfile.TemporaryDirectory() as tmp:
        rt.checkpoint(str(Path(tmp) / "end.safetensors"))
    (report,) = [m for k, m in rt.drain_outbox() if k == "pruning.importance"]
    (hidden,) = [m for m in report.modules if m.module == LAYER]
    return rt, list(hidden.importance)


def masked_accuracy(rt: ExecutionRuntime, split: Split, keep: list[bool]) -> float:
    """Test accuracy with ``keep`` as the hidden layer's mask, set and removed by orders."""
    for flags in (keep, [True] * len(keep)):
        step = rt.step + 1
        rt.submit_pruning(pb.PruningOrder(order_id=f"p{step}", apply_at_step=step,
                                          masks=[pb.UnitMask(module=LAYER, keep=flags)]))  # fmt: skip
        rt.on_step(step)
        (ack,) = [m for k, m in rt.drain_outbox() if k == "pruning.ack"]
        assert ack.ok, ack.error
        if flags is keep:
            acc = evaluate(rt.model, split.x_test, split.y_test)[1]
    return acc


def by_importance(scores: list[float], k: int) -> list[bool]:
    """Keep flags pruning the ``k`` least important units."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    pruned = set(order[:k])
    return [i not in pruned for i in range(len(scores))]


def at_random(units: int, k: int, gen: torch.Generator) -> list[bool]:
    """Keep flags pruning ``k`` units drawn at random."""
    pruned = set(torch.randperm(units, generator=gen)[:k].tolist())
    return [i not in pruned for i in range(units)]


def accuracy_rows(
    task: str,
    seed: int,
    steps: int,
    sparsities: tuple[float, ...] = SPARSITIES,
    draws: int = RANDOM_DRAWS,
) -> list[dict[str, Any]]:
    """One row per sparsity for one task and seed (``draws`` random masks each)."""
    split = load_task(task, seed)
    rt, scores = trained(task, split, seed, steps)
    dense = evaluate(rt.model, split.x_test, split.y_test)[1]
    gen = torch.Generator().manual_seed(1000 + seed)
    rows = []
    for sparsity in sparsities:
        k = round(sparsity * len(scores))
        imp = masked_accuracy(rt, split, by_importance(scores, k))
        rnd = [masked_accuracy(rt, split, at_random(len(scores), k, gen))
               for _ in range(draws)]  # fmt: skip
        rows.append({"task": task, "seed": seed, "sparsity": sparsity, "pruned": k,
                     "units": len(scores), "dense": dense, "importance": imp,
                     "random": statistics.fmean(rnd)})  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and sparsity: means and sds over seeds, paired gain, seeds where importance won."""
    out = []
    for key in sorted({(r["task"], r["sparsity"]) for r in rows}):
        group = [r for r in rows if (r["task"], r["sparsity"]) == key]
        gains = [r["importance"] - r["random"] for r in group]

        def sd(xs: list[float]) -> float:
            return statistics.stdev(xs) if len(xs) > 1 else 0.0

        imp, rnd = [r["importance"] for r in group], [r["random"] for r in group]
        out.append({"task": key[0], "sparsity": key[1], "pruned": group[0]["pruned"],
                    "units": group[0]["units"], "seeds": len(group),
                    "dense": statistics.fmean(r["dense"] for r in group),
                    "importance": statistics.fmean(imp), "importance_sd": sd(imp),
                    "random": statistics.fmean(rnd), "random_sd": sd(rnd),
                    "gain": statistics.fmean(gains), "wins": sum(g > 0 for g in gains)})  # fmt: skip
    return out


# -- overhead --------------------------------------------------------------------------------------
def _arms(model: nn.Module) -> dict[str, Callable[[], Pruner | None]]:
    def masked() -> Pruner:
        p = Pruner(model, track=False)
        hidden = [n for n in p.modules if n != max(p.modules)]  # every Linear but the head
        units = {n: len(p.modules[n].weight) for n in hidden}  # type: ignore[arg-type]
        p.set_masks({n: torch.arange(u) % 2 == 0 for n, u in units.items()})
        return p

    return {"plain": lambda: None, "masked": masked,
            "tracked": lambda: Pruner(model, track=True)}  # fmt: skip


def overhead(
    name: str, model: nn.Module, x: torch.Tensor, rounds: int, reps: int
) -> list[dict[str, Any]]:
    """Median seconds per forward and per training step of each arm, interleaved and warm."""
    y = torch.randint(0, 10, (x.shape[0],))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def forward() -> None:
        with torch.no_grad():
            model.eval()
            model(x)

    def train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()

    times: dict[tuple[str, str], list[float]] = {}
    arms = _arms(model)
    for r in range(rounds + 1):  # round 0 warms every arm up
        for arm in list(arms)[r % 3 :] + list(arms)[: r % 3]:
            pruner = arms[arm]()
            for what, fn in (("forward", forward), ("train_step", train)):
                fn()
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                if r:
                    times.setdefault((arm, what), []).append((time.perf_counter() - start) / reps)
            if pruner is not None:
                pruner.close()
    out = []
    for (arm, what), ts in sorted(times.items()):
        base = statistics.median(times[("plain", what)])
        value = statistics.median(ts)
        out.append({"bench": f"pruning.{name}.{what}.{arm}", "value": value, "unit": "s",
                    "baseline": base, "ratio": value / base})  # fmt: skip
    return out


def overhead_all(rounds: int, reps: int, scale: int = 1) -> list[dict[str, Any]]:
    """The wide MLP (batch 256) and the digits host (batch 128); ``scale`` divides the wide one."""
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(256 // scale, 1024 // scale), nn.ReLU(),
                         nn.Linear(1024 // scale, 1024 // scale), nn.ReLU(),
                         nn.Linear(1024 // scale, 10))  # fmt: skip
    host = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    return overhead("wide_mlp", wide, torch.randn(256, 256 // scale), rounds, reps) + overhead(
        "digits_host", host, torch.randn(128, 64), rounds, reps
    )


# -- output ----------------------------------------------------------------------------------------
def markdown(summary: list[dict[str, Any]], costs: list[dict[str, Any]]) -> str:
    """The accuracy-vs-sparsity table and the overhead table."""
    lines = ["| task | pruned / units | dense acc | by importance | at random | gain (paired) | seeds won |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in summary:
        lines.append(f"| {s['task']} | {s['pruned']}/{s['units']} ({s['sparsity']:.0%}) | "
                     f"{s['dense']:.3f} | {s['importance']:.3f} ± {s['importance_sd']:.3f} | "
                     f"{s['random']:.3f} ± {s['random_sd']:.3f} | {s['gain']:+.3f} | "
                     f"{s['wins']}/{s['seeds']} |")  # fmt: skip
    lines += ["", "| model | measure | arm | median | ratio vs plain |", "|---|---|---|---|---|"]
    for c in costs:
        _, model, what, arm = c["bench"].split(".")
        lines.append(f"| {model} | {what} | {arm} | {c['value'] * 1e6:.0f} µs | {c['ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print JSON lines or markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--tasks", default="digits,spirals")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r for task in args.tasks.split(",") for seed in range(args.seeds)
            for r in accuracy_rows(task, seed, args.steps)]  # fmt: skip
    summary = summarise(rows)
    costs = overhead_all(args.rounds, args.reps)
    if args.json or not args.markdown:
        for item in [*summary, *costs]:
            print(json.dumps(item))
    if args.markdown:
        print(markdown(summary, costs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
