"""Knowledge-distillation benchmark: does a seed that distils from a bigger trained model do better?

Per task and seed, a teacher (an MLP four times the host's width, ``teacher_hidden``) is trained
on the training split; then two arms run interleaved on the same split, batch order and seed
initialisation, with the growth benchmark's protocol (``benchmarks/growth.py``: germinate and
TRAINING at a third of the run, the seed learning from its shadow loss; BLENDING half a stage
later; a counterfactual gate; fossilize or cull):

1. ``plain``: the seed's shadow loss is the task loss (cross-entropy);
2. ``kd``: the runtime holds the teacher (``ExecutionRuntime(teacher=...)``); the seed's shadow
   loss is the knowledge-distillation objective ``(1-w) CE + w T^2 KL`` (T = 4, w = ``--weight``, default 0.3).

Reported: test accuracy of each arm, the paired difference (kd − plain) with its wins, the seed's
own counterfactual gain at the gate (val accuracy at α=1 minus α=0), the teacher's and the host's
accuracy, and the teacher's forward time per step as a ratio to the host step (same run).
``--train-limit N`` keeps only N training examples for the teacher, the host and the seed (the
data-scarce case). Run: ``python benchmarks/distill.py [--seeds 5] [--steps 3000] [--weight 0.3]
[--train-limit N] [--json] [--markdown]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from benchmarks.growth import BATCH, LR, PLAN, S, _order, _step
from leyline import pb
from scenarios.demo.tasks import SLOT_POINTS, SPECS, Split, batches, build_host, evaluate, load_task

TEACHER_WIDTH = 4  # teacher hidden units = this many times the host's


def teacher(task: str, split: Split, seed: int, steps: int) -> nn.Module:
    """A wider two-hidden-layer MLP trained on the training split (same batch order)."""
    torch.manual_seed(10_000 + seed)
    width = TEACHER_WIDTH * SPECS[task].hidden
    model = nn.Sequential(
        nn.Linear(split.features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, split.classes),
    )
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = batches(len(split.y_train), BATCH, steps, seed + 1)
    for step in range(steps):
        _step(model, opt, split.x_train[order[step]], split.y_train[order[step]])
    return model.eval()


def arm(
    task: str, split: Split, seed: int, steps: int, kd: nn.Module | None, weight: float
) -> dict[str, float]:
    """The growth protocol with or without a teacher; accuracy, gate gain, teacher time."""
    at = steps // 3
    stage_len = (steps - at) // 4
    model = build_host(task, split, seed)
    slots = insert_slots(model, SLOT_POINTS)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    cfg = RuntimeConfig(
        device="cpu",
        probe_every=0,
        report_every=0,
        barrier_frequency=0,
        blend_steps=stage_len,
        seed_salt=seed,
        kd_weight=weight,
    )
    rt = ExecutionRuntime(
        model,
        slots,
        opt,
        cfg,
        probe_batch=(split.x_train[:256], split.y_train[:256]),
        validation=(split.x_val, split.y_val),
        teacher=kd,
    )
    slot, blueprint = PLAN[task]
    hp = {"hidden": float(SPECS[task].hidden), "lr": LR}
    rt.submit(
        _order(
            slot,
            S.SEED_STAGE_GERMINATED,
            at,
            germinate=pb.Germinate(blueprint=blueprint, params=hp),
        )
    )
    rt.submit(_order(slot, S.SEED_STAGE_TRAINING, at))
    rt.submit(_order(slot, S.SEED_STAGE_BLENDING, at + stage_len))
    gate_at = at + 2 * stage_len
    order = batches(len(split.y_train), BATCH, steps, seed)
    gain = kept = 0.0
    for step in range(steps):
        x, y = split.x_train[order[step]], split.y_train[order[step]]
        loss = _step(model, opt, x, y)
        if step == gate_at:
            cf = rt.counterfactual(slot)
            gain = cf["cf_acc_on"] - cf["cf_acc_off"]
            kept = float(gain >= 0)
            rt.submit(_order(slot, S.SEED_STAGE_FOSSILIZED if kept else S.SEED_STAGE_CULLED, step))
        rt.on_step(step, loss.detach(), batch=(x, y))
    return {"acc": evaluate(model, split.x_test, split.y_test)[1], "gain": gain, "kept": kept}


def teacher_cost(task: str, split: Split, model: nn.Module, reps: int = 50) -> float:
    """The teacher's no-grad forward on one batch as a ratio to one host training step."""
    host = build_host(task, split, 0)
    opt = torch.optim.Adam(host.parameters(), lr=LR)
    x, y = split.x_train[:BATCH], split.y_train[:BATCH]
    best = {"host": float("inf"), "teacher": float("inf")}
    for _ in range(reps):  # interleaved, best of reps
        t0 = time.perf_counter()
        _step(host, opt, x, y)
        best["host"] = min(best["host"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        best["teacher"] = min(best["teacher"], time.perf_counter() - t0)
    return best["teacher"] / best["host"]


def limited(split: Split, n: int) -> Split:
    """``split`` with only its first ``n`` training examples (the split is shuffled; 0: all)."""
    if n <= 0:
        return split
    return dataclasses.replace(split, x_train=split.x_train[:n], y_train=split.y_train[:n])


def _ms(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def run_task(
    task: str, seeds: int, steps: int, weight: float, train_limit: int = 0
) -> dict[str, Any]:
    """Both arms on ``seeds`` seeds, interleaved (figures in percentage points); ``train_limit``
    keeps only that many training examples (0: all) for the teacher, the host and the seed."""
    rows: dict[str, list[float]] = {k: [] for k in ("teacher", "host", "plain", "kd", "diff")}
    gains: dict[str, list[float]] = {"plain": [], "kd": [], "diff": []}
    kept = {"plain": 0.0, "kd": 0.0}
    cost = 0.0
    for seed in range(seeds):
        split = limited(load_task(task, seed), train_limit)
        big = teacher(task, split, seed, steps)
        rows["teacher"].append(100 * evaluate(big, split.x_test, split.y_test)[1])
        host = build_host(task, split, seed)
        rows["host"].append(100 * evaluate(host, split.x_test, split.y_test)[1])
        for name, kd in (
            (("plain", None), ("kd", big)) if seed % 2 == 0 else (("kd", big), ("plain", None))
        ):
            out = arm(task, split, seed, steps, kd, weight)
            rows[name].append(100 * out["acc"])
            gains[name].append(100 * out["gain"])
            kept[name] += out["kept"]
        rows["diff"].append(rows["kd"][-1] - rows["plain"][-1])
        gains["diff"].append(gains["kd"][-1] - gains["plain"][-1])
        cost = teacher_cost(task, split, big)
    result: dict[str, Any] = {"task": task, "seeds": seeds, "steps": steps, "kd_weight": weight}
    result["train_examples"] = len(split.y_train)
    result.update({k: _ms(v) for k, v in rows.items() if k != "host"})
    result["kd_minus_plain"] = result.pop("diff")
    result["wins"] = sum(d > 0 for d in rows["diff"])
    result["ties"] = sum(d == 0 for d in rows["diff"])
    result["gate_gain"] = {k: _ms(v) for k, v in gains.items() if k != "diff"}
    result["gate_gain_kd_minus_plain"] = _ms(gains["diff"])
    result["gate_gain_wins"] = sum(d > 0 for d in gains["diff"])
    result["fossilized"] = {k: int(v) for k, v in kept.items()}
    result["teacher_forward_vs_host_step"] = round(cost, 3)
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""

    def ms(d: dict[str, float]) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f}"

    lines = [
        "| task (train examples) | teacher | plain seed | distilling seed | kd − plain (wins) "
        "| gate gain plain / kd | gate gain kd − plain (wins) | fossilized plain / kd "
        "| teacher forward / host step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g, f, d = r["gate_gain"], r["fossilized"], r["gate_gain_kd_minus_plain"]
        lines.append(
            f"| {r['task']} ({r['train_examples']}) | {ms(r['teacher'])} | {ms(r['plain'])} | "
            f"{ms(r['kd'])} | "
            f"{r['kd_minus_plain']['mean']:+.1f} ± {r['kd_minus_plain']['std']:.1f} pp "
            f"({r['wins']}/{r['seeds']}) | {ms(g['plain'])} / {ms(g['kd'])} pp | "
            f"{d['mean']:+.1f} ± {d['std']:.1f} pp ({r['gate_gain_wins']}/{r['seeds']}) | "
            f"{f['plain']}/{r['seeds']} / {f['kd']}/{r['seeds']} | "
            f"{r['teacher_forward_vs_host_step']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON lines and/or a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--weight", type=float, default=0.3)
    parser.add_argument("--tasks", default="digits,spirals")
    parser.add_argument("--train-limit", type=int, default=0, help="training examples (0: all)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = [
        run_task(t, args.seeds, args.steps, args.weight, args.train_limit)
        for t in args.tasks.split(",")
    ]
    elapsed = time.perf_counter() - started
    if args.json or not args.markdown:
        for r in results:
            print(json.dumps({**r, "elapsed_s": round(elapsed, 1)}))
    if args.markdown:
        print(markdown(results))
        print(f"\n{args.seeds} seeds x 2 arms x {len(results)} tasks in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
