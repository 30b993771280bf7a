"""The hostile catalogue: one attack at a time against a live ``kasmina run`` process on a real Redis.

Each attack gets a fresh actor process (so its peak RSS is the attack's) serving two slots, ``a``
(the target) and ``b`` (a bystander). A legitimate controller sends commands to ``b`` in a loop,
before the attack and after it (the baseline, on both sides) and while it is sent and handled;
the figure is the ratio of the two rates, measured in the same run. After the attack the log is read back: ``state_changed`` is
true if a slot's stage, pause, blueprint or α moved, or a transition was caused by anything but a
legitimate command. Attacks without keys come first, then those of a key holder (a trainer key,
a controller key, a retired key). The attacks themselves are in :mod:`scenarios.chaos.attacks`.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process

from actors.client import CommandTimeout, KasminaClient, Outcome
from actors.eventlog import BadEntry, read_log
from actors.replay import fold_events
from actors.shell import FRAME
from bus import Bus, open_bus
from bus.testing import redis_server
from contracts import KasminaConfig, Key, KeyRing, Signer, Verifier, streams
from leyline import pb
from scenarios.chaos.attacks import ATTACKS, BYSTANDER, TARGET, Attack, Ctx, inject
from scenarios.chaos.plan import ProcessSpec
from scenarios.chaos.procs import ActorProcess, config_toml, rss_kib

__all__ = ["ATTACKS", "Attack", "catalogue"]

BASELINE_S = 3.0
# the legitimate loop's outcome poll: at the client's default (50 ms) a command's time is mostly
# the poll, and whether its outcome is there at the first read swings the rate two-fold
LEGIT_POLL_S = 0.005


def _ready() -> int:
    """Nothing: run once in the attacker's worker process so its imports are done before the
    baseline is measured."""
    return 0


def _rings() -> tuple[KeyRing, dict[str, KeyRing]]:
    """The actors' ring (every key, the actor key signs) and one ring per holder."""
    now = time.time_ns()
    actor = KeyRing.generate(roles={"actor"}).active
    controller = KeyRing.generate(roles={"controller", "operator"}).active
    trainer = KeyRing.generate(roles={"trainer"}).active
    retired = replace(KeyRing.generate().active, expires_ns=now - 10**9)
    keys = [actor, controller, trainer, retired]
    full = KeyRing(keys, actor.id)

    def signing(key: Key) -> KeyRing:
        active = replace(key, expires_ns=None)
        return KeyRing([active, *(k for k in keys if k.id != key.id)], key.id)

    return full, {
        "controller": signing(controller),
        "trainer": signing(trainer),
        "retired": signing(retired),
    }


