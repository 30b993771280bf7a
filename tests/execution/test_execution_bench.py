"""The execution benchmark runs end to end and returns well-formed figures."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from actors.execution import ExecutionRuntime
from benchmarks.execution_bench import run_execution_bench


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
        "cpu", steps=2, rounds=1, width=16, batch=8, bridge=_draining_bridge
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
    ]
    for f in figures:
        assert f["unit"] in ("ms/step", "us") and f["baseline"] > 0
        assert f["value"] > 0 if f["unit"] == "ms/step" else f["value"] >= 0
        assert abs(f["ratio"] - f["value"] / f["baseline"]) < 1e-3 * f["ratio"] + 1e-3


def test_paired_ratio_cancels_a_load_change_and_ignores_one_spike() -> None:
    """Step-time ratios pair each arm block with the baseline block of its round (median)."""
    from benchmarks.execution_bench import _paired

    base = [0.010, 0.020, 0.010, 0.010, 0.040]  # the machine slows down 2x and 4x in two rounds
    arm = [0.011, 0.022, 0.500, 0.011, 0.044]  # 10 % slower in every round but one spike
    fig = _paired("x", arm, base)
    assert fig["ratio"] == 1.1
    assert fig["baseline"] == 10.0  # ms: the median baseline block
    assert fig["value"] == 11.0
    assert (fig["ratio_q1"], fig["ratio_q3"], fig["pairs"]) == (1.1, 1.1, 5)
