"""Growth benchmark (growth-anchors §3.2): does germinating seeds beat the static host?

Four arms per task and seed, every arm 3000 steps of Adam (lr 1e-2, batch 128) on the same split
and batch order:

1. ``host``: the too-small host alone;
2. ``grown``: Kasmina slots and an ExecutionRuntime; orders at the protocol's steps: GERMINATED
   and TRAINING at 1000 (zero-init output side; the seed learns from a shadow loss, its input
   detached, the host bit-identical), BLENDING at 1500 (α 0 -> 1 over 500 steps), then at 2000 a
   counterfactual gate (val accuracy α=1 vs α=0): FOSSILIZED if not worse, else CULLED;
3. ``big``: the final architecture trained from step 0 (default init);
4. ``abrupt``: the same seed randomly initialised (no zero output side) inserted at α=1 at step
   1000, no isolation, joined to the host optimizer at once; its accuracy drop at insertion is
   reported;
5. ``fair abrupt``: the same, inserted at the gate step (2000), so its extra capacity trains in
   the forward for as many steps as the grown seed does at α=1 (1000).

Compute per arm: training FLOPs estimated as ``6 * P * B`` per training step (forward 2PB,
backward 4PB, ``P`` the parameters in the forward, ``B`` the batch), plus the grown arm's extra
passes: in TRAINING, and in the early and mid blend phases (α below the 0.7 band), a shadow forward
and backward with the seed on and a forward at α=0 on the same batch; reported in GFLOPs and as a
ratio to the host arm.

Gap recovered: ``(grown - host) / (big - host)`` on the means over seeds, with a 90 % percentile
bootstrap interval over seeds (each seed's arms resampled together). ``--markdown`` also prints
one row per seed: every arm's test accuracy and the gate's validation accuracy at α=1 and α=0.

The bus is not involved: this measures growth, not transport. Tasks: digits (64->8->10 host,
``width`` seed adding 8 units) and spirals (2->16->2 host, ``residual_mlp`` seed on the hidden
layer). Run: ``python benchmarks/growth.py [--seeds 5] [--steps 3000] [--json] [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import (
    ExecutionRuntime,
    RuntimeConfig,
    get_blueprint,
    insert_slots,
    param_count,
)
from actors.execution.blueprints import SlotShape
from actors.execution.stages import EARLY, LATE, alpha_at, blend_phase
from leyline import pb
from scenarios.demo.tasks import SLOT_POINTS, SPECS, Split, batches, build_host, evaluate, load_task

LR, BATCH = 1e-2, 128
SEED_WEIGHT_DECAY = 0.0  # the protocol: a fresh Adam for the seed, no decay (--seed-weight-decay)
PLAN = {"digits": ("units", "width"), "spirals": ("hidden", "residual_mlp")}
S = pb.SeedLifecycleStage


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss


class Extended(nn.Module):
    """The host plus a seed module at the plan's place, always in the forward (``big``, ``abrupt``)."""

    def __init__(self, host: nn.Module, task: str) -> None:
        super().__init__()
        self.host = host
        self.task = task
        self.extra: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        mlp = self.host.get_submodule("mlp")
        assert isinstance(mlp, nn.Sequential)
        if self.extra is None:
            out: Tensor = mlp(x)
        elif PLAN[self.task][0] == "units":
            out = mlp(x) + self.extra(x)
        else:
            h = mlp[1](mlp[0](x))
            out = mlp[2](h + self.extra(h))
        return out


def _seed_module(task: str, split: Split) -> nn.Module:
    """The plan's seed with default (random, nonzero) init on its output side."""
    slot, blueprint = PLAN[task]
    hidden = SPECS[task].hidden
    shape = (
        SlotShape((1, split.classes), torch.float32, (1, split.features))
        if slot == "units"
        else SlotShape((1, hidden), torch.float32)
    )
    module = get_blueprint(blueprint).build(shape, {"hidden": float(hidden)}, nn.Identity())
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return module


def arm_static(task: str, split: Split, seed: int, steps: int, big: bool) -> dict[str, float]:
    """``host`` or ``big``: one architecture from step 0."""
    model = Extended(build_host(task, split, seed), task)
    if big:
        model.extra = _seed_module(task, split)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = batches(len(split.y_train), BATCH, steps, seed)
    for step in range(steps):
        _step(model, opt, split.x_train[order[step]], split.y_train[order[step]])
    return {"acc": evaluate(model, split.x_test, split.y_test)[1], "params": param_count(model)}


