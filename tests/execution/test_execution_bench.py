"""The execution benchmark runs end to end and returns well-formed figures."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from actors.execution import ExecutionRuntime
from benchmarks.execution_bench import run_execution_bench
from benchmarks.execution_bridge import bus_bridge_for


@contextmanager
def _draining_bridge(rt: ExecutionRuntime) -> Iterator[None]:
    stop = threading.Event()

    def flush() -> None:
        while not stop.is_set():
            rt.drain_outbox()
            stop.wait(0.001)

    t = threading.Thread(target=flush)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def test_bench_figures_are_well_formed() -> None:
    """Every figure has bench/value/unit/baseline/ratio, ratio = value / baseline."""
    figures = run_execution_bench(
        "cpu", steps=2, rounds=2, warm=1, width=16, batch=8, bridge=_draining_bridge
    )
    names = [f["bench"] for f in figures]
    assert names == [
        "execution.dormant_step",
        "execution.noise_floor",
        "execution.training_step",
        "execution.probe_cost",
        "execution.bus_step",
        "execution.on_step_idle",
        "execution.dormant_slot",
        "execution.digest",
        "execution.digest_hash",
    ]
    for f in figures:
        assert f["unit"] in ("ms/step", "us") and f["baseline"] > 0
        assert f["value"] > 0 if f["unit"] == "ms/step" else f["value"] >= 0
        assert abs(f["ratio"] - f["value"] / f["baseline"]) < 1e-3 * f["ratio"] + 1e-3


def test_paired_ratio_cancels_a_load_change_and_ignores_one_spike() -> None:
    """Step-time ratios pair each arm's quad mean with the baseline's of the same quad (median);
    the CPU-time ratio is paired the same way."""
    from benchmarks.execution_timing import paired

    base = [0.010, 0.020, 0.010, 0.010, 0.040]  # the machine slows down 2x and 4x in two quads
    arm = [0.011, 0.022, 0.500, 0.011, 0.044]  # 10 % slower in every quad but one spike
    fig = paired("x", [(a, 2 * a) for a in arm], [(b, 2 * b) for b in base])
    assert fig["ratio"] == 1.1 and fig["cpu_ratio"] == 1.1
    assert fig["baseline"] == 10.0  # ms: the median baseline block
    assert fig["value"] == 11.0
    assert (fig["ratio_q1"], fig["ratio_q3"], fig["pairs"]) == (1.1, 1.1, 5)


def test_a_quad_times_both_arms_in_abba_order_on_one_model() -> None:
    """Quads alternate A B B A and B A A B; the plain arm runs the very model the dormant arm
    runs, its slot wrappers detached, and the dormant arm calls the runtime every step."""
    import torch

    from actors.execution import SlottedModule
    from benchmarks.execution_bench import _arms, _host
    from benchmarks.execution_timing import Quads

    torch.manual_seed(0)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    arms = _arms(_host(16, 64, 10), x, y, torch.device("cpu"), 4)
    plain, dormant = arms["plain"], arms["dormant"]
    assert plain.model is dormant.model and plain.opt is dormant.opt
    seen: list[tuple[str, bool]] = []
    for name, arm in (("plain", plain), ("dormant", dormant)):
        real = arm.run

        def run(x: torch.Tensor, y: torch.Tensor, n: int, name: str = name, real=real) -> None:  # type: ignore[no-untyped-def]
            wrapped = any(isinstance(m, SlottedModule) for m in plain.model.modules())
            seen.append((name, wrapped))
            real(x, y, n)

        arm.run = run  # type: ignore[method-assign]
    quads = Quads(x, y, steps=2, warm=1, dev=torch.device("cpu"))
    into: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    quads.quad(plain, dormant, into)
    quads.quad(plain, dormant, into)
    order = [name for name, _ in seen[::2]]  # each block: its warm-up, then its timed steps
    assert order == ["plain", "dormant", "dormant", "plain", "dormant", "plain", "plain", "dormant"]
    assert all(wrapped == (name == "dormant") for name, wrapped in seen)
    assert len(into["a"]) == len(into["b"]) == 2
    assert dormant.rt is not None and dormant.rt.step == dormant.step - 1 == 4 * 3 - 1


@pytest.mark.timeout(20)
def test_a_bridge_that_cannot_start_says_why_at_once() -> None:
    """A bus bridge whose thread fails (a bus it cannot open) raises in the timing thread with
    the reason, instead of leaving it to wait 30 s and time blocks without a bridge."""
    with (
        pytest.raises(RuntimeError, match="did not start: unsupported bus url"),
        bus_bridge_for(object(), "bogus://"),
    ):
        pass


@pytest.mark.timeout(20)
def test_a_bridge_that_fails_while_blocks_are_timed_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bus bridge that started, then failed while the timing thread measured, raises its
    reason when the blocks end: their traffic figure would be one without traffic."""
    import contextlib

    import scenarios.cluster

    @contextlib.asynccontextmanager
    async def breaking(*_: object, **__: object) -> AsyncIterator[None]:
        yield
        raise ConnectionError("the bridge's actors lost their bus")

    monkeypatch.setattr(scenarios.cluster, "running_cluster", breaking)
    with (
        pytest.raises(RuntimeError, match="failed: the bridge's actors lost their bus"),
        bus_bridge_for(type("Rt", (), {"slots": {}})(), "memory://"),
    ):
        pass
