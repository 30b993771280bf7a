"""ExecutionRuntime: the torch side of Kasmina, driven by one call per training step.

Integration (the user's loop stays in charge)::

    slots = insert_slots(model, {"l1.s0": "layer1"})
    rt = ExecutionRuntime(model, slots, host_opt, probe_batch=(x_val, y_val))
    for step, (x, y) in enumerate(loader):
        host_opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()          # host and seed gradients (seed inputs are detached)
        host_opt.step()          # host optimizer never holds seed parameters (until fossilized)
        rt.on_step(step, loss)   # seed optimizers step here, orders due at `step` apply here

Orders arrive through :meth:`submit` from any thread; an order for step ``S`` is applied inside
``on_step(S)``, after the seed optimizers have stepped on step ``S``'s gradients, so the forward of
step ``S + 1`` is the first to see it. Every rank of a data-parallel run therefore changes at the
same step. Outgoing messages queue in an outbox that a bus bridge drains off the training thread.
"""

from __future__ import annotations

import gc
import hashlib
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from actors.execution import stages as st
from actors.execution.blueprints import (
    SlotShape,
    get_blueprint,
    param_count,
    shape_probe,
    signed_off,
)
from actors.execution.checkpoint import read_checkpoint, write_atomic
from actors.execution.evidence import (
    counterfactual,
    isolation_probe,
    latency_overhead,
    reset_check,
)
from actors.execution.isolation import graph_walk, isolation_signal
from actors.execution.mailbox import (
    KIND_ACK,
    KIND_BARRIER_VOTE,
    KIND_SAFETY,
    KIND_STEP_REPORT,
    KIND_TELEMETRY,
    Inbox,
    Outbox,
    state_digest,
)
from actors.execution.optim import grad_norm, join_host_optimizer, scale_lr, seed_optimizer
from actors.execution.probing import (
    LossFn,
    ProbeBatch,
    first_tensor,
    probe_mode,
    run_probe,
    split_batch,
)
from actors.execution.slot import SeedSlot, SlottedModule, host_parameters
from actors.execution.slotstate import SlotState
from actors.execution.stages import Mode
from contracts import evidence as ev
from leyline import pb

Evaluate = Callable[[nn.Module], tuple[float, float]]


class OrderError(Exception):
    """An order that cannot be applied (acked with ok=False, the reason and any evidence)."""

    def __init__(self, reason: str, evidence: Mapping[str, float] | None = None) -> None:
        super().__init__(reason)
        self.evidence = dict(evidence or {})


