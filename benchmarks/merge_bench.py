"""Fossil merge benchmark: the step time of a merged fossil vs the plain host of the final size.

For each mergeable blueprint (``width`` on a ``Linear-ReLU-Linear`` block, ``lowrank`` after it)
three models are built from the same host (``block -> ReLU -> head``, the slot on the block):

- ``fossil``: the seed fossilized without merging (``h + seed(x)`` on every forward, its
  parameters in the host optimizer);
- ``merged``: the same seed folded into the block's weights (``RuntimeConfig.fossil_merge``);
- ``plain``: a host of the final size without slots or runtime (the block ``hidden + units``
  wide for ``width``; the same size for ``lowrank``).

Figures (one JSON object per line with ``bench``, ``value``, ``unit``, ``baseline``, ``ratio``;
the baseline is the plain host, measured in the same run, the arms warm and interleaved, the
median of ``rounds`` rounds of ``steps`` steps):

- ``merge.<blueprint>.train_step``: a training step (forward, backward, SGD step) of the merged
  model vs the plain host (target ratio ~1);
- ``merge.<blueprint>.train_step_unmerged``: the same for the unmerged fossil;
- ``merge.<blueprint>.forward``: a no-grad forward of the merged model vs the plain host;
- ``merge.<blueprint>.forward_unmerged``: the same for the unmerged fossil;
- ``merge.<blueprint>.max_abs_diff``: the largest |merged - unmerged| output on the batch, with
  the largest |output| as the baseline.

Run: ``python benchmarks/merge_bench.py [--device cuda] [--hidden N] [--steps N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
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
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from leyline import pb


def _net(d_in: int, hidden: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden)),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def _order(stage: int, at: int, **kw: Any) -> pb.ExecutionOrder:
    value = pb.SeedLifecycleStage.ValueType(stage)
    return pb.ExecutionOrder(
        order_id=f"s-{stage}-{at}", slot="s", stage=value, apply_at_step=at, **kw
    )


def _fossil(
    blueprint: str, params: dict[str, float], merge: bool, dims: tuple[int, int, int], x: Tensor
) -> nn.Module:
    """A host whose slot holds a fossil of ``blueprint`` (merged or not), output side random."""
    model = _net(*dims).to(x.device)
    slots = insert_slots(model, {"s": "0"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.01)
    config = RuntimeConfig(
        device=x.device,
        probe_every=0,
        report_every=0,
        barrier_frequency=0,
        fossil_merge=merge,
    )
    rt = ExecutionRuntime(model, slots, opt, config, probe_batch=x)
    germ = pb.Germinate(blueprint=blueprint, params=params)
    rt.submit(_order(pb.SEED_STAGE_GERMINATED, 0, germinate=germ))
    rt.submit(_order(pb.SEED_STAGE_FOSSILIZED, 1))
    rt.on_step(0)
    seed = slots["s"].seed
    assert seed is not None
    with torch.no_grad():
        torch.manual_seed(1)
        for p in seed.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rt.on_step(1)
    acks = [m for k, m in rt.drain_outbox() if k == "exec.ack"]
    assert all(a.ok for a in acks), acks
    model.bench_opt = torch.optim.SGD(model.parameters(), lr=0.01)  # type: ignore[assignment]
    return model


def _plain(dims: tuple[int, int, int], units: int, device: torch.device) -> nn.Module:
    d_in, hidden, classes = dims
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(
            nn.Linear(d_in, hidden + units), nn.ReLU(), nn.Linear(hidden + units, hidden)
        ),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    ).to(device)
    model.bench_opt = torch.optim.SGD(model.parameters(), lr=0.01)  # type: ignore[assignment]
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer(model: nn.Module, x: Tensor, y: Tensor, train: bool) -> Callable[[int], float]:
    opt: torch.optim.Optimizer = model.bench_opt  # type: ignore[assignment]

    def step() -> None:
        if train:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
        else:
            with torch.no_grad():
                model(x)

    def run(steps: int) -> float:
        step()  # warm
        _sync(x.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(x.device)
        return (time.perf_counter() - t0) / steps

    return run


def _figure(name: str, value: float, baseline: float, unit: str, **extra: Any) -> dict[str, Any]:
    ratio = value / baseline if baseline > 0 else float("inf")
    return {
        "bench": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        **extra,
    }


def _bench_one(
    blueprint: str,
    params: dict[str, float],
    units: int,
    dims: tuple[int, int, int],
    data: tuple[Tensor, Tensor],
    steps: int,
    rounds: int,
) -> list[dict[str, Any]]:
    x, y = data
    arms = {
        "fossil": _fossil(blueprint, params, False, dims, x),
        "merged": _fossil(blueprint, params, True, dims, x),
        "plain": _plain(dims, units, x.device),
    }
    with torch.no_grad():
        diff = float((arms["merged"](x) - arms["fossil"](x)).abs().max())
        scale = float(arms["fossil"](x).abs().max())
    out = []
    for train, label in ((True, "train_step"), (False, "forward")):
        timers = {k: _timer(m, x, y, train) for k, m in arms.items()}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(rounds):
            for k, t in timers.items():  # interleaved, each warm
                times[k].append(t(steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        for arm, suffix in (("merged", ""), ("fossil", "_unmerged")):
            paired = statistics.median(
                a / b for a, b in zip(times[arm], times["plain"], strict=True)
            )
            fig = _figure(f"merge.{blueprint}.{label}{suffix}", med[arm], med["plain"], "s")
            fig["paired_ratio"] = paired  # median of the per-round ratios (load drift cancels)
            out.append(fig)
    out.append(_figure(f"merge.{blueprint}.max_abs_diff", diff, scale, "abs"))
    return out


def run_merge_bench(
    device: str = "cpu",
    *,
    hidden: int = 1024,
    d_in: int = 256,
    classes: int = 10,
    batch: int = 256,
    steps: int = 20,
    rounds: int = 7,
) -> list[dict[str, Any]]:
    """Every figure of the module docstring, for ``width`` and ``lowrank``."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=g).to(dev)
    y = torch.randint(0, classes, (batch,), generator=g).to(dev)
    dims = (d_in, hidden, classes)
    units, rank = max(1, hidden // 4), max(1, hidden // 16)
    figures = _bench_one("width", {"hidden": units}, units, dims, (x, y), steps, rounds)
    figures += _bench_one("lowrank", {"rank": rank}, 0, dims, (x, y), steps, rounds)
    for f in figures:
        f.update(hidden=hidden, batch=batch, device=str(dev))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (cpu)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for f in run_merge_bench(
        args.device, hidden=args.hidden, batch=args.batch, steps=args.steps, rounds=args.rounds
    ):
        print(json.dumps(f))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
