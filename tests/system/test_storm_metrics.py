"""Rejection storms reach the SafetyActor; the TelemetryActor serves Prometheus text on request."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
import uuid

import anyio
import pytest

from actors.assemble import build_shells, live_verifier, services
from actors.logic import TelemetryLogic
from actors.shell import FRAME
from actors.supervisor import Supervisor
from bus import open_bus
from contracts import KasminaConfig, KeyRing, Signer, streams
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


async def test_prometheus_endpoint_serves_the_latest_summary() -> None:
    """GET /metrics returns the aggregator's counters and the latest global summary's gauges."""
    config = KasminaConfig.load(
        env={}, overrides={"telemetry.region_ratio": 32, "telemetry.global_ratio": 2}
    )
    logic = TelemetryLogic(config)
    async with anyio.create_task_group() as tg:
        port = await tg.start(logic.metrics_server(0).serve)
        for step in range(200):
            logic.aggregator.ingest(
                pb.TelemetryRaw(slot="a", region="r", step=step, metrics={"loss": 1.0}), 0.0
            )

        def fetch() -> tuple[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.headers["Content-Type"], response.read().decode()

        content_type, body = await anyio.to_thread.run_sync(fetch)
        assert content_type.startswith("text/plain")
        assert 'kasmina_metric_mean{metric="loss"} 1.0' in body
        assert "kasmina_telemetry_raw_in 200.0" in body
        tg.cancel_scope.cancel()


async def test_the_metrics_server_runs_and_stops_with_the_supervisor() -> None:
    """With a prometheus port set, the supervisor serves /metrics beside the telemetry shell
    (other paths: 404) and closes the port when it stops."""
    run, ring = "metrics", KeyRing.generate()
    bus = open_bus(f"memory://{uuid.uuid4().hex}")
    with socket.socket() as probe:  # a free port to configure
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    config = KasminaConfig.load(env={}, overrides={"telemetry.prometheus_port": free})
    shells = build_shells(bus=bus, run=run, config=config, signer=Signer(ring, "run"),
                          verifier=live_verifier(bus, run, ring, config), actors=["telemetry"])  # fmt: skip
    supervisor = Supervisor(shells, services=services(shells, config))

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{free}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: supervisor.run(handle_signals=False, task_status=task_status)
        )
        assert await anyio.to_thread.run_sync(get, "/metrics") == 200
        assert await anyio.to_thread.run_sync(get, "/other") == 404
        await supervisor.stop()
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", free)
    await bus.close()