@dataclass
class _Legit:
    """The legitimate controller's loop: commands to the bystander slot, outcomes awaited."""

    client: KasminaClient
    ids: set[str] = field(default_factory=set)
    done: list[float] = field(default_factory=list)
    slot: str = BYSTANDER
    latencies: list[float] = field(default_factory=list)
    results: Counter[str] = field(default_factory=Counter)

    async def loop(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                outcome = await self.client.command(self.slot, "cull", wait=True, timeout_s=60)
            except CommandTimeout:  # no outcome and no shed run covering it within 60 s
                self.results["no_outcome_60s"] += 1
                continue
            if isinstance(outcome, Outcome):
                self.ids.add(outcome.command_id)
                self.done.append(time.monotonic())
                self.latencies.append(self.done[-1] - sent)
                self.results[outcome.message.reason or outcome.result] += 1

    def probed(self) -> dict[str, Any]:
        """The target probe's figures: commands answered by outcome, latency median and max."""
        lat = sorted(self.latencies)
        return {
            "target_commands": dict(sorted(self.results.items())),
            "target_latency_p50_s": round(lat[len(lat) // 2], 3) if lat else None,
            "target_latency_max_s": round(lat[-1], 3) if lat else None,
        }

    def rate(self, *windows: tuple[float, float]) -> float:
        """Commands answered per second over the ``(start, end)`` windows together."""
        n = sum(1 for t in self.done for a, b in windows if a <= t < b)
        return n / max(1e-9, sum(b - a for a, b in windows))


async def _drained(bus: Bus, run: str, timeout_s: float = 120.0) -> None:
    """Until no inbox of the run has pending or unread entries (or the timeout)."""
    with anyio.move_on_after(timeout_s):
        while True:
            busy = 0
            for name in await bus.streams(streams.prefix(run) + "inbox:*"):
                for g in (await bus.info(name)).groups:
                    busy += g.pending + (g.lag or 0)
            if not busy:
                return
            await anyio.sleep(0.1)


def _slots(state: Any) -> dict[str, tuple[int, bool, str, float]]:
    return {
        slot: (int(s.stage), bool(s.paused), str(getattr(s, "blueprint", "")), float(s.alpha))
        for slot, s in state.seeds.items()
    }


async def _read(
    bus: Bus, run: str, ring: KeyRing, legit: set[str] | None = None
) -> tuple[Any, list[Any], Counter[str], int]:
    """Folded state, transitions, rejections by (signed) reason (the legitimate commands'
    refusals left out), quarantined events."""
    events, transitions, copies = [], [], 0
    async for rec in read_log(bus, streams.events(run), Verifier(ring, replay=True)):
        if isinstance(rec, BadEntry):
            copies += rec.copy is not None  # a copy of a logged event: quarantined, as status says
        else:
            events.append(rec.event)
            if rec.kind == "lifecycle.transition":
                transitions.append(rec.message)
    quarantined: list[dict[str, str]] = []
    state = fold_events(events, quarantine=quarantined)
    reasons: Counter[str] = Counter()
    async for rec in read_log(bus, streams.rejected(run), Verifier(ring, replay=True)):
        if isinstance(rec, BadEntry):
            reasons["unverified_record"] += 1
        elif isinstance(rec.message, pb.Rejection) and rec.message.message_id not in (legit or ()):
            reasons[rec.message.reason_code] += max(1, rec.message.count)
    return state, transitions, reasons, len(quarantined) + copies


def _process(run: str, url: str, base: Path, full: KeyRing) -> ActorProcess:
    """The attacked ``kasmina run`` process (not started), its keys and config written."""
    keys = base / f"{run}-keys.json"
    full.save(keys)
    config = base / f"{run}.toml"
    config.write_text(config_toml({"bus.owner_ttl_s": 5.0}))
    return ActorProcess(
        ProcessSpec(("seed", "gate", "safety", "telemetry", "barrier"), (TARGET, BYSTANDER)),
        url, run, keys, config, base, 0,
    )  # fmt: skip


async def _warm(attack: Attack, proc: ActorProcess, legit: _Legit, ctx: Ctx) -> None:
    """Start the process: both slots bootstrapped, some genuine frames and events to capture (an
    attack done ``before`` is done in between)."""
    proc.start()
    for slot in (TARGET, BYSTANDER, TARGET):
        await legit.client.command(slot, "cull", wait=True, timeout_s=120)
    if attack.before:  # e.g. a doctored log met by the next process's rebuild
        proc.stop()
        await attack.run(ctx)
        proc.start()
        await legit.client.command(BYSTANDER, "cull", wait=True, timeout_s=120)
    for inbox in (ctx.inbox(TARGET), ctx.inbox(BYSTANDER)):
        ctx.captured += [e.fields[FRAME] for e in await ctx.bus.range(inbox) if FRAME in e.fields]


async def _attacked(
    attack: Attack,
    ctx: Ctx,
    legit: _Legit,
    url: str,
    rings: dict[str, KeyRing],
    seed: int,
    probe: _Legit | None = None,
) -> tuple[float, float, float, float]:
    """The legitimate loop for a baseline, then while the attack is sent and handled (with the
    ``probe`` loop on the target slot during the attack), then for a second baseline: the two
    bracket the attack, so a drift of the machine's load weighs on both sides of the ratio. The
    times (start, attack begun, attack over, end)."""
    await anyio.to_process.run_sync(_ready)
    stop, probed = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(legit.loop, stop)
        t0 = time.monotonic()
        await anyio.sleep(BASELINE_S)  # the baseline: the same loop without the attack
        t1 = time.monotonic()
        if probe is not None:
            tg.start_soon(probe.loop, probed)
        if not attack.before:
            ctx.sent = await anyio.to_process.run_sync(
                inject, url, ctx.run, attack.name,
                {h: r.to_json() for h, r in rings.items()}, ctx.captured, seed,
                cancellable=True,
            )  # fmt: skip
        await _drained(ctx.bus, ctx.run)
        t2 = max(time.monotonic(), t1 + BASELINE_S)
        await anyio.sleep(max(0.0, t2 - time.monotonic()))
        probed.set()
        await anyio.sleep(BASELINE_S)  # the second baseline
        t3 = time.monotonic()
        stop.set()
    return t0, t1, t2, t3


async def _one(
    attack: Attack, url: str, base: Path, full: KeyRing, rings: dict[str, KeyRing], seed: int
) -> dict[str, Any]:
    run = f"cat-{attack.name.replace('_', '-')}-{seed}"
    proc = _process(run, url, base, full)
    bus = open_bus(url)
    cfg = KasminaConfig()
    ring = rings["controller"]
    verifier = Verifier(ring, tolerance_s=cfg.security.clock_tolerance_s)
    signer = Signer(ring, "tamiyo")
    legit = _Legit(KasminaClient(bus, run, signer, verifier, poll_s=LEGIT_POLL_S))
    probe = _Legit(legit.client, ids=legit.ids, slot=TARGET) if attack.probe else None
    ctx = Ctx(bus, run, rings, [], random.Random(seed))
    try:
        await _warm(attack, proc, legit, ctx)
        before_state, before_tr, before_rej, _ = await _read(bus, run, full, legit.ids)
        t0, t1, t2, t3 = await _attacked(attack, ctx, legit, url, rings, seed, probe)
        _, peak = rss_kib(proc.proc.pid) if proc.proc is not None else (0, 0)
        after_state, after_tr, after_rej, quarantined = await _read(bus, run, full, legit.ids)
        foreign = await bus.info(streams.inbox("someone-else", "seed", "x"))
        caused = {
            t.command_id for t in after_tr[len(before_tr) :] if t.command_id not in legit.ids
        } - {""}
        changed = (
            _slots(after_state) != _slots(before_state)
            or bool(caused)
            or foreign.length > 0
            or quarantined != attack.expect_quarantine
        )
        baseline, during = legit.rate((t0, t1), (t2, t3)), legit.rate((t1, t2))
        return {
            "attack": attack.name,
            "key_holder": attack.holder,
            "sent": ctx.sent,
            "outcomes": dict(sorted((after_rej - before_rej).items())),
            "quarantined": quarantined,
            "dead_letters": (await bus.info(streams.dead_letter(run))).length,
            "state_changed": changed,
            "legit_per_s_baseline": round(baseline, 1),
            "legit_per_s_attack": round(during, 1),
            "legit_ratio": round(during / baseline, 2) if baseline else None,
            "attack_s": round(t2 - t1, 1),
            "peak_rss_mib": round(max(peak, proc.peak_rss_kib) / 1024, 1),
            "process_alive": proc.alive(),
        } | (probe.probed() if probe is not None else {})
    finally:
        proc.stop()
        await bus.close()


async def catalogue(
    *, seed: int = 5, names: list[str] | None = None, workdir: Path | None = None
) -> list[dict[str, Any]]:
    """Run the attacks of the catalogue (all, or ``names``), one result dict each."""
    chosen = [a for a in ATTACKS if names is None or a.name in names]
    base = workdir or Path(tempfile.mkdtemp(prefix="kasmina-catalogue-"))
    full, rings = _rings()
    out = []
    with redis_server(aof=False) as server:
        for attack in chosen:
            out.append(await _one(attack, server.url, base, full, rings, seed))
    return out


def verdict(
    rows: list[dict[str, Any]], *, min_ratio: float = 0.8, max_rss_mib: float = 300.0
) -> dict[str, Any]:
    """The catalogue's targets: no state changed, legit ratio and peak RSS within bounds."""
    misses = {
        r["attack"]: [
            what
            for what, bad in (
                ("state changed", r["state_changed"]),
                ("process died", not r["process_alive"]),
                (
                    f"legit ratio {r['legit_ratio']} < {min_ratio}",
                    r["legit_ratio"] is not None and r["legit_ratio"] < min_ratio,
                ),
                (
                    f"peak RSS {r['peak_rss_mib']} MiB >= {max_rss_mib}",
                    r["peak_rss_mib"] >= max_rss_mib,
                ),
            )
            if bad
        ]
        for r in rows
    }
    return {"catalogue": True, "passed": not any(misses.values()),
            "misses": {k: v for k, v in misses.items() if v}}  # fmt: skip
