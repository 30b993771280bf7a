"""Envelope benchmark: sign+encode and verify+decode per message against bare hmac + msgpack.

Run: ``python -m benchmarks.envelope_bench`` (JSON lines) or through ``kasmina bench``.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable

import msgpack

from contracts import REGISTRY, KeyRing, Signer, Verifier, streams
from leyline import pb


def _body(target: int = 280) -> pb.StepReport:
    report = pb.StepReport(rank=0, step=12345, loss=0.25, val_loss=0.3, val_accuracy=0.9)
    i = 0
    while report.ByteSize() < target:
        slot = report.slots.add(slot=f"layer{i}.s0", stage=pb.SEED_STAGE_TRAINING, alpha=0.5)
        slot.metrics["grad_norm_max"] = 1.5
        i += 1
    return report


def _per_call(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds per call."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def run_envelope_bench(n: int = 20_000) -> list[dict[str, object]]:
    """Return the figures: sign+encode and verify+decode µs/message with their same-run baselines."""
    ring = KeyRing.generate()
    signer = Signer(ring, "bench")
    verifier = Verifier(ring)
    body = _body()
    raw = body.SerializeToString()
    stream = streams.inbox("bench", "seed", "layer1.s0")
    frame = signer.seal("step.report", raw, stream=stream)
    secret = ring.active.secret

    def baseline_sign() -> object:
        mac = hmac.digest(secret, raw, "sha256")
        return msgpack.packb([raw, mac], use_bin_type=True)

    baseline_frame = baseline_sign()

    def baseline_verify() -> object:
        items = msgpack.unpackb(baseline_frame, raw=False)
        return hmac.compare_digest(hmac.digest(secret, items[0], "sha256"), items[1])

    def sign() -> object:
        return signer.seal("step.report", raw, stream=stream)

    def verify() -> object:
        env = verifier.open(frame, stream=stream)
        return REGISTRY.parse(env.kind, env.body)

    figures = []
    for name, fn, base in (
        ("envelope.sign_encode", sign, baseline_sign),
        ("envelope.verify_decode", verify, baseline_verify),
    ):
        value = _per_call(fn, n) * 1e6
        baseline = _per_call(base, n) * 1e6
        figures.append(
            {
                "bench": name,
                "value": round(value, 3),
                "unit": "us/msg",
                "baseline": round(baseline, 3),
                "ratio": round(value / baseline, 3),
                "body_bytes": len(raw),
                "frame_bytes": len(frame),
            }
        )
    return figures


if __name__ == "__main__":
    for figure in run_envelope_bench():
        print(json.dumps(figure))
