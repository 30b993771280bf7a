"""The fossil merge benchmark runs end to end (CI size) and returns well-formed figures."""

from __future__ import annotations

from benchmarks.merge_bench import run_merge_bench


def test_merge_bench_figures_are_well_formed() -> None:
    """Every figure has bench/value/unit/baseline/ratio with ratio = value / baseline, and the
    merged and unmerged outputs agree to float precision."""
    figures = run_merge_bench("cpu", hidden=16, d_in=8, batch=8, steps=1, rounds=2)
    names = [f["bench"] for f in figures]
    for bp in ("width", "lowrank"):
        for label in ("train_step", "train_step_unmerged", "forward", "forward_unmerged"):
            assert f"merge.{bp}.{label}" in names
        (diff,) = [f for f in figures if f["bench"] == f"merge.{bp}.max_abs_diff"]
        assert 0 <= diff["value"] <= 1e-5 * max(1.0, diff["baseline"]) and diff["baseline"] > 0
    for f in figures:
        assert f["value"] >= 0 and f["baseline"] > 0
        assert abs(f["ratio"] - f["value"] / f["baseline"]) < 1e-12
