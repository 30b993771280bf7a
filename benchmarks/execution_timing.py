"""How the execution benchmark times its arms: one model object for the plain host and the host
with dormant slots (the slot wrappers attached to or detached from it between blocks), ABBA
quads of short blocks each after an untimed warm-up, and ratios paired within a quad.

Why: a second copy of the plain host sharing its weights ran 1 to 5 % slower than the first in
a rotation of four arms, with the pairs' quartiles on one side of 1. Two things differ between
such arms that a ratio should not see: the objects and memory each touches, and the position in
the rotation (the arm after the seeded arm, the arm after the probe). Here the plain and dormant
arms are the same modules, tensors and optimizer; a quad A B B A (or B A A B, alternating)
cancels a drift that is linear over the quad and gives each arm every position equally."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actors.execution import ExecutionRuntime, SlottedModule

Scope = Callable[[], AbstractContextManager[Any]]


class Wiring:
    """The slot wrappers of a model: attach them (the dormant host) or detach them, putting the
    wrapped modules themselves back (the plain host); the same parameters either way."""

    def __init__(self, model: nn.Module) -> None:
        self.places: list[tuple[nn.Module, str, SlottedModule]] = []
        for parent in model.modules():
            for name, child in parent.named_children():
                if isinstance(child, SlottedModule):
                    self.places.append((parent, name, child))

    def attach(self) -> None:
        """Put every slot wrapper in its place."""
        for parent, name, wrapper in self.places:
            setattr(parent, name, wrapper)

    def detach(self) -> None:
        """Put every wrapped module back in the wrapper's place."""
        for parent, name, wrapper in self.places:
            setattr(parent, name, wrapper.host)


class Arm:
    """One configuration: a model, its host optimizer, optionally a runtime called every step;
    ``wiring`` (shared with another arm on the same model) attaches the slots for a runtime arm
    and detaches them for a plain one before each block."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        rt: ExecutionRuntime | None = None,
        wiring: Wiring | None = None,
    ) -> None:
        self.model, self.opt, self.rt, self.wiring = model, opt, rt, wiring
        self.step = 0
        self.drains = True  # False while an ExecutionActor publishes the outbox instead

    def enter(self) -> None:
        """Make the shared model this arm's configuration."""
        if self.wiring is not None:
            (self.wiring.attach if self.rt is not None else self.wiring.detach)()

    def run(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        """``n`` training steps of the user's loop (and one ``on_step`` each with a runtime)."""
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            self.opt.step()
            if self.rt is not None:
                self.rt.on_step(self.step, loss)
                if self.drains:
                    self.rt.drain_outbox()
            self.step += 1


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (cuda); nothing on cpu."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    arm: Arm, x: torch.Tensor, y: torch.Tensor, n: int, dev: torch.device
) -> tuple[float, float]:
    """Seconds per step of ``n`` steps: (wall clock, this process's CPU time)."""
    sync(dev)
    w0, c0 = time.perf_counter(), time.process_time()
    arm.run(x, y, n)
    sync(dev)
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


class Quads:
    """Blocks of ``steps`` steps, each after ``warm`` untimed steps in the same configuration,
    in quads A B B A / B A A B (alternating); per quad the mean block of each arm, wall and CPU."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int, warm: int, dev: torch.device):
        self.x, self.y, self.steps, self.warm, self.dev = x, y, steps, warm, dev
        self.quads = 0

    def block(self, arm: Arm, scope: Scope = _nothing) -> tuple[float, float]:
        """One timed block of ``arm`` (inside ``scope``, e.g. a bus bridge running)."""
        arm.enter()
        with scope():
            arm.run(self.x, self.y, self.warm)
            return timed(arm, self.x, self.y, self.steps, self.dev)

    def quad(
        self,
        a: Arm,
        b: Arm,
        into: dict[str, list[tuple[float, float]]],
        scopes: tuple[Scope, Scope] = (_nothing, _nothing),
    ) -> None:
        """One quad of ``a`` (key ``"a"``) and ``b`` (key ``"b"``); appends each arm's mean."""
        order = "abba" if self.quads % 2 == 0 else "baab"
        self.quads += 1
        got: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
        for k in order:
            got[k].append(self.block(a if k == "a" else b, scopes[0] if k == "a" else scopes[1]))
        for k, blocks in got.items():
            into[k].append(
                (statistics.fmean(w for w, _ in blocks), statistics.fmean(c for _, c in blocks))
            )


def paired(
    bench: str, arm: list[tuple[float, float]], base: list[tuple[float, float]]
) -> dict[str, Any]:
    """A step-time figure from blocks paired in time (one pair per quad): the ratio is the
    median over pairs of the arm's wall time over the baseline's (a load change that spans a
    quad cancels out; a spike moves one pair, not the median); the value is the baseline's
    median step times that ratio. ``ratio_q1``/``ratio_q3`` give the pairs' spread and
    ``cpu_ratio`` the same median on this process's CPU time."""
    pairs = sorted(a[0] / b[0] for a, b in zip(arm, base, strict=True))
    baseline = 1e3 * statistics.median(b[0] for b in base)
    ratio = statistics.median(pairs)
    fig = figure(bench, baseline * ratio, baseline)
    fig["ratio_q1"], fig["ratio_q3"] = (round(q, 4) for q in quartiles(pairs))
    fig["pairs"] = len(pairs)
    cpu = [a[1] / b[1] for a, b in zip(arm, base, strict=True) if b[1] > 0]
    fig["cpu_ratio"] = round(statistics.median(cpu), 4) if cpu else float("nan")
    return fig


def figure(bench: str, value: float, baseline: float, unit: str = "ms/step") -> dict[str, Any]:
    """One figure: value, unit, baseline and their ratio."""
    return {
        "bench": bench,
        "value": round(value, 6),
        "unit": unit,
        "baseline": round(baseline, 6),
        "ratio": round(value / baseline, 4) if baseline else float("nan"),
    }


def quartiles(xs: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the value itself for one)."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def median_time(
    fn: Callable[[], object], repeats: int, between: Callable[[], object] = lambda: None
) -> float:
    """The median wall time of ``repeats`` calls of ``fn``, ``between`` run untimed after each."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        between()
    return statistics.median(times)


def best(fn: Callable[[], object], blocks: int = 5) -> float:
    """The best wall time of ``blocks`` calls of ``fn``."""
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def paired_extra(
    base: Callable[[], object], extra: Callable[[], object], rounds: int = 31
) -> float:
    """What ``extra`` costs beyond ``base`` (wall time of one call each): the median over
    ``rounds`` of back-to-back pairs, the order alternating, so a load change spans both halves
    of a pair."""
    diffs = []
    for i in range(rounds):
        first, second = (base, extra) if i % 2 == 0 else (extra, base)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        a, b = (t1 - t0, t2 - t1) if i % 2 == 0 else (t2 - t1, t1 - t0)
        diffs.append(b - a)
    return statistics.median(diffs)