def flops(p_host: int, p_seed: int, steps: int, segments: list[tuple[int, str]]) -> float:
    """Training FLOPs of a run: ``segments`` are ``(steps, kind)`` with kind ``host`` (host alone),
    ``full`` (host and seed in the forward), ``shadow`` (host alone, plus the seed's shadow
    forward/backward with the seed on and a forward at α=0) or ``blend_shadow`` (``full`` plus
    the same shadow passes: the early and mid blend phases); the rest of ``steps`` is ``host``."""
    total, used = 0.0, 0
    full = p_host + p_seed
    for n, kind in segments:
        used += n
        per = {
            "host": 6 * p_host,
            "full": 6 * full,
            "shadow": 6 * p_host + 6 * full + 2 * p_host,
            "blend_shadow": 6 * full + 6 * full + 2 * p_host,
        }
        total += n * per[kind] * BATCH
    return total + (steps - used) * 6 * p_host * BATCH


def shadowed_blend_steps(blend_steps: int) -> int:
    """Steps of a linear blend ramp in the early and mid phases (alpha hysteresis), in which the
    seed still takes shadow-loss passes."""
    phase, count = EARLY, 0
    for t in range(blend_steps):
        count += phase != LATE  # the forward of step t runs in the phase set after step t - 1
        phase = blend_phase(phase, alpha_at(pb.ALPHA_SCHEDULE_LINEAR, t + 1, blend_steps))
    return count


def arm_abrupt(task: str, split: Split, seed: int, steps: int, at: int) -> dict[str, float]:
    """Random-init seed at α=1 from ``at``, no isolation; returns the accuracy drop at insertion."""
    model = Extended(build_host(task, split, seed), task)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = batches(len(split.y_train), BATCH, steps, seed)
    drop = 0.0
    for step in range(steps):
        if step == at:
            before = evaluate(model, split.x_test, split.y_test)[1]
            model.extra = _seed_module(task, split)
            opt.add_param_group({"params": list(model.extra.parameters())})
            drop = evaluate(model, split.x_test, split.y_test)[1] - before
        _step(model, opt, split.x_train[order[step]], split.y_train[order[step]])
    return {"acc": evaluate(model, split.x_test, split.y_test)[1], "drop": drop}


def _order(slot: str, stage: int, at: int, **kw: Any) -> pb.ExecutionOrder:
    return pb.ExecutionOrder(
        order_id=f"{slot}-{stage}-{at}",
        slot=slot,
        stage=pb.SeedLifecycleStage.ValueType(stage),
        apply_at_step=at,
        **kw,
    )