def default_device() -> torch.device:
    """``cuda`` (the current device) when available, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ExecutionRuntime:
    """Slots, seeds, seed optimizers, probes and the inbox/outbox of one training process."""

    def __init__(
        self,
        model: nn.Module,
        slots: Mapping[str, SeedSlot],
        host_optimizer: torch.optim.Optimizer,
        *,
        device: str | torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
        probe_every: int = 50,
        report_every: int = 10,
        barrier_frequency: int = 100,
        blend_steps: int = 100,
        probe_batch: ProbeBatch | None = None,
        loss_fn: LossFn | None = None,
        evaluate: Evaluate | None = None,
        strict_attach: bool = True,
        region: str = "",
        seed_salt: int = 0,
        notify: Callable[[], None] | None = None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.slots = dict(slots)
        self.host_optimizer = host_optimizer
        self.rank, self.world_size = rank, world_size
        self.probe_every, self.report_every = probe_every, report_every
        self.barrier_frequency, self.blend_steps = barrier_frequency, blend_steps
        self.loss_fn, self.evaluate = loss_fn, evaluate
        self.strict_attach, self.region, self.seed_salt = strict_attach, region, seed_salt
        self.probe_batch: ProbeBatch | None = None
        if probe_batch is not None:
            self.set_probe_batch(probe_batch)
        self.states = {k: SlotState(s) for k, s in self.slots.items()}
        self.hosts = {
            m.slot.slot_id: m.host for m in self.model.modules() if isinstance(m, SlottedModule)
        }
        self.checkpoint_dir = checkpoint_dir
        self.checkpoints: list[str] = []
        self._checkpoint_wanted = threading.Event()
        self._checkpoint_reason = ""
        self.inbox = Inbox()
        self.outbox = Outbox(notify)
        self.pending: list[pb.ExecutionOrder] = []
        self.step = -1
        self.last_loss = math.nan
        self.losses: deque[tuple[int, float]] = deque(maxlen=4096)

    # -- public API ----------------------------------------------------------------------------
    def submit(self, order: pb.ExecutionOrder) -> None:
        """Queue an order (thread-safe, never blocks); it applies at ``order.apply_at_step``."""
        self.inbox.put(order)

    def drain_outbox(self) -> list[tuple[str, Any]]:
        """Every queued outgoing ``(kind, message)`` (acks, reports, telemetry, safety, votes)."""
        return self.outbox.drain()

    def set_probe_batch(self, batch: ProbeBatch) -> None:
        """Use ``batch`` (inputs, or ``(inputs, targets)``) for probes and germination checks."""
        inputs, targets = split_batch(batch)
        inputs = inputs.to(self.device)
        self.probe_batch = inputs if targets is None else (inputs, targets.to(self.device))

    def on_step(
        self,
        step: int,
        loss: float | torch.Tensor | None = None,
        *,
        val_loss: float = math.nan,
        val_accuracy: float = math.nan,
        batch: ProbeBatch | None = None,
    ) -> None:
        """Close training step ``step``: train seeds, apply due orders, advance alpha, probe,
        report and vote. Call once per step, after the host optimizer's step.

        ``batch`` (the step's ``(inputs, targets)``) lets seeds in TRAINING learn from a shadow loss:
        the task loss with the seed fully on (alpha 1, input still detached), differentiated with
        respect to the seed's parameters only. Without it they learn from the straight-through term
        of the user's backward. Either way the host's parameters and gradients are untouched."""
        self.step = step
        if batch is not None:
            self.shadow_backward(batch)
        if self._checkpoint_wanted.is_set():
            self._emergency_checkpoint(step)
        if loss is not None:
            self.last_loss = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            self.losses.append((step, self.last_loss))
            if not math.isfinite(self.last_loss):
                self._safety("", pb.SAFETY_SIGNAL_NON_FINITE_LOSS, self.last_loss, "loss")
        if any(s.slot.seed is not None for s in self.states.values()):
            self._train_seeds(step)
        self.pending.extend(self.inbox.drain())
        if self.pending:
            self._apply_due(step)
        self._advance_alpha(step)
        if self.probe_every > 0 and step % self.probe_every == 0:
            self.probe(step)
        if self.report_every > 0 and step % self.report_every == 0:
            self._report(step, val_loss, val_accuracy)
        if self.barrier_frequency > 0 and step % self.barrier_frequency == 0:
            self.outbox.put(
                KIND_BARRIER_VOTE,
                pb.BarrierVote(
                    barrier_step=step,
                    rank=self.rank,
                    world_size=self.world_size,
                    digest=state_digest(self.model, self.slots),
                ),
            )

    # -- seed training -------------------------------------------------------------------------
    def shadow_backward(self, batch: ProbeBatch) -> int:
        """Set the gradient of every TRAINING seed to that of its shadow loss; returns how many.

        Runs with the model in eval mode and a forked RNG (no dropout draw, no BatchNorm update)
        and ``torch.autograd.grad`` on seed parameters, so the host is bit-identical to a run
        without seeds."""
        inputs, targets = split_batch(batch)
        if targets is None:
            return 0
        served = 0
        for state in self.states.values():
            slot = state.slot
            if slot.seed is None or slot.fossil or slot.stage != st.TRAINING or state.paused:
                continue
            params = [p for p in slot.seed_parameters() if p.requires_grad]
            on = Mode.CONVEX if slot.blend_mode == pb.BLEND_MODE_CONVEX else Mode.RESIDUAL
            with probe_mode(self.model, self.device), slot.forced(on, 1.0):
                out = first_tensor(self.model(inputs.to(self.device)))
                loss = (self.loss_fn or F.cross_entropy)(out, targets.to(self.device))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = None if g is None else g.detach()
            served += 1
        return served

    def _train_seeds(self, step: int) -> None:
        for sid, state in self.states.items():
            slot = state.slot
            if slot.seed is None or slot.stage not in st.ISOLATED_STAGES or slot.fossil:
                continue
            nonfinite = float(slot.nonfinite)
            if nonfinite:
                state.output_nonfinite += int(nonfinite)
                slot.nonfinite.zero_()
                self._safety(sid, pb.SAFETY_SIGNAL_NON_FINITE_OUTPUT, nonfinite, "seed output")
            opt = state.optimizer
            params = slot.seed_parameters()
            if opt is None or not any(p.grad is not None for p in params):
                continue
            if slot.stage == st.BLENDING:
                norm = torch.nn.utils.clip_grad_norm_(params, st.adaptive_clip(float(slot.alpha)))
            else:
                norm = grad_norm(params)
            value = float(norm)
            state.record_grad(value, training=slot.stage == st.TRAINING)
            if not math.isfinite(value):
                self._safety(sid, pb.SAFETY_SIGNAL_NON_FINITE_GRAD, value, "seed gradient")
            elif not state.paused:
                opt.step()
            opt.zero_grad(set_to_none=True)

    def _advance_alpha(self, step: int) -> None:
        for state in self.states.values():
            if state.slot.stage == st.BLENDING and state.slot.seed is not None:
                a = st.alpha_at(state.schedule, step + 1 - state.blend_start, state.blend_steps)
                state.slot.alpha.fill_(a)

    # -- orders --------------------------------------------------------------------------------
    def _apply_due(self, step: int) -> None:
        due = sorted(
            (o for o in self.pending if o.apply_at_step <= step), key=lambda o: o.apply_at_step
        )
        if not due:
            return
        self.pending = [o for o in self.pending if o.apply_at_step > step]
        for order in due:
            self._apply(order, step)

    def _apply(self, order: pb.ExecutionOrder, step: int) -> None:
        ack = pb.ExecutionAck(
            order_id=order.order_id, slot=order.slot, applied_at_step=step, rank=self.rank
        )
        late = step - order.apply_at_step
        try:
            state = self.states.get(order.slot)
            if state is None:
                raise OrderError(f"unknown slot {order.slot!r}")
            evidence = self._transition(state, order, step)
            state.paused = order.paused
            if order.HasField("adjust_optimizer") and state.optimizer is not None:
                adj = order.adjust_optimizer
                scale_lr(state.optimizer, adj.lr_scale or 1.0, adj.weight_decay)
            if order.counterfactual:
                evidence.update(self.counterfactual(order.slot))
            if (
                order.wants_evidence
                and state.slot.seed is not None
                and self.probe_batch is not None
            ):
                evidence[ev.LATENCY_OVERHEAD] = latency_overhead(
                    self.model, state.slot, self.device, self.probe_batch
                )
            evidence.update(state.metrics(step))
            evidence[ev.LOSS_SPIKE_SIGMA] = self._loss_spike(state.stage_since)
            ack.ok = True
            ack.evidence.metrics.update(evidence)
            ack.evidence.blueprint = state.slot.blueprint
        except OrderError as exc:
            ack.ok = False
            ack.error = str(exc)
            ack.evidence.metrics.update(exc.evidence)
        stage = self.slots[order.slot].stage if order.slot in self.slots else order.stage
        ack.stage = pb.SeedLifecycleStage.ValueType(stage)
        if late > 0:
            ack.error = f"late: due at step {order.apply_at_step}, applied at {step}" + (
                f"; {ack.error}" if ack.error else ""
            )
            ack.evidence.metrics["late_steps"] = float(late)
        self.outbox.put(KIND_ACK, ack)

    def _transition(
        self, state: SlotState, order: pb.ExecutionOrder, step: int
    ) -> dict[str, float]:
        slot, target = state.slot, order.stage
        if target == slot.stage:
            return {}
        evidence: dict[str, float] = {}
        if target == st.GERMINATED:
            if slot.seed is not None or slot.stage in (st.EMBARGOED, st.TERMINATED):
                raise OrderError(
                    f"slot {slot.slot_id} is not free ({st.stage_name(slot.stage)})",
                    {ev.SLOT_FREE: 0.0, ev.SLOT_EMBARGOED: float(slot.stage == st.EMBARGOED)},
                )
            evidence = self._germinate(state, order, step)
        elif slot.fossil and target != st.TERMINATED:
            raise OrderError(f"slot {slot.slot_id} is fossilized; only TERMINATED may follow")
        elif target in st.ISOLATED_STAGES or target == st.FOSSILIZED:
            if slot.seed is None:
                raise OrderError(f"slot {slot.slot_id} holds no seed")
            if target == st.BLENDING:
                state.blend_start = step
                state.blend_steps = state.blend_steps or self.blend_steps
                slot.alpha.zero_()
            elif target in (st.SHADOWING, st.PROBATIONARY):
                slot.alpha.fill_(1.0)
            elif target == st.FOSSILIZED:
                join_host_optimizer(self.host_optimizer, slot.seed_parameters(), state.optimizer)
                state.optimizer = None
        elif target in (st.CULLED, st.EMBARGOED, st.RESETTING, st.DORMANT, st.TERMINATED):
            if not (target == st.TERMINATED and slot.fossil):
                self._release(state)
            if target in (st.RESETTING, st.DORMANT):
                slot.set_stage(target)
                evidence = self.reset_evidence(state)
        else:
            raise OrderError(f"stage {st.stage_name(target)} cannot be ordered")
        slot.set_stage(target)
        state.stage_since = step
        return evidence

    def _germinate(self, state: SlotState, order: pb.ExecutionOrder, step: int) -> dict[str, float]:
        slot, g = state.slot, order.germinate
        if self.probe_batch is None:
            raise OrderError("no probe batch: pass probe_batch= before germinating")
        try:
            bp = get_blueprint(g.blueprint)
        except KeyError as exc:
            raise OrderError(str(exc), {ev.BLUEPRINT_KNOWN: 0.0}) from None
        inputs, targets = split_batch(self.probe_batch)
        with probe_mode(self.model, self.device):
            base, taps = run_probe(self.model, inputs, {}, [slot], grad=False)
        tap = taps.get(slot.slot_id)
        if tap is None:
            raise OrderError(f"slot {slot.slot_id} is not on the probe batch's forward path")
        shape = SlotShape.of(tap.h, tap.x)
        if not signed_off(bp, shape):
            raise OrderError(
                f"blueprint {bp.name!r} is not signed off for shape {shape}",
                {ev.BLUEPRINT_KNOWN: 1.0, ev.BLUEPRINT_SIGNED_OFF: 0.0},
            )
        if g.blend_mode == pb.BLEND_MODE_CONVEX and not bp.convex_ok:
            raise OrderError(f"blueprint {bp.name!r} does not support convex blending")
        params = dict(g.params)
        salt = f"{self.seed_salt}:{slot.slot_id}:{order.apply_at_step}:{bp.name}".encode()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int.from_bytes(hashlib.sha256(salt).digest()[:7], "big"))
            seed = bp.build(shape, params, self.hosts.get(slot.slot_id, slot)).to(
                device=self.device, dtype=tap.h.dtype
            )
        probe = shape_probe(seed, bp, tap.h, tap.x)
        finite = all(bool(torch.isfinite(p).all()) for p in seed.parameters())
        memory = sum(t.numel() * t.element_size() for t in (*seed.parameters(), *seed.buffers()))
        evidence = {
            ev.BLUEPRINT_KNOWN: 1.0,
            ev.BLUEPRINT_SIGNED_OFF: 1.0,
            ev.SLOT_FREE: 1.0,
            ev.SLOT_EMBARGOED: 0.0,
            ev.PARAMS_FINITE: float(finite),
            ev.SHAPE_MATCH: float(probe.shape_ok),
            ev.DTYPE_MATCH: float(probe.dtype_ok),
            ev.OUTPUT_FINITE: float(probe.finite),
            ev.SEED_PARAMS: float(param_count(seed)),
            ev.SEED_MEMORY_BYTES: float(memory),
        }
        slot.attach(seed, blueprint=bp.name, reads_input=bp.reads_input, blend_mode=g.blend_mode)
        on = Mode.CONVEX if g.blend_mode == pb.BLEND_MODE_CONVEX else Mode.RESIDUAL
        with probe_mode(self.model, self.device):
            full, taps = run_probe(self.model, inputs, {slot: (on, 1.0)}, [slot], grad=True)
            z = taps[slot.slot_id].z
            walk = graph_walk(z, host_parameters(self.model, self.slots)) if z is not None else None
        evidence[ev.GERMINATION_MAX_ABS_DELTA] = float((full.detach() - base).abs().max())
        evidence["attach_isolation_violation"] = float(walk is not None and walk.violated)
        if self.evaluate is not None:
            with probe_mode(self.model, self.device), slot.forced(Mode.IDENTITY):
                evidence[ev.BASELINE_ACC] = float(self.evaluate(self.model)[1])
        state.reset_evidence()
        state.attach_evidence = dict(evidence)
        if walk is not None and walk.violated:
            state.isolation_violations += 1
            self.outbox.put(KIND_SAFETY, isolation_signal(slot.slot_id, step, walk, rank=self.rank))
        flags = (ev.PARAMS_FINITE, ev.SHAPE_MATCH, ev.DTYPE_MATCH, ev.OUTPUT_FINITE)
        failed = [k for k in flags if evidence[k] != 1.0]
        if not probe.ok or failed or (self.strict_attach and walk is not None and walk.violated):
            self._release(state)
            raise OrderError(
                f"germination checks failed: {failed or 'isolation/zero output'}", evidence
            )
        state.shape, state.params = shape, params
        state.blend_steps = int(g.blend_steps) or self.blend_steps
        state.schedule = g.alpha_schedule
        state.optimizer = seed_optimizer(list(seed.parameters()), params)
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._sync_grads(slot)
        del targets
        return evidence

    def _sync_grads(self, slot: SeedSlot) -> None:
        world = self.world_size

        def hook(p: torch.Tensor) -> None:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)

        for p in slot.seed_parameters():
            slot.hook_handles.append(p.register_post_accumulate_grad_hook(hook))  # type: ignore[no-untyped-call]

    def _release(self, state: SlotState) -> None:
        state.slot.release()
        state.optimizer = None
        state.shape = None
        state.paused = False
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- probes and evidence -------------------------------------------------------------------
    def probe(self, step: int) -> dict[str, bool]:
        """Run the sampled isolation probe now; returns slot -> violated (signals are queued)."""
        active = [
            s
            for s in self.states.values()
            if s.slot.seed is not None and s.slot.stage in st.ISOLATED_STAGES and not s.slot.fossil
        ]
        if not active or self.probe_batch is None:
            return {}
        reports = isolation_probe(
            self.model, self.slots, active, self.device, self.probe_batch, self.loss_fn
        )
        for sid, rep in reports.items():
            state = self.states[sid]
            state.isolation_probes += 1
            if rep.violated:
                state.isolation_violations += 1
                self.outbox.put(KIND_SAFETY, isolation_signal(sid, step, rep, rank=self.rank))
        return {sid: rep.violated for sid, rep in reports.items()}

    def counterfactual(self, slot_id: str) -> dict[str, float]:
        """Validation metrics at alpha 1 vs alpha 0 for one slot (needs ``evaluate=``)."""
        if self.evaluate is None:
            return {"cf_unavailable": 1.0}
        return counterfactual(self.model, self.slots[slot_id], self.device, self.evaluate)

    def _loss_spike(self, since: int) -> float:
        """Largest z-score of the training loss since step ``since`` (0 with < 3 losses)."""
        values = [v for s, v in self.losses if s >= since and math.isfinite(v)]
        if len(values) < 3:
            return 0.0
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return max((v - mean) / std for v in values) if std > 0 else 0.0

    def reset_evidence(self, state: SlotState) -> dict[str, float]:
        """G5 evidence for a slot that has been released."""
        return reset_check(self.model, state, self.device, self.probe_batch)

    # -- outgoing ------------------------------------------------------------------------------
    def _safety(self, slot: str, kind: int, value: float, detail: str) -> None:
        signal = pb.SafetySignal(
            slot=slot,
            kind=pb.SafetySignalKind.ValueType(kind),
            step=max(self.step, 0),
            value=value,
            detail=detail,
            rank=self.rank,
        )
        self.outbox.put(KIND_SAFETY, signal)

    def stage_evidence(self, sid: str) -> dict[str, float]:
        """What the exit gate of the slot's stage reads that per-step bookkeeping does not hold:
        the loss-spike z-score of the stage, and while SHADOWING/PROBATIONARY the counterfactual
        (alpha 1 vs 0 on validation) and the slot's latency overhead."""
        state = self.states[sid]
        slot = state.slot
        if slot.seed is None or slot.fossil:
            return {}
        out = {ev.LOSS_SPIKE_SIGMA: self._loss_spike(state.stage_since)}
        if slot.stage in (st.SHADOWING, st.PROBATIONARY):
            out.update(self.counterfactual(sid))
            if self.probe_batch is not None:
                out[ev.LATENCY_OVERHEAD] = latency_overhead(
                    self.model, slot, self.device, self.probe_batch
                )
        return out

    def _report(self, step: int, val_loss: float, val_accuracy: float) -> None:
        report = pb.StepReport(rank=self.rank, step=step)
        # unmeasured values stay unset (a report never carries NaN: actors reject non-finite input)
        for name, value in (
            ("loss", self.last_loss),
            ("val_loss", val_loss),
            ("val_accuracy", val_accuracy),
        ):
            if math.isfinite(value):
                setattr(report, name, value)
        for sid, state in self.states.items():
            metrics = state.metrics(step)
            metrics.update(self.stage_evidence(sid))
            metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
            report.slots.add(
                slot=sid, stage=state.slot.stage, alpha=metrics.get("alpha", 0.0), metrics=metrics
            )
            if state.slot.seed is not None:
                self.outbox.put(
                    KIND_TELEMETRY,
                    pb.TelemetryRaw(slot=sid, region=self.region, step=step, metrics=metrics),
                )
        self.outbox.put(KIND_STEP_REPORT, report)

    # -- emergency checkpoint ------------------------------------------------------------------
    def request_checkpoint(self, reason: str, step: int = 0) -> None:
        """Ask for an emergency checkpoint at the next step boundary (thread-safe, never blocks)."""
        self._checkpoint_reason = reason
        self._checkpoint_wanted.set()

    def _emergency_checkpoint(self, step: int) -> None:
        self._checkpoint_wanted.clear()
        if self.checkpoint_dir is None:
            detail = (
                f"checkpoint requested ({self._checkpoint_reason}) but no checkpoint_dir is set"
            )
        else:
            path = f"{self.checkpoint_dir}/emergency-rank{self.rank}-step{step}.pt"
            self.checkpoint(path)
            self.checkpoints.append(path)
            detail = f"emergency checkpoint written to {path} ({self._checkpoint_reason})"
        self.outbox.put(
            KIND_TELEMETRY,
            pb.TelemetryRaw(
                region=self.region, step=step, severity=pb.SEVERITY_CRITICAL, message=detail
            ),
        )

    def checkpoint(self, path: str) -> None:
        """Write seeds, stages, alpha and optimizer states atomically to ``path``."""
        slots: dict[str, Any] = {}
        for sid, state in self.states.items():
            slot = state.slot
            entry: dict[str, Any] = {
                "stage": int(slot.stage),
                "alpha": float(slot.alpha),
                "blueprint": slot.blueprint,
                "blend_mode": int(slot.blend_mode),
                "fossil": slot.fossil,
                "paused": state.paused,
                "params": dict(state.params),
                "stage_since": state.stage_since,
                "blend_start": state.blend_start,
                "blend_steps": state.blend_steps,
                "schedule": int(state.schedule),
            }
            if slot.seed is not None and state.shape is not None:
                entry["out_shape"] = list(state.shape.out_shape)
                entry["in_shape"] = (
                    None if state.shape.in_shape is None else list(state.shape.in_shape)
                )
                entry["dtype"] = str(state.shape.dtype).removeprefix("torch.")
                entry["seed"] = {k: v.detach().cpu() for k, v in slot.seed.state_dict().items()}
                if state.optimizer is not None:
                    entry["optimizer"] = state.optimizer.state_dict()
            slots[sid] = entry
        write_atomic({"version": 1, "step": self.step, "slots": slots}, path)

    def restore(self, path: str) -> int:
        """Rebuild seeds, stages, alpha and seed optimizers from a checkpoint; returns its step.

        Fossilized seeds are restored into the slot; their parameters must already be in the
        host optimizer's state being restored by the trainer (they are part of the model)."""
        payload = read_checkpoint(path, device=str(self.device))
        for sid, entry in payload["slots"].items():
            state = self.states[sid]
            self._release(state)
            slot = state.slot
            if "seed" in entry:
                bp = get_blueprint(entry["blueprint"])
                shape = SlotShape(
                    tuple(entry["out_shape"]),
                    getattr(torch, entry["dtype"]),
                    None if entry["in_shape"] is None else tuple(entry["in_shape"]),
                )
                seed = bp.build(shape, entry["params"], self.hosts.get(sid, slot)).to(
                    self.device, shape.dtype
                )
                seed.load_state_dict(entry["seed"])
                slot.attach(
                    seed,
                    blueprint=bp.name,
                    reads_input=bp.reads_input,
                    blend_mode=entry["blend_mode"],
                )
                state.shape, state.params = shape, dict(entry["params"])
                slot.fossil = bool(entry["fossil"])
                if not slot.fossil:
                    state.optimizer = seed_optimizer(list(seed.parameters()), state.params)
                    if "optimizer" in entry:
                        state.optimizer.load_state_dict(entry["optimizer"])
                if self.world_size > 1 and dist.is_available() and dist.is_initialized():
                    self._sync_grads(slot)
            slot.set_stage(int(entry["stage"]))
            slot.alpha.fill_(float(entry["alpha"]))
            state.paused = bool(entry["paused"])
            state.stage_since = int(entry["stage_since"])
            state.blend_start = int(entry["blend_start"])
            state.blend_steps = int(entry["blend_steps"])
            state.schedule = int(entry["schedule"])
        return int(payload["step"])
