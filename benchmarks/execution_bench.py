"""Execution overhead benchmark: slot, seed-training and isolation-probe costs per training step.

Figures (one JSON object per line with ``bench``, ``value``, ``unit``, ``baseline``, ``ratio``;
every baseline is measured in the same run, with the configurations interleaved):

- ``execution.dormant_step``: step time with every slot dormant (runtime called each step) vs the
  plain host without slots or runtime: the same model object, the slot wrappers attached or
  detached between blocks (target ratio <= 1.01 at the large size);
- ``execution.noise_floor``: the plain host vs itself, timed in the same quads (the A/A control:
  the resolution of the step-time ratios in that sitting);
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
- ``execution.digest``: what a barrier step adds on the training thread (the sampled gradient
  digest, the snapshot of the seed bytes and host fingerprint, queueing the hash) vs one seeded
  step (target <= 1 %); median of repeated barrier votes;
- ``execution.digest_hash``: the whole digest, snapshot and hashing, until the vote is queued
  (the hashing runs on the digest thread, off the training thread) vs one seeded step.

Step-time ratios come from ABBA quads of short blocks (see :mod:`benchmarks.execution_timing`).

Each figure carries ``size``: ``small`` (a 0.2M-parameter MLP, a step of about a millisecond,
where fixed Python costs dominate) or ``large`` (a 10.5M-parameter MLP whose step takes
50 ms or more on two CPU cores), run with :func:`run_sizes`. Targets at the large size: dormant
slots vs plain host <= 1.01, bus traffic vs none <= 1.02.

Run: ``python benchmarks/execution_bench.py [--device cuda] [--rounds N] [--steps N]
[--size small|large] [--bus URL]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from actors.execution import (
    ExecutionRuntime,
    RuntimeConfig,
    SeedSlot,
    SlottedModule,
    host_parameters,
    insert_slots,
    ranks,
)
from benchmarks.execution_bridge import Bridge, bus_bridge, bus_bridge_for, bus_bridges
from benchmarks.execution_timing import (
    Arm,
    Quads,
    Wiring,
    best,
    figure,
    median_time,
    paired,
    paired_extra,
    sync,
)
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


def _runtime(model: nn.Module, slots: dict[str, SeedSlot], opt: torch.optim.Optimizer,
             dev: torch.device) -> ExecutionRuntime:  # fmt: skip
    config = RuntimeConfig(device=dev, probe_every=0, report_every=10, barrier_frequency=1000)
    return ExecutionRuntime(model, slots, opt, config)


def _arms(
    base: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device, seed_hidden: int
) -> dict[str, Arm]:
    """The plain host, the same host with dormant slots and a runtime, and a copy of the host
    with one seed ordered to germinate and train. The plain and dormant arms are one model, one
    optimizer and one set of tensors: the dormant arm attaches the slot wrappers before its
    blocks, the plain arm detaches them, so the slots and the runtime are all that differs."""
    model = base.to(dev)
    slots = insert_slots(model, SLOT_POINTS)
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-3)
    wiring = Wiring(model)
    plain = Arm(model, opt, None, wiring)
    dormant = Arm(model, opt, _runtime(model, slots, opt, dev), wiring)
    seeded_model = copy.deepcopy(model)
    seeded_slots = {m.slot.slot_id: m.slot for m in seeded_model.modules()
                    if isinstance(m, SlottedModule)}  # fmt: skip
    seeded_opt = torch.optim.Adam(host_parameters(seeded_model, seeded_slots), lr=1e-3)
    seeded = Arm(seeded_model, seeded_opt, _runtime(seeded_model, seeded_slots, seeded_opt, dev))
    assert seeded.rt is not None
    seeded.rt.set_probe_batch((x, y))
    germinate = pb.Germinate(blueprint="residual_mlp", params={"hidden": seed_hidden})
    seeded.rt.submit(pb.ExecutionOrder(order_id="g", slot="l2", stage=pb.SEED_STAGE_GERMINATED,
                                       apply_at_step=1, germinate=germinate))  # fmt: skip
    seeded.rt.submit(
        pb.ExecutionOrder(order_id="t", slot="l2", stage=pb.SEED_STAGE_TRAINING, apply_at_step=2)
    )
    return {"plain": plain, "dormant": dormant, "seeded": seeded}


def run_execution_bench(
    device: str | None = None,
    *,
    steps: int = 10,
    rounds: int = 12,
    warm: int = 2,
    width: int = 256,
    batch: int = 128,
    probe_every: int = 50,
    seed_hidden: int = 64,
    bridge: Bridge | dict[str, Bridge] | None = None,
) -> list[dict[str, Any]]:
    """Measure the figures above in one run and return them (milliseconds per step, from
    ``rounds`` ABBA quads per comparison of blocks of ``steps`` steps, each block after ``warm``
    untimed steps)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    d_in, classes = 64, 10
    base = _host(width, d_in, classes)
    params = sum(p.numel() for p in base.parameters())
    x = torch.randn(batch, d_in, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    arms = _arms(base, x, y, dev, seed_hidden)
    dormant, seeded = arms["dormant"], arms["seeded"]
    for arm in arms.values():
        arm.enter()
        arm.run(x, y, max(5, steps // 2))  # warm-up (and germination for the seeded arm)
    quads = Quads(x, y, steps, warm, dev)
    figures, probe_ms = _step_figures(arms, quads, rounds)
    seeded_ms = figures[-1]["value"]
    figures.append(figure("execution.probe_cost", probe_ms / probe_every, seeded_ms))
    bridges = (
        bridge if isinstance(bridge, dict) else ({"execution.bus_step": bridge} if bridge else {})
    )
    for name, make in bridges.items():
        figures.append(_bus_figure(name, dormant, make, quads, rounds))
    figures += _fixed_costs(dormant, seeded, x, dev, figures[0]["baseline"], seeded_ms)
    details = _details(seed_hidden, probe_every, probe_ms)
    for f in figures:
        f.update(device=dev.type, detail=details[f["bench"]], width=width, batch=batch)
        f.update(params=params, steps=steps, warm=warm)
    return figures


def _step_figures(
    arms: dict[str, Arm], quads: Quads, rounds: int
) -> tuple[list[dict[str, Any]], float]:
    """The paired step-time figures: dormant vs plain and plain vs plain (the two comparisons
    interleaved quad by quad), then seeded vs dormant with one isolation probe per quad; and
    the best probe's milliseconds."""
    plain, dormant, seeded = arms["plain"], arms["dormant"], arms["seeded"]
    assert seeded.rt is not None
    slots: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    twin: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    train: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for _ in range(rounds):
        quads.quad(plain, dormant, slots)
        quads.quad(plain, plain, twin)
    probes = []
    rt = seeded.rt

    def probe_once() -> None:
        rt.probe(seeded.step)
        sync(quads.dev)

    for _ in range(rounds):
        quads.quad(dormant, seeded, train)
        sync(quads.dev)
        probes.append(median_time(probe_once, 1))
    seeded.rt.drain_outbox()
    return [
        paired("execution.dormant_step", slots["b"], slots["a"]),
        paired("execution.noise_floor", twin["b"], twin["a"]),
        paired("execution.training_step", train["b"], train["a"]),
    ], 1e3 * min(probes)


def _details(seed_hidden: int, probe_every: int, probe_ms: float) -> dict[str, str]:
    """What each figure measures, in words."""
    return {
        "execution.dormant_step": f"{len(SLOT_POINTS)} dormant slots, runtime called every step",
        "execution.noise_floor": "the plain host vs itself in the same quads (the A/A control)",
        "execution.training_step": f"one residual_mlp seed (hidden {seed_hidden}) in TRAINING",
        "execution.probe_cost": f"one probe every {probe_every} steps, {1e3 * probe_ms:.0f} us each",
        "execution.bus_step": "bridge draining the outbox vs none",
        "execution.bus_step_executor": "the ExecutionActor publishing on the bus (actors elsewhere) vs no bus",
        "execution.bus_step_all_actors": "every actor in this process (2 cores, one GIL) vs no bus",
        **FIXED_DETAILS,
    }


def _bus_figure(name: str, arm: Arm, make: Bridge, quads: Quads, rounds: int) -> dict[str, Any]:
    """Step time with the bridge running vs without, in ABBA quads on the dormant arm: a busy
    block starts the bridge and runs a whole untimed block (its actors up and draining) before
    the timed one; a quiet block runs the same untimed block without it."""
    rt = arm.rt
    assert rt is not None
    times: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    warm, steps = quads.warm, quads.steps
    quads.steps = quads.warm = max(steps, BUS_BLOCK_STEPS)  # the actors need a while to be up
    try:
        for _ in range(min(rounds, BUS_ROUNDS)):
            quads.quad(arm, arm, times, (contextlib.nullcontext, lambda: _published(arm, make)))
    finally:
        quads.warm, quads.steps = warm, steps
    return paired(name, times["b"], times["a"])


@contextlib.contextmanager
def _published(arm: Arm, make: Bridge) -> Iterator[None]:
    """The bridge running for ``arm``'s runtime, its ExecutionActor draining and publishing the
    outbox (the arm's own loop does not drain it meanwhile)."""
    assert arm.rt is not None
    arm.drains = False
    try:
        with make(arm.rt):
            yield
    finally:
        arm.drains = True


FIXED_DETAILS = {
    "execution.on_step_idle": "on_step with nothing due, microseconds per call",
    "execution.dormant_slot": "one dormant slot per step: forward/backward pass-through + idle on_step share",
    "execution.digest": "a barrier step on the training thread (gradient sample, snapshot, queueing) vs a seeded step",
    "execution.digest_hash": "the whole digest until the vote is queued (hashing off the training thread) vs a seeded step",
}

SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 256, "batch": 128, "steps": 20, "warm": 2},
    "large": {"width": 1856, "batch": 64, "steps": 1, "warm": 1},
}
# ABBA quads per comparison at each size. At the large size a block is one timed step (after
# its untimed one): the two arms of a quad then run within half a second of each other, so a
# load change hits both. Pairs of three-step blocks spread about +-2 % (their quartiles) on a
# two-core machine and their median moved by 1 to 2 % between sittings, too coarse for a 1 %
# target; pairs of one-step blocks spread about +-0.8 %, and 96 of them (some five minutes)
# put the median within a few tenths of a percent.
ROUNDS: dict[str, int] = {"small": 12, "large": 96}
# The traffic figure's blocks: a busy block starts a bridge (its actors) and runs an untimed
# block before the timed one, so its blocks stay at least three steps long, at most 24 quads.
BUS_BLOCK_STEPS, BUS_ROUNDS = 3, 24


def _fixed_costs(
    dormant: Arm,
    seeded: Arm,
    x: torch.Tensor,
    dev: torch.device,
    plain_ms: float,
    seeded_ms: float,
    calls: int = 2000,
) -> list[dict[str, Any]]:
    """Costs too small to see in a step-time ratio, measured directly (``on_step``: best of 5
    blocks; a slot's pass-through: the median of 31 alternating pairs of blocks, wrapped vs
    bare; the barrier digest: median of 21 votes)."""
    rt = dormant.rt
    assert rt is not None
    dormant.enter()
    idle = best(lambda: [rt.on_step(10**9 + 1) for _ in range(calls)]) / calls  # type: ignore[func-returns-value]
    # a dormant slot's forward and backward: a wrapped identity vs the bare identity
    bare_mod = nn.Identity()
    wrapped = SlottedModule(nn.Identity(), SeedSlot("bench.s0")).to(dev)
    h = torch.zeros(x.shape[0], 8, device=dev, requires_grad=True)
    block = calls // 10
    extra = paired_extra(
        lambda: [bare_mod(h).sum().backward() for _ in range(block)],  # type: ignore[func-returns-value]
        lambda: [wrapped(h).sum().backward() for _ in range(block)],  # type: ignore[func-returns-value]
    )
    per_slot = max(0.0, extra / block) + idle / max(1, len(rt.slots))
    on_thread, whole = _barrier_costs(seeded, dev)
    return [
        figure("execution.on_step_idle", 1e6 * idle, 1e3 * plain_ms, unit="us"),
        figure("execution.dormant_slot", 1e6 * per_slot, 1e3 * plain_ms, unit="us"),
        figure("execution.digest", 1e3 * on_thread, seeded_ms),
        figure("execution.digest_hash", 1e3 * whole, seeded_ms),
    ]


def _barrier_costs(seeded: Arm, dev: torch.device, repeats: int = 21) -> tuple[float, float]:
    """Seconds of a barrier vote: on the training thread (what ``on_step`` runs at a barrier
    step: the sampled gradient digest, then the vote cast, which snapshots and queues the hash),
    and until the vote is in the outbox. Each vote is waited for before the next."""
    rt = seeded.rt
    assert rt is not None
    step = 1000 * (seeded.step // 1000 + 1)  # a barrier step (barrier_frequency 1000)

    def vote() -> None:
        rt.votes.cast(rt, step, ranks.grad_digest(rt.slots, step))
        sync(dev)

    def settle() -> None:
        rt.wait_votes(60)
        rt.drain_outbox()

    def vote_until_queued() -> None:
        vote()
        rt.wait_votes(60)

    on_thread = median_time(vote, repeats, settle)
    whole = median_time(vote_until_queued, repeats, rt.drain_outbox)
    return on_thread, whole


def run_sizes(
    device: str | None = None,
    *,
    sizes: tuple[str, ...] = ("small", "large"),
    rounds: int | None = None,
    steps: int | None = None,
    bridge: Bridge | dict[str, Bridge] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_execution_bench` at each preset size (``steps`` overrides the preset's block
    length, ``rounds`` its number of quads, :data:`ROUNDS`); every figure is tagged with its
    size."""
    out = []
    for size in sizes:
        preset = dict(SIZES[size], **({"steps": steps} if steps else {}))
        quads = ROUNDS[size] if rounds is None else rounds
        figures = run_execution_bench(device, rounds=quads, bridge=bridge, **preset)
        for f in figures:
            f["size"] = size
        out += figures
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the figures as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per block")
    parser.add_argument(
        "--rounds", type=int, default=None, help="ABBA quads per comparison (default: per size)"
    )
    parser.add_argument(
        "--bus", default=None, help="also measure with all actors on this bus (e.g. fakeredis://)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), action="append", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(Exception):
        torch.set_num_threads(min(2, torch.get_num_threads()))
    bridge = bus_bridges(args.bus) if args.bus else None
    sizes = tuple(args.size or SIZES)
    figures = run_sizes(
        args.device, sizes=sizes, rounds=args.rounds, steps=args.steps, bridge=bridge
    )
    for fig in figures:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