def arm_grown(task: str, split: Split, seed: int, steps: int, at: int) -> dict[str, float]:
    """Kasmina slots + ExecutionRuntime, orders at the protocol's steps (no bus)."""
    model = build_host(task, split, seed)
    slots = insert_slots(model, SLOT_POINTS)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    stage_len = (steps - at) // 4  # 500 of 3000 steps after germination at 1000
    rt = ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(
            device="cpu",
            probe_every=0,
            report_every=0,
            barrier_frequency=0,
            blend_steps=stage_len,
            seed_salt=seed,
        ),
        probe_batch=(split.x_train[:256], split.y_train[:256]),
        evaluate=lambda m: evaluate(m, split.x_val, split.y_val),
    )
    slot, blueprint = PLAN[task]
    hp = {"hidden": float(SPECS[task].hidden), "lr": LR, "weight_decay": SEED_WEIGHT_DECAY}
    germ = pb.Germinate(blueprint=blueprint, params=hp)
    rt.submit(_order(slot, S.SEED_STAGE_GERMINATED, at, germinate=germ))
    rt.submit(_order(slot, S.SEED_STAGE_TRAINING, at))
    rt.submit(_order(slot, S.SEED_STAGE_BLENDING, at + stage_len))
    gate_at = at + 2 * stage_len
    order = batches(len(split.y_train), BATCH, steps, seed)
    fossilized, gate = 0.0, {"cf_acc_on": math.nan, "cf_acc_off": math.nan}
    for step in range(steps):
        x, y = split.x_train[order[step]], split.y_train[order[step]]
        loss = _step(model, opt, x, y)
        if step == gate_at:
            cf = gate = rt.counterfactual(slot)
            keep = cf["cf_acc_on"] >= cf["cf_acc_off"]
            fossilized = float(keep)
            target = S.SEED_STAGE_FOSSILIZED if keep else S.SEED_STAGE_CULLED
            rt.submit(_order(slot, target, step))
        rt.on_step(step, loss.detach(), batch=(x, y))
    return {
        "acc": evaluate(model, split.x_test, split.y_test)[1],
        "params": param_count(model),
        "fossilized": fossilized,
        "gate_on": gate["cf_acc_on"],
        "gate_off": gate["cf_acc_off"],
        "gate_at": float(gate_at),
        "stage_len": float(stage_len),
    }


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def run_task(task: str, seeds: int, steps: int) -> dict[str, Any]:
    """Every arm on ``seeds`` seeds; figures in percentage points."""
    at = steps // 3
    rows: dict[str, list[float]] = {
        "host": [],
        "grown": [],
        "big": [],
        "abrupt": [],
        "fair_abrupt": [],
        "drop": [],
    }
    params: dict[str, float] = {}
    fossilized = 0.0
    per_seed: list[dict[str, float]] = []
    for seed in range(seeds):
        split = load_task(task, seed)
        host = arm_static(task, split, seed, steps, big=False)
        grown = arm_grown(task, split, seed, steps, at)
        big = arm_static(task, split, seed, steps, big=True)
        abrupt = arm_abrupt(task, split, seed, steps, at)
        gate_at, stage_len = int(grown["gate_at"]), int(grown["stage_len"])
        fair = arm_abrupt(task, split, seed, steps, gate_at)
        rows["fair_abrupt"].append(100 * fair["acc"])
        rows["host"].append(100 * host["acc"])
        rows["grown"].append(100 * grown["acc"])
        rows["big"].append(100 * big["acc"])
        rows["abrupt"].append(100 * abrupt["acc"])
        rows["drop"].append(100 * abrupt["drop"])
        fossilized += grown["fossilized"]
        per_seed.append(
            {"seed": seed, **{arm: round(v[-1], 2) for arm, v in rows.items()}}
            | {k: round(100 * grown[k], 1) for k in ("gate_on", "gate_off")}
            | {"fossilized": grown["fossilized"]}
        )
        params = {"host": host["params"], "grown": grown["params"], "big": big["params"]}
    p_host, p_big = int(params["host"]), int(params["big"])
    shadowed = shadowed_blend_steps(stage_len)
    p_seed = p_big - p_host
    kept = fossilized == seeds  # compute of a fossilized seed (a culled one costs less)
    compute = {
        "host": flops(p_host, p_seed, steps, []),
        "big": flops(p_host, p_seed, steps, [(steps, "full")]),
        "abrupt": flops(p_host, p_seed, steps, [(at, "host"), (steps - at, "full")]),
        "fair_abrupt": flops(p_host, p_seed, steps, [(gate_at, "host"), (steps - gate_at, "full")]),
        "grown": flops(
            p_host,
            p_seed,
            steps,
            [
                (at, "host"),
                (stage_len, "shadow"),
                (shadowed, "blend_shadow"),
                (steps - at - stage_len - shadowed, "full"),
            ],
        ),
    }
    diff = [g - h for g, h in zip(rows["grown"], rows["host"], strict=True)]
    gap = [g - b for g, b in zip(rows["grown"], rows["big"], strict=True)]
    out: dict[str, Any] = {"task": task, "seeds": seeds, "steps": steps, "params": params}
    for arm in ("host", "grown", "big", "abrupt", "fair_abrupt", "drop"):
        out[arm] = dict(zip(("mean", "std"), _mean_std(rows[arm]), strict=True))
    out["grown_minus_host"] = dict(zip(("mean", "std"), _mean_std(diff), strict=True))
    out["wins"] = sum(d > 0 for d in diff)
    out["ties"] = sum(d == 0 for d in diff)
    out["grown_minus_big"] = dict(zip(("mean", "std"), _mean_std(gap), strict=True))
    out["worst_drop"] = min(rows["drop"])
    out["fossilized"] = int(fossilized)
    out["gflops"] = {k: round(v / 1e9, 3) for k, v in compute.items()}
    out["compute_vs_host"] = {k: round(v / compute["host"], 2) for k, v in compute.items()}
    out["compute_assumes_fossilized"] = kept
    rec = gap_recovered(rows["host"], rows["grown"], rows["big"])
    out["gap_recovered"] = None if rec is None else round(rec, 3)
    out["gap_recovered_interval"] = gap_interval(rows["host"], rows["grown"], rows["big"])
    out["per_seed"] = per_seed
    return out


def gap_recovered(host: list[float], grown: list[float], big: list[float]) -> float | None:
    """``(mean grown - mean host) / (mean big - mean host)``; None when big is not above host."""
    gap = statistics.fmean(big) - statistics.fmean(host)
    return (statistics.fmean(grown) - statistics.fmean(host)) / gap if gap > 0 else None


