"""Execution overhead benchmark: slot, seed-training and isolation-probe costs per training step.

Figures (one JSON object per line with ``bench``, ``value``, ``unit``, ``baseline``, ``ratio``;
every baseline is measured in the same run, with the configurations interleaved):

- ``execution.dormant_step``: step time with every slot dormant (runtime called each step) vs the
  plain host without slots or runtime (target ratio <= 1.02);
- ``execution.training_step``: one seed in TRAINING vs all slots dormant;
- ``execution.probe_cost``: isolation probe cost (a probe forward with autograd) amortised per step at ``probe_every`` vs the
  step time with one seed in TRAINING;
- ``execution.bus_step`` (only with ``bridge=``): step time while a bus bridge drains the outbox
  vs none;
- ``execution.on_step_idle``: one ``on_step`` call when nothing is due (no order, probe, report
  or vote), in microseconds, vs the plain host step;
- ``execution.dormant_slot``: microseconds one dormant slot adds to a step (its forward and
  backward pass-through, measured on the model, plus its share of an idle ``on_step``) vs the
  plain host step (target <= 10 us);
- ``execution.digest``: the barrier digest (seed bytes + host fingerprint) vs one seeded step
  (target <= 1 %).

Each figure carries ``size``: ``small`` (a 0.2M-parameter MLP, a step of about a millisecond,
where fixed Python costs dominate) or ``large`` (a 10.5M-parameter MLP whose step takes
50 ms or more on two CPU cores), run with :func:`run_sizes`. Targets at the large size: dormant
slots vs plain host <= 1.01, bus traffic vs none <= 1.02.

Run: ``python benchmarks/execution_bench.py [--device cuda] [--steps N] [--size small|large]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch import nn

from actors.execution import (
    ExecutionRuntime,
    RuntimeConfig,
    SeedSlot,
    SlottedModule,
    host_parameters,
    insert_slots,
)
from actors.execution.mailbox import state_digest
from benchmarks.execution_bridge import Bridge, bus_bridge, bus_bridge_for, bus_bridges
from leyline import pb

__all__ = ["bus_bridge", "bus_bridge_for", "bus_bridges", "run_execution_bench", "run_sizes"]
SLOT_POINTS = {"l1": "1", "l2": "3", "l3": "5"}


def _host(width: int, d_in: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, width),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


class _Arm:
    """One configuration: a model, its host optimizer, optionally a runtime."""

    def __init__(
        self,
        model: nn.Module,
        runtime: bool,
        device: torch.device,
        probe_every: int,
        opt: torch.optim.Optimizer | None = None,
    ):
        self.model = model.to(device)
        self.slots = insert_slots(self.model, SLOT_POINTS) if runtime else {}
        params = host_parameters(self.model, self.slots) if runtime else list(model.parameters())
        self.opt = opt if opt is not None else torch.optim.Adam(params, lr=1e-3)
        self.rt: ExecutionRuntime | None = None
        self.step = 0
        if runtime:
            self.rt = ExecutionRuntime(
                self.model,
                self.slots,
                self.opt,
                RuntimeConfig(
                    device=device, probe_every=probe_every, report_every=10, barrier_frequency=1000
                ),
            )

    def run(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            self.opt.step()
            if self.rt is not None:
                self.rt.on_step(self.step, loss)
                self.rt.drain_outbox()
            self.step += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(arm: _Arm, x: torch.Tensor, y: torch.Tensor, n: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    arm.run(x, y, n)
    _sync(device)
    return (time.perf_counter() - t0) / n


def _figure(bench: str, value: float, baseline: float, unit: str = "ms/step") -> dict[str, Any]:
    return {
        "bench": bench,
        "value": round(value, 6),
        "unit": unit,
        "baseline": round(baseline, 6),
        "ratio": round(value / baseline, 4) if baseline else float("nan"),
    }


def _paired(bench: str, arm: list[float], base: list[float]) -> dict[str, Any]:
    """A step-time figure from blocks paired in time: the ratio is the median over pairs of the
    arm's block over the baseline block next to it (a load change that spans both blocks cancels
    out; a spike in one block moves one pair, not the median); the value is the baseline's
    median step times that ratio. ``ratio_q1``/``ratio_q3`` give the pairs' spread."""
    pairs = sorted(a / b for a, b in zip(arm, base, strict=True))
    baseline = 1e3 * statistics.median(base)
    ratio = statistics.median(pairs)
    fig = _figure(bench, baseline * ratio, baseline)
    fig["ratio_q1"], fig["ratio_q3"] = (round(q, 4) for q in _quartiles(pairs))
    fig["pairs"] = len(pairs)
    return fig


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def _arms(
    base: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device, seed_hidden: int
) -> dict[str, _Arm]:
    """The plain host, its A/A twin, the host with dormant slots, and the host with one seed
    ordered to germinate and train. The first three share the host's parameter tensors and one
    optimizer (each with its own module objects), so where the weights and Adam's moments sit in
    memory, which alone moved a second copy of the plain host by 1 to 5 %, is no difference
    between them."""
    base = base.to(dev)
    shared = {id(p): p for p in base.parameters()}
    plain = _Arm(copy.deepcopy(base, dict(shared)), False, dev, 0)
    dormant = _Arm(copy.deepcopy(base, dict(shared)), True, dev, 0, plain.opt)
    seeded = _Arm(copy.deepcopy(base), True, dev, 0)
    assert seeded.rt is not None
    seeded.rt.set_probe_batch((x, y))
    seeded.rt.submit(
        pb.ExecutionOrder(
            order_id="g",
            slot="l2",
            stage=pb.SEED_STAGE_GERMINATED,
            apply_at_step=0,
            germinate=pb.Germinate(blueprint="residual_mlp", params={"hidden": seed_hidden}),
        )
    )
    seeded.rt.submit(
        pb.ExecutionOrder(order_id="t", slot="l2", stage=pb.SEED_STAGE_TRAINING, apply_at_step=1)
    )
    twin = _Arm(copy.deepcopy(base, dict(shared)), False, dev, 0, plain.opt)
    return {"plain": plain, "twin": twin, "dormant": dormant, "seeded": seeded}


