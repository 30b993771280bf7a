"""The growth benchmark's statistics: the gap recovered, its bootstrap interval over seeds, and
the per-seed record that the summary row is computed from."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.growth import gap_interval, gap_recovered, per_seed_markdown, run_task


def test_gap_recovered_is_the_ratio_of_mean_differences() -> None:
    """(mean grown - mean host) / (mean big - mean host), on the means over seeds; None when
    the big arm is not above the host (no gap to recover)."""
    host, grown, big = [90.0, 92.0], [94.0, 93.0], [96.0, 96.0]
    assert gap_recovered(host, grown, big) == pytest.approx((93.5 - 91.0) / (96.0 - 91.0))
    assert gap_recovered(host, grown, [91.0, 91.0]) is None
    assert gap_recovered(host, grown, [89.0, 90.0]) is None


def test_gap_interval_brackets_the_estimate_and_widens_with_spread() -> None:
    """The bootstrap interval contains the point estimate; seeds that agree give a point
    interval; more spread between seeds gives a wider interval; one seed gives none."""
    host, big = [90.0, 91.0, 89.0, 92.0, 90.0], [96.0, 97.0, 95.0, 96.0, 96.0]
    steady = [h + 0.5 * (b - h) for h, b in zip(host, big, strict=True)]
    point = gap_interval(host, steady, big)
    assert point is not None and point["lo"] == point["hi"] == pytest.approx(0.5)
    noisy = [s + d for s, d in zip(steady, [2.0, -2.0, 1.5, -1.0, 0.0], strict=True)]
    ci = gap_interval(host, noisy, big)
    est = gap_recovered(host, noisy, big)
    assert ci is not None and est is not None
    assert ci["lo"] < est < ci["hi"] and ci["level"] == 0.9 and ci["left_out"] == 0
    assert gap_interval(host[:1], noisy[:1], big[:1]) is None
    assert gap_interval(host, noisy, big) == ci  # a fixed resampling stream: reproducible


def test_run_task_summary_is_computed_from_its_per_seed_rows() -> None:
    """A CI-sized run (spirals, 2 seeds, 300 steps): each arm's mean and the gap recovered are
    those of the per-seed rows, every row records the gate's validation accuracies, and the
    per-seed table has one line per seed."""
    out = run_task("spirals", seeds=2, steps=300)
    rows = out["per_seed"]
    assert [r["seed"] for r in rows] == [0, 1]
    for arm in ("host", "grown", "big", "abrupt", "fair_abrupt"):
        assert out[arm]["mean"] == pytest.approx(statistics.fmean(r[arm] for r in rows), abs=0.01)
    rec = gap_recovered(*([r[a] for r in rows] for a in ("host", "grown", "big")))
    assert rec is not None and out["gap_recovered"] == pytest.approx(rec, abs=1e-3)
    assert all(0.0 <= r["gate_on"] <= 100.0 and 0.0 <= r["gate_off"] <= 100.0 for r in rows)
    assert out["fossilized"] == sum(r["fossilized"] for r in rows)
    table = per_seed_markdown([out]).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| spirals | 0 |")