def gap_interval(
    host: list[float], grown: list[float], big: list[float], draws: int = 4000, level: float = 0.9
) -> dict[str, float] | None:
    """Percentile bootstrap over seeds of the gap recovered: seeds drawn with replacement (each
    keeps its host, grown and big together), ``level`` two-sided (its lower end is a one-sided
    ``(1 + level) / 2`` lower bound); draws whose big arm is not above the host are left out and
    counted. None with fewer than two seeds."""
    n = len(host)
    if n < 2:
        return None
    rng = random.Random(0)
    ratios: list[float] = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        r = gap_recovered([host[i] for i in idx], [grown[i] for i in idx], [big[i] for i in idx])
        if r is not None:
            ratios.append(r)
    if not ratios:
        return None
    ratios.sort()
    tail = (1.0 - level) / 2
    lo = ratios[round(tail * (len(ratios) - 1))]
    hi = ratios[round((1.0 - tail) * (len(ratios) - 1))]
    return {"lo": round(lo, 3), "hi": round(hi, 3), "level": level, "left_out": draws - len(ratios)}


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""

    def ms(d: dict[str, float]) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f}"

    lines = [
        "| task | params host → grown (big) | host | grown | big | abrupt | fair abrupt "
        "| grown − host (wins) | gap recovered (90 % CI) | grown − big | abrupt drop at insertion (worst) "
        "| fossilized | GFLOPs host / grown / big / abrupt / fair abrupt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, g, c = r["params"], r["gflops"], r["compute_vs_host"]
        rec, ci = r["gap_recovered"], r["gap_recovered_interval"]
        recovered = "n/a" if rec is None else f"{100 * rec:.0f} %"
        if rec is not None and ci is not None:
            recovered += f" ({100 * ci['lo']:.0f}–{100 * ci['hi']:.0f})"
        lines.append(
            f"| {r['task']} | {p['host']} → {p['grown']} ({p['big']}) | {ms(r['host'])} | "
            f"{ms(r['grown'])} | {ms(r['big'])} | {ms(r['abrupt'])} | {ms(r['fair_abrupt'])} | "
            f"{r['grown_minus_host']['mean']:+.1f} ± {r['grown_minus_host']['std']:.1f} pp "
            f"({r['wins']}/{r['seeds']}) | {recovered} | {r['grown_minus_big']['mean']:+.1f} ± "
            f"{r['grown_minus_big']['std']:.1f} pp | {ms(r['drop'])} pp ({r['worst_drop']:.1f}) | "
            f"{r['fossilized']}/{r['seeds']} | {g['host']:.2f} / {g['grown']:.2f} "
            f"({c['grown']:.2f}×) / {g['big']:.2f} ({c['big']:.2f}×) / {g['abrupt']:.2f} "
            f"({c['abrupt']:.2f}×) / {g['fair_abrupt']:.2f} ({c['fair_abrupt']:.2f}×) |"
        )
    return "\n".join(lines)


def per_seed_markdown(results: list[dict[str, Any]]) -> str:
    """Every seed's test accuracy per arm and the gate's validation accuracy (α=1 / α=0)."""
    lines = [
        "| task | seed | host | grown | big | abrupt | fair abrupt | grown − host "
        "| gate val α=1 / α=0 | seed's end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["per_seed"]:
            end = "FOSSILIZED" if row["fossilized"] else "CULLED"
            lines.append(
                f"| {r['task']} | {row['seed']} | {row['host']:.1f} | {row['grown']:.1f} | "
                f"{row['big']:.1f} | {row['abrupt']:.1f} | {row['fair_abrupt']:.1f} | "
                f"{row['grown'] - row['host']:+.1f} | {row['gate_on']:.1f} / "
                f"{row['gate_off']:.1f} | {end} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON lines and/or a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--tasks", default="digits,spirals")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--seed-weight-decay", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    global SEED_WEIGHT_DECAY
    SEED_WEIGHT_DECAY = args.seed_weight_decay
    results = [run_task(t, args.seeds, args.steps) for t in args.tasks.split(",")]
    elapsed = time.perf_counter() - started
    if args.json or not args.markdown:
        for r in results:
            print(json.dumps({**r, "elapsed_s": round(elapsed, 1)}))
    if args.markdown:
        print(markdown(results))
        print()
        print(per_seed_markdown(results))
        print(f"\n{args.seeds} seeds x 5 arms x {len(results)} tasks in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