def run_execution_bench(
    device: str | None = None,
    *,
    steps: int = 40,
    rounds: int = 9,
    width: int = 256,
    batch: int = 128,
    probe_every: int = 50,
    seed_hidden: int = 64,
    bridge: Bridge | dict[str, Bridge] | None = None,
) -> list[dict[str, Any]]:
    """Measure the figures above in one run and return them (milliseconds per step, from
    ``rounds`` rounds of interleaved blocks of ``steps`` steps, ratios paired within a round)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    d_in, classes = 64, 10
    base = _host(width, d_in, classes)
    x = torch.randn(batch, d_in, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    arms = _arms(base, x, y, dev, seed_hidden)
    dormant, seeded = arms["dormant"], arms["seeded"]
    assert seeded.rt is not None
    for arm in arms.values():
        arm.run(x, y, max(5, steps // 4))  # warm-up (and germination for the seeded arm)
    times, probe_ms = _interleaved(arms, x, y, steps, rounds, dev)
    seeded.rt.drain_outbox()
    figures = [
        _paired("execution.dormant_step", times["dormant"], times["plain"]),
        _paired("execution.noise_floor", times["twin"], times["plain"]),
        _paired("execution.training_step", times["seeded"], times["dormant"]),
    ]
    seeded_ms = figures[-1]["value"]
    figures.append(_figure("execution.probe_cost", probe_ms / probe_every, seeded_ms))
    bridges = (
        bridge if isinstance(bridge, dict) else ({"execution.bus_step": bridge} if bridge else {})
    )
    for name, make in bridges.items():
        figures.append(_bus_figure(name, dormant, make, x, y, steps, rounds, dev))
    figures += _fixed_costs(dormant, seeded, x, y, dev, figures[0]["baseline"], seeded_ms)
    details = _details(seed_hidden, probe_every, probe_ms)
    for f in figures:
        f["device"] = dev.type
        f["detail"] = details[f["bench"]]
        f["width"], f["batch"] = width, batch
        f["params"] = sum(p.numel() for p in base.parameters())
    return figures


def _details(seed_hidden: int, probe_every: int, probe_ms: float) -> dict[str, str]:
    """What each figure measures, in words."""
    return {
        "execution.dormant_step": f"{len(SLOT_POINTS)} dormant slots, runtime called every step",
        "execution.noise_floor": "a second copy of the plain host vs the first (the A/A control)",
        "execution.training_step": f"one residual_mlp seed (hidden {seed_hidden}) in TRAINING",
        "execution.probe_cost": f"one probe every {probe_every} steps, {1e3 * probe_ms:.0f} us each",
        "execution.bus_step": "bridge draining the outbox vs none",
        "execution.bus_step_executor": "the ExecutionActor publishing on the bus (actors elsewhere) vs no bus",
        "execution.bus_step_all_actors": "every actor in this process (2 cores, one GIL) vs no bus",
        **FIXED_DETAILS,
    }


def _interleaved(
    arms: dict[str, _Arm],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    rounds: int,
    dev: torch.device,
) -> tuple[dict[str, list[float]], float]:
    """Blocks of ``steps`` steps per arm, the arms rotated each round, and one isolation probe of
    the seeded arm per round; returns every block's time per step and the best probe (ms)."""
    times: dict[str, list[float]] = {k: [] for k in arms}
    probe_times: list[float] = []
    names = list(arms)
    seeded = arms["seeded"].rt
    assert seeded is not None
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            times[name].append(_timed(arms[name], x, y, steps, dev))
        _sync(dev)
        t0 = time.perf_counter()
        seeded.probe(arms["seeded"].step)
        _sync(dev)
        probe_times.append(time.perf_counter() - t0)
    return times, 1e3 * min(probe_times)


