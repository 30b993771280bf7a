"""What the runtime measures on its own cadence: sampled isolation probes, the loss-spike score,
the evidence each stage's exit gate reads, and the periodic step report with its telemetry."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable
from typing import TYPE_CHECKING

from actors.execution import stages as st
from actors.execution.evidence import isolation_probe, latency_overhead, on_mode
from actors.execution.isolation import IsolationReport, autograd_probe, isolation_signal
from actors.execution.mailbox import KIND_SAFETY, KIND_STEP_REPORT, KIND_TELEMETRY
from actors.execution.memory import memory_metrics, seed_raised
from actors.execution.probing import probe_mode, run_probe, split_batch
from actors.execution.slot import host_parameters
from actors.execution.slotstate import SlotState
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


def probe(rt: ExecutionRuntime, step: int) -> dict[str, bool]:
    """Run the sampled isolation probe now; returns slot -> violated (signals are queued)."""
    active = [s for s in rt.states.values() if _probed(s)]
    if not active or rt.probe_batch is None:
        return {}
    reports = isolation_probe(rt.model, rt.slots, active, rt.device, rt.probe_batch, rt.loss_fn)
    _add_violations(reports, train_mode_probe(rt, active))  # leaks that only train mode shows
    for sid, rep in reports.items():
        state = rt.states[sid]
        state.isolation_probes += 1
        if rep.violated:
            state.isolation_violations += 1
            rt.outbox.put(KIND_SAFETY, isolation_signal(sid, step, rep, rank=rt.rank))
    return {sid: rep.violated for sid, rep in reports.items()}


def _probed(state: SlotState) -> bool:
    """The slot holds a live seed in a stage whose isolation is probed."""
    slot = state.slot
    return slot.seed is not None and slot.stage in st.ISOLATED_STAGES and not slot.fossil


def _add_violations(reports: dict[str, IsolationReport], more: dict[str, IsolationReport]) -> None:
    """Take each violation of ``more`` into ``reports`` where ``reports`` has none."""
    for sid, rep in more.items():
        if rep.violated and not (sid in reports and reports[sid].violated):
            reports[sid] = rep


def train_mode_probe(rt: ExecutionRuntime, active: list[SlotState]) -> dict[str, IsolationReport]:
    """The autograd isolation check with the model in train mode: RNG forked, every buffer
    (BatchNorm statistics) restored afterwards, so the host is as if it had not run."""
    assert rt.probe_batch is not None
    inputs, _ = split_batch(rt.probe_batch)
    host = host_parameters(rt.model, rt.slots)
    modes = {s.slot: (on_mode(s.slot), 1.0) for s in active}
    with probe_mode(rt.model, rt.device, train=True):
        _, taps = run_probe(rt.model, inputs, modes, [s.slot for s in active], grad=True)
        return {sid: autograd_probe(t.z, host) for sid, t in taps.items() if t.z is not None}


SPIKE_MIN_RUN = 5  # the shortest run of stage losses averaged: a spike lasts, one batch is noise
SPIKE_RUNS = 4  # the stage is judged in runs of a quarter of its length (at least SPIKE_MIN_RUN)
SPIKE_REFERENCE = 100  # losses before the stage that give the level and the noise it is held to
SPIKE_REL_FLOOR = 0.01  # the reference's spread is taken as at least 1 % of its level ...
SPIKE_ABS_FLOOR = 1e-4  # ... and at least this much: a rise from a constant loss is seen


def loss_spike(losses: Iterable[tuple[int, float]], since: int) -> tuple[float, int]:
    """How far the training loss rose since step ``since`` above its level before: the largest
    mean of ``k`` consecutive losses of the stage (``k`` a quarter of the stage, at least 5),
    less the mean of the (up to) ``SPIKE_REFERENCE`` losses before it, over the standard error
    of that difference (the reference's standard deviation, floored at ``SPIKE_REL_FLOOR`` of
    its mean's magnitude and at ``SPIKE_ABS_FLOOR``, times sqrt(1/k + 1/n_reference)). A loss
    that falls scores below 0. With the number of stage losses compared; (0, n) when there is
    too little to compare (fewer than 3 losses before the stage, or none in it)."""
    finite = [(s, v) for s, v in losses if math.isfinite(v)]
    before = [v for s, v in finite if s < since][-SPIKE_REFERENCE:]
    during = [v for s, v in finite if s >= since]
    if len(before) < 3 or not during:
        return 0.0, len(during)
    level = statistics.fmean(before)
    sd = max(statistics.stdev(before), SPIKE_REL_FLOOR * abs(level), SPIKE_ABS_FLOOR)
    k = min(len(during), max(SPIKE_MIN_RUN, len(during) // SPIKE_RUNS))
    se = sd * math.sqrt(1 / k + 1 / len(before))
    runs = (statistics.fmean(during[i : i + k]) for i in range(len(during) - k + 1))
    return max((r - level) / se for r in runs), len(during)


def stage_evidence(rt: ExecutionRuntime, sid: str) -> dict[str, float]:
    """What the exit gate of the slot's stage reads that per-step bookkeeping does not hold:
    the loss-spike z-score of the stage, and while SHADOWING/PROBATIONARY the counterfactual
    (alpha 1 vs 0 on validation) and the slot's latency overhead."""
    state = rt.states[sid]
    slot = state.slot
    if slot.seed is None or slot.fossil:
        return {}
    spike, n = loss_spike(rt.losses, state.stage_since)
    out = {ev.LOSS_SPIKE_SIGMA: spike, ev.LOSS_SPIKE_N: float(n)}
    if slot.stage in (st.SHADOWING, st.PROBATIONARY):
        out.update(rt.counterfactual(sid))
        if rt.probe_batch is not None:
            out.update(latency_overhead(rt.model, slot, rt.device, rt.probe_batch))
    return out


def _evidence(rt: ExecutionRuntime, sid: str) -> dict[str, float]:
    """:func:`stage_evidence`, or none when the seed raised while it was measured (it leaves at
    once; the training loop goes on)."""
    state = rt.states[sid]
    try:
        evidence = stage_evidence(rt, sid)
    except Exception as exc:
        seed_raised(rt, state, "the stage evidence", exc)
        return {}
    return {} if state.slot.failure is not None else evidence


def report(rt: ExecutionRuntime, step: int, val_loss: float, val_accuracy: float) -> None:
    """Queue the step report (every slot) and one telemetry record per slot holding a seed, or
    whose stage changed since its last record (a culled or reset slot's gauges follow it)."""
    message = pb.StepReport(rank=rt.rank, step=step)
    # unmeasured values stay unset (a report never carries NaN: actors reject non-finite input)
    for name, value in (
        ("loss", rt.last_loss),
        ("val_loss", val_loss),
        ("val_accuracy", val_accuracy),
    ):
        if math.isfinite(value):
            setattr(message, name, value)
    for sid, state in rt.states.items():
        metrics = state.metrics(step)
        metrics.update(_evidence(rt, sid))
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        message.slots.add(
            slot=sid, stage=state.slot.stage, alpha=metrics.get("alpha", 0.0), metrics=metrics
        )
        sent = rt.telemetry_stage.get(sid)  # None: no record yet (a slot never seeded: none)
        if state.slot.seed is not None or sent not in (None, state.slot.stage):
            rt.telemetry_stage[sid] = state.slot.stage
            rt.outbox.put(
                KIND_TELEMETRY,
                pb.TelemetryRaw(
                    slot=sid,
                    region=rt.config.region,
                    step=step,
                    metrics={**metrics, "stage": float(state.slot.stage)},
                ),
            )
    runtime_wide = memory_metrics(rt)  # once a budget is set or a seed was held or released
    stats = rt.kernels.stats
    if stats.misses or stats.hits:  # the kernel cache has been used: its counters, runtime-wide
        rt.kernels.expire()
        runtime_wide.update(stats.metrics())
    if runtime_wide:
        raw = pb.TelemetryRaw(region=rt.config.region, step=step, metrics=runtime_wide)
        rt.outbox.put(KIND_TELEMETRY, raw)
    rt.outbox.put(KIND_STEP_REPORT, message)


def step_back(rt: ExecutionRuntime, step: int) -> None:
    """``on_step(step)`` after a later step (a per-epoch ``enumerate``, say): counted, and told
    once per runtime in a log line and a WARNING telemetry item. Orders wait for their step and
    the run ignores step reports of earlier steps, so a count that restarts stalls every order."""
    rt.stepped_back += 1
    if rt.stepped_back > 1:
        return
    _tell(rt, step, f"on_step({step}) after on_step({rt.step}): pass a global step count that "
          "only grows; orders due at later steps wait for them, and the run ignores step "
          "reports of steps it has seen")  # fmt: skip


def _tell(rt: ExecutionRuntime, step: int, detail: str) -> None:
    """A warning about the loop: a log line and a WARNING telemetry item."""
    logging.getLogger("kasmina.execution").warning(detail)
    raw = pb.TelemetryRaw(region=rt.config.region, step=max(step, 0),
                          severity=pb.SEVERITY_WARNING, message=detail)  # fmt: skip
    rt.outbox.put(KIND_TELEMETRY, raw)


JUMPS_TO_WARN = 3  # on_step calls in a row whose step went up by more than one


def check_step(rt: ExecutionRuntime, step: int) -> None:
    """Before ``on_step(step)`` closes its step: a step below the last (:func:`step_back`), or
    a count that goes up by more than one at every call (steps numbered by micro-batch under
    gradient accumulation, say), told once per runtime in a log line and a WARNING telemetry
    item and counted (``rt.step_jumps``): stage budgets and the report and barrier cadences count
    step numbers, so such a loop shortens every stage K-fold, or never meets a barrier."""
    if step < rt.step:
        step_back(rt, step)
        return
    jumped = rt.step >= 0 and step > rt.step + 1
    rt.jumps_in_row = rt.jumps_in_row + 1 if jumped else 0
    rt.step_jumps += int(jumped)
    if rt.jumps_in_row != JUMPS_TO_WARN or rt.jump_warned:
        return
    rt.jump_warned = True
    _tell(rt, step, f"on_step({step}) after on_step({rt.step}): the step goes up by more than "
          "one at every call; stage budgets and the report and barrier cadences count steps, so "
          "pass the optimizer's step count, one more at each on_step (with gradient "
          "accumulation: count optimizer steps, not micro-batches)")  # fmt: skip
