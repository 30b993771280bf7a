"""Envelope benchmark: sign+encode and verify+decode per message, v2 beside v1 and bare hmac+msgpack.

Run: ``python -m benchmarks.envelope_bench`` (JSON lines) or through ``kasmina bench``.

Three arms per operation, measured in one run, interleaved round by round (each arm warm, the best
round kept): the envelope v2 of ``contracts.envelope``, the v1 envelope it replaced
(:mod:`benchmarks.envelope_v1`, kept only for this comparison), and the bare baseline (one HMAC and
one msgpack call). Figures: each envelope version against the baseline, and v2 against v1.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable

import msgpack

from benchmarks import envelope_v1
from contracts import REGISTRY, KeyRing, Signer, Verifier, streams
from leyline import pb

ROUNDS = 7


def _body(target: int = 280) -> pb.StepReport:
    report = pb.StepReport(rank=0, step=12345, loss=0.25, val_loss=0.3, val_accuracy=0.9)
    i = 0
    while report.ByteSize() < target:
        slot = report.slots.add(slot=f"layer{i}.s0", stage=pb.SEED_STAGE_TRAINING, alpha=0.5)
        slot.metrics["grad_norm_max"] = 1.5
        i += 1
    return report


def _interleaved(arms: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    """Best seconds per call of each arm over ``ROUNDS`` rounds, the arms alternating each round."""
    best = dict.fromkeys(arms, float("inf"))
    for fn in arms.values():  # warm every arm first
        for _ in range(min(n, 1000)):
            fn()
    for _ in range(ROUNDS):
        for name, fn in arms.items():
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return best


def _figure(name: str, value: float, baseline: float, **extra: object) -> dict[str, object]:
    return {
        "bench": name,
        "value": round(value * 1e6, 3),
        "unit": "us/msg",
        "baseline": round(baseline * 1e6, 3),
        "ratio": round(value / baseline, 3),
        **extra,
    }


def run_envelope_bench(n: int = 20_000) -> list[dict[str, object]]:
    """The figures: v2 and v1 sign+encode and verify+decode (µs/message) with their baselines."""
    ring = KeyRing.generate()
    signer = Signer(ring, "bench")
    verifier = Verifier(ring, tolerance_s=3600)  # the frames are signed once, verified for minutes
    stream = streams.inbox("bench", "seed", "layer1.s0")
    raw = _body().SerializeToString()
    frame = signer.seal("step.report", raw, stream=stream)
    v1_signer, v1_verifier = (
        envelope_v1.Signer(ring, "bench"),
        envelope_v1.Verifier(ring, tolerance_s=3600),
    )
    v1_frame = v1_signer.seal("step.report", raw)
    secret = ring.active.secret

    def baseline_sign() -> object:
        mac = hmac.digest(secret, raw, "sha256")
        return msgpack.packb([raw, mac], use_bin_type=True)

    baseline_frame = baseline_sign()

    def baseline_verify() -> object:
        items = msgpack.unpackb(baseline_frame, raw=False)
        return hmac.compare_digest(hmac.digest(secret, items[0], "sha256"), items[1])

    def v2_sign() -> object:
        return signer.seal("step.report", raw, stream=stream)

    def v1_sign() -> object:
        return v1_signer.seal("step.report", raw)

    def v2_verify() -> object:
        env = verifier.open(frame, stream=stream)
        return REGISTRY.parse(env.kind, env.body)

    def v1_verify() -> object:
        env = v1_verifier.open(v1_frame)
        return REGISTRY.parse(env.kind, env.body)

    sign = _interleaved({"v2": v2_sign, "v1": v1_sign, "base": baseline_sign}, n)
    verify = _interleaved({"v2": v2_verify, "v1": v1_verify, "base": baseline_verify}, n)
    v2 = {"body_bytes": len(raw), "frame_bytes": len(frame)}
    v1 = {"body_bytes": len(raw), "frame_bytes": len(v1_frame)}
    return [
        _figure("envelope.sign_encode", sign["v2"], sign["base"], **v2),
        _figure("envelope.verify_decode", verify["v2"], verify["base"], **v2),
        _figure("envelope.v1.sign_encode", sign["v1"], sign["base"], **v1),
        _figure("envelope.v1.verify_decode", verify["v1"], verify["base"], **v1),
        _figure("envelope.v2_vs_v1.sign_encode", sign["v2"], sign["v1"], baseline_is="v1"),
        _figure("envelope.v2_vs_v1.verify_decode", verify["v2"], verify["v1"], baseline_is="v1"),
    ]


if __name__ == "__main__":
    for figure in run_envelope_bench():
        print(json.dumps(figure))
