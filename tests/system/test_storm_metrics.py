"""Rejection storms reach the SafetyActor; the TelemetryActor serves Prometheus text on request."""

from __future__ import annotations

import urllib.request
import uuid

import anyio

from actors.logic import TelemetryLogic
from actors.shell import FRAME
from bus import open_bus
from contracts import KasminaConfig, streams
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime


async def test_a_rejection_storm_raises_a_run_wide_safety_strike() -> None:
    """More than reject_storm_count rejections inside the window become one REJECT_STORM signal."""
    bus = open_bus(f"memory://{uuid.uuid4().hex}")
    config = KasminaConfig.load(
        env={}, overrides={"safety.reject_storm_count": 5, "barrier.frequency": 5}
    )
    sim = SimRuntime(["a"], report_every=5, barrier_frequency=5)
    async with running_cluster(bus, run="storm", slots=["a"], runtimes=[sim], config=config) as cl:
        for _ in range(8):
            await bus.publish(streams.inbox("storm", "seed", "a"), {FRAME: b"garbage"})
        await cl.settle()
        verdicts = [m for _, k, m in await cl.events() if k == "safety.verdict" and not m.slot]
        assert len(verdicts) == 1
        assert verdicts[0].action == pb.VERDICT_STRIKE and "REJECT_STORM" in verdicts[0].reason
    await bus.close()


def test_prometheus_endpoint_serves_the_latest_summary() -> None:
    """GET /metrics returns the aggregator's counters and the latest global summary's gauges."""
    config = KasminaConfig.load(
        env={}, overrides={"telemetry.region_ratio": 32, "telemetry.global_ratio": 2}
    )
    logic = TelemetryLogic(config)
    port = logic.serve_metrics(0)
    try:
        for step in range(200):
            logic.aggregator.ingest(
                pb.TelemetryRaw(slot="a", region="r", step=step, metrics={"loss": 1.0}), 0.0
            )

        def fetch() -> tuple[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.headers["Content-Type"], response.read().decode()

        content_type, body = anyio.run(lambda: anyio.to_thread.run_sync(fetch))
        assert content_type.startswith("text/plain")
        assert 'kasmina_metric_mean{metric="loss"} 1.0' in body
        assert "kasmina_telemetry_raw_in 200.0" in body
    finally:
        logic.close()