def _bus_figure(
    name: str,
    arm: _Arm,
    make: Bridge,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    rounds: int,
    dev: torch.device,
) -> dict[str, Any]:
    """Step time with the bridge running vs without: each round times one quiet block and one
    busy block (their order alternating), the bridge started and warmed by an untimed block
    before its busy block; the ratio is paired within the round (see :func:`_paired`)."""
    assert arm.rt is not None
    times: dict[str, list[float]] = {"quiet": [], "busy": []}
    for r in range(rounds):
        for kind in ("quiet", "busy") if r % 2 == 0 else ("busy", "quiet"):
            if kind == "quiet":
                times[kind].append(_timed(arm, x, y, steps, dev))
                continue
            with make(arm.rt):
                arm.run(x, y, steps)  # untimed: the bridge's actors are up and draining
                times[kind].append(_timed(arm, x, y, steps, dev))
    return _paired(name, times["busy"], times["quiet"])


FIXED_DETAILS = {
    "execution.on_step_idle": "on_step with nothing due, microseconds per call",
    "execution.dormant_slot": "one dormant slot per step: forward/backward pass-through + idle on_step share",
    "execution.digest": "barrier digest (all seed bytes + sampled host fingerprint) vs a seeded step",
}

SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 256, "batch": 128, "steps": 40},
    "large": {"width": 1856, "batch": 64, "steps": 6},
}


def _fixed_costs(
    dormant: _Arm,
    seeded: _Arm,
    x: torch.Tensor,
    y: torch.Tensor,
    dev: torch.device,
    plain_ms: float,
    seeded_ms: float,
    calls: int = 2000,
) -> list[dict[str, Any]]:
    """Costs too small to see in a step-time ratio, measured directly (best of 5 blocks)."""
    rt = dormant.rt
    assert rt is not None and seeded.rt is not None
    idle = _best(lambda: [rt.on_step(10**9 + 1) for _ in range(calls)]) / calls  # nothing due
    # a dormant slot's forward and backward: a wrapped identity vs the bare identity
    bare_mod = nn.Identity()
    wrapped = SlottedModule(nn.Identity(), SeedSlot("bench.s0")).to(dev)
    h = torch.zeros(x.shape[0], 8, device=dev, requires_grad=True)
    bare = _best(lambda: [bare_mod(h).sum().backward() for _ in range(calls)]) / calls  # type: ignore[func-returns-value]
    through = _best(lambda: [wrapped(h).sum().backward() for _ in range(calls)]) / calls  # type: ignore[func-returns-value]
    per_slot = max(0.0, through - bare) + idle / max(1, len(dormant.slots))
    digest = _best(lambda: state_digest(seeded.model, seeded.slots))
    return [
        _figure("execution.on_step_idle", 1e6 * idle, 1e3 * plain_ms, unit="us"),
        _figure("execution.dormant_slot", 1e6 * per_slot, 1e3 * plain_ms, unit="us"),
        _figure("execution.digest", 1e3 * digest, seeded_ms),
    ]


def _best(fn: Callable[[], object], blocks: int = 5) -> float:
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_sizes(
    device: str | None = None,
    *,
    sizes: tuple[str, ...] = ("small", "large"),
    rounds: int = 9,
    bridge: Bridge | dict[str, Bridge] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_execution_bench` at each preset size; every figure is tagged with its size."""
    out = []
    for size in sizes:
        preset = SIZES[size]
        figures = run_execution_bench(
            device,
            steps=preset["steps"],
            rounds=rounds,
            width=preset["width"],
            batch=preset["batch"],
            bridge=bridge,
        )
        for f in figures:
            f["size"] = size
        out += figures
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the figures as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--bus", default=None, help="also measure with all actors on this bus (e.g. fakeredis://)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), action="append", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(Exception):
        torch.set_num_threads(min(2, torch.get_num_threads()))
    bridge = bus_bridges(args.bus) if args.bus else None
    sizes = tuple(args.size or SIZES)
    for fig in run_sizes(args.device, sizes=sizes, rounds=args.rounds, bridge=bridge):
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
