"""The envelope benchmark measures v2, v1 and the bare baseline side by side (structure only)."""

from __future__ import annotations

from benchmarks.envelope_bench import run_envelope_bench


def test_envelope_bench_reports_v2_beside_v1_and_the_baseline() -> None:
    """Six figures: v2 and v1 against bare hmac+msgpack, and v2 against v1, ratios consistent."""
    figures = {f["bench"]: f for f in run_envelope_bench(n=200)}
    assert sorted(figures) == [
        "envelope.sign_encode",
        "envelope.v1.sign_encode",
        "envelope.v1.verify_decode",
        "envelope.v2_vs_v1.sign_encode",
        "envelope.v2_vs_v1.verify_decode",
        "envelope.verify_decode",
    ]
    for op in ("sign_encode", "verify_decode"):
        v2, v1, both = (figures[f"envelope.{op}"], figures[f"envelope.v1.{op}"],
                        figures[f"envelope.v2_vs_v1.{op}"])  # fmt: skip
        assert v2["baseline"] == v1["baseline"] > 0  # one baseline, measured once, for both
        assert (both["value"], both["baseline"]) == (v2["value"], v1["value"])
    assert (
        figures["envelope.verify_decode"]["frame_bytes"]
        > figures["envelope.v1.verify_decode"]["frame_bytes"]
    )  # v2 frames carry run and destination
