"""The structured pruning benchmark at CI size: masks chosen by the exported importance cost less
accuracy than random masks of the same size, and the overhead arms report their ratios."""

from __future__ import annotations

import statistics

from benchmarks.pruning import accuracy_rows, overhead_all, summarise


def test_importance_masks_beat_random_masks_at_half_the_hidden_units() -> None:
    """Spirals host (the demo's task), 5 seeds, half its hidden units masked one-shot: the least
    important units by the exported report cost less test accuracy than random units (mean)."""
    rows = [r for seed in range(5) for r in accuracy_rows("spirals", seed, 300, (0.5,), draws=6)]
    (row,) = summarise(rows)
    assert row["pruned"] == 8 and row["units"] == 16 and row["seeds"] == 5
    assert row["importance"] > row["random"], row
    assert row["dense"] > statistics.fmean(r["importance"] for r in rows)  # masking costs something


def test_overhead_reports_every_arm_against_the_plain_forward() -> None:
    """Each model, measure and arm has a median and a ratio to the plain arm of the same run."""
    costs = overhead_all(rounds=1, reps=1, scale=16)
    names = {c["bench"] for c in costs}
    for model in ("wide_mlp", "digits_host"):
        for what in ("forward", "train_step"):
            assert {f"pruning.{model}.{what}.{a}" for a in ("plain", "masked", "tracked")} <= names
    assert all(c["value"] > 0 and c["ratio"] > 0 and c["unit"] == "s" for c in costs)
    assert all(c["ratio"] == 1.0 for c in costs if c["bench"].endswith(".plain"))
