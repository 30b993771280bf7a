"""ExecutionRuntime: the torch side of Kasmina, driven by one call per training step.

Integration (the user's loop stays in charge)::

    slots = insert_slots(model, {"l1.s0": "layer1"})
    rt = ExecutionRuntime(model, slots, host_opt, RuntimeConfig(), probe_batch=(x_val, y_val))
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

import math
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from google.protobuf.message import Message
from torch import nn

from actors.execution import (
    merge,
    monitor,
    orders,
    pruning_orders,
    ranks,
    recovery,
    seedsteps,
    shadow,
)
from actors.execution.config import RuntimeConfig, default_device, place_slots
from actors.execution.confirm import Confirmations, OnConfirm, StepConfirmation
from actors.execution.distill import check_teacher, soft_targets
from actors.execution.errors import OrderError, is_oom
from actors.execution.evidence import counterfactual, reset_check
from actors.execution.kernelcache import KernelCache
from actors.execution.mailbox import KIND_SAFETY, Inbox, Outbox
from actors.execution.memory import SeedMemory, seeds_leaving
from actors.execution.merge import Merged
from actors.execution.optim import warn_seeds_held
from actors.execution.probing import LossFn, ProbeBatch, check_batch, split_batch
from actors.execution.pruning import Pruner
from actors.execution.seedpass import take_grads
from actors.execution.slot import SeedSlot, SlottedModule
from actors.execution.slotstate import SlotState
from actors.execution.votes import BarrierVotes
from leyline import pb

Evaluate = Callable[[nn.Module], tuple[float, float]]

__all__ = ["Evaluate", "ExecutionRuntime", "OrderError", "RuntimeConfig", "default_device"]


class ExecutionRuntime:
    """Slots, seeds, seed optimizers, probes and the inbox/outbox of one training process."""

    def __init__(
        self,
        model: nn.Module,
        slots: Mapping[str, SeedSlot],
        host_optimizer: torch.optim.Optimizer,
        config: RuntimeConfig | None = None,
        *,
        probe_batch: ProbeBatch | None = None,
        loss_fn: LossFn | None = None,
        evaluate: Evaluate | None = None,
        validation: ProbeBatch | None = None,
        notify: Callable[[], None] | None = None,
        kernels: KernelCache | None = None,
        teacher: nn.Module | None = None,
        on_confirm: OnConfirm | None = None,
    ) -> None:
        self.config = config if config is not None else RuntimeConfig()
        self.model = eager_module(model)  # never moved: the runtime works on its device
        self.device = self.config.resolved_device(self.model)
        self.kernels = (
            kernels
            if kernels is not None
            else KernelCache(
                self.device,
                budget_bytes=self.config.kernel_cache_bytes,
                ttl_s=self.config.kernel_cache_ttl_s,
            )
        )
        place_slots(self.model, self.device)
        self.teacher: nn.Module | None = None
        if teacher is not None:
            self.set_teacher(teacher)
        self.slots = dict(slots)
        self.host_optimizer = host_optimizer
        self.loss_fn, self.evaluate = loss_fn, evaluate
        self.validation = check_batch(validation, "validation")
        self.probe_batch: ProbeBatch | None = None
        if probe_batch is not None:
            self.set_probe_batch(probe_batch)
        self.states = {k: SlotState(s) for k, s in self.slots.items()}
        self.memory = SeedMemory(self.config, self.device)
        self.merged: dict[str, Merged] = {}  # slot -> a fossil merged into the host (unmerge)
        self.oom_culls = 0  # seeds taken out of the forward because they ran out of memory
        self.seed_failures = 0  # seeds taken out because they raised anything else
        self.left: set[str] = set()  # seeds gone since the last step, outside an agreed order
        self._shadow_fed = False  # the last on_step had a batch (seeds learn from the shadow loss)
        self.hosts = {
            m.slot.slot_id: m.host for m in self.model.modules() if isinstance(m, SlottedModule)
        }
        self._init_exchange(notify, on_confirm)

    def _init_exchange(
        self, notify: Callable[[], None] | None, on_confirm: OnConfirm | None
    ) -> None:
        """What the runtime exchanges with the bus side and keeps over steps: inbox, outbox,
        pending orders, checkpoint and rollback requests, confirmations, the loss history."""
        self.checkpoints: list[tuple[int, str]] = []  # (step, path), oldest first
        self._checkpoint_wanted = threading.Event()
        self._checkpoint_reason = ""
        self.rollbacks: queue.SimpleQueue[recovery.Rollback] = queue.SimpleQueue()
        self.pending_rollbacks: list[recovery.Rollback] = []
        self.rolled_back: list[tuple[int, int, str]] = []  # (at step, checkpoint step, path)
        self.inbox = Inbox()
        self.outbox = Outbox(notify)
        self.votes = BarrierVotes(self.outbox)
        self.pending: list[pb.ExecutionOrder] = []
        self.pruner = Pruner(self.model, track=self.config.importance_every > 0)
        self.pruning_inbox: queue.SimpleQueue[pb.PruningOrder] = queue.SimpleQueue()
        self.pending_pruning: list[pb.PruningOrder] = []
        self.committed_barrier = -1  # the newest barrier commit received (set by the bus side)
        self._grad_digest = b""  # sampled seed gradients of the latest barrier step
        self.confirmed = Confirmations(on_confirm)
        self.step = -1
        self.last_loss = math.nan
        self.losses: deque[tuple[int, float]] = deque(maxlen=4096)
        self._warned_seeds: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._optimizer_seen: tuple[object, ...] = ()  # what the last look at it saw
        self.stepped_back = 0  # on_step calls whose step was below the one before
        self.telemetry_stage: dict[str, int] = {}  # per slot, the stage of its last telemetry
        self.upstream_bad: dict[str, torch.Tensor] = {}  # slots whose seed's output got a NaN/inf
        self.step_jumps = self.jumps_in_row = 0  # calls whose step went up by more than one
        self.jump_warned = False

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.config.rank

    @property
    def world_size(self) -> int:
        """The number of ranks."""
        return self.config.world_size

    # -- public API ----------------------------------------------------------------------------
    def submit(self, order: pb.ExecutionOrder) -> None:
        """Queue an order (thread-safe, never blocks); it applies at ``order.apply_at_step``."""
        self.inbox.put(order)

    def submit_pruning(self, order: pb.PruningOrder) -> None:
        """Queue a pruning order (thread-safe, never blocks); it applies at its step."""
        copy = pb.PruningOrder()
        copy.CopyFrom(order)
        self.pruning_inbox.put(copy)

    def confirmations(self) -> list[StepConfirmation]:
        """The step confirmations (one per order answered) since the last call, oldest first."""
        return self.confirmed.take()

    def barrier_committed(self, barrier_step: int) -> None:
        """Release the orders gated on ``barrier_step`` or earlier (thread-safe, never blocks)."""
        self.committed_barrier = max(self.committed_barrier, int(barrier_step))

    def drain_outbox(self) -> list[tuple[str, Message]]:
        """Every queued outgoing ``(kind, message)`` (acks, reports, telemetry, safety, votes)."""
        return self.outbox.drain()

    def wait_votes(self, timeout: float | None = None) -> None:
        """Return once the barrier vote of every barrier step so far is in the outbox (its
        digest is hashed off the training thread; see :mod:`actors.execution.votes`)."""
        self.votes.wait(timeout)

    def outbox_pending(self) -> bool:
        """True while a message is queued or a barrier vote is still being hashed."""
        return len(self.outbox) > 0 or self.votes.hashing()

    def connect(self, notify: Callable[[], None]) -> None:
        """Call ``notify`` whenever a message is queued (unless a callback is already set)."""
        if self.outbox.notify is None:
            self.outbox.notify = notify

    def set_probe_batch(self, batch: ProbeBatch) -> None:
        """Use ``batch`` (inputs, or ``(inputs, targets)``) for probes and germination checks."""
        inputs, targets = split_batch(check_batch(batch, "probe_batch"))
        inputs = inputs.to(self.device)
        self.probe_batch = inputs if targets is None else (inputs, targets.to(self.device))

    def set_teacher(self, teacher: nn.Module | None) -> None:
        """Distil TRAINING seeds from ``teacher`` (None: stop distilling); it moves to the
        runtime's device and must share nothing with the host (see ``actors/execution/distill``)."""
        if teacher is not None:
            check_teacher(eager_module(teacher), self.model)
            teacher = eager_module(teacher).to(self.device)
        self.teacher = teacher

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
        monitor.check_step(self, step)  # a count that goes back, or up by more than one
        self.step, batch = step, check_batch(batch, "on_step(batch=...)")
        if (batch is not None) is not self._shadow_fed:  # how TRAINING seeds learn changed
            self.feed_shadow(batch is not None)
        if self.memory.held:
            self.memory.expire(step)
        seeds_leaving(self)  # seeds whose forward raised leave (under DDP: those of any rank)
        # the seeds' gradients from the user's backward (and where it overflowed upstream)
        self.upstream_bad = take_grads(self.slots, self.world_size if self.distributed else 1)
        if batch is not None:
            self.shadow_backward(batch)
        if loss is not None:
            self._record_loss(loss)
        if self._barrier_step(step):  # gradient verification through sampling
            self._grad_digest = ranks.grad_digest(self.slots, step)
        if any([slot._modules["seed"] is not None for slot in self.slots.values()]):
            warn_seeds_held(self, step)
            seedsteps.train_seeds(self, step)
        self.pending.extend(self.inbox.drain())
        pruning_due = pruning_orders.take(self)
        agreed, commit = None, self.committed_barrier
        if self.distributed:  # every rank applies an order at the same step, or none does
            seeds_leaving(self)  # (a seed that failed in this close leaves every rank first)
            due = [o.order_id for o in orders.due(self, step)] + recovery.ready(self)
            agreed, commit = ranks.agree(due + pruning_due, self.device, commit)
        entering = orders.apply_due(self, step, agreed, commit) if self.pending else []
        pruning_orders.apply_due(self, step, agreed)
        seedsteps.advance_alpha(self, step)
        self._periodic(step, val_loss, val_accuracy)
        recovery.at_boundary(self, step, entering, agreed)
        pruning_orders.at_boundary(self, step)

    @property
    def shadow_fed(self) -> bool:
        """Whether TRAINING seeds learn from the shadow loss (the last ``on_step`` had a batch)."""
        return self._shadow_fed

    def feed_shadow(self, fed: bool) -> None:
        """TRAINING seeds learn from the shadow loss (``fed``) or the straight-through term."""
        self._shadow_fed = fed
        for slot in self.slots.values():
            slot.shadow_fed = fed

    @property
    def distributed(self) -> bool:
        """True when ranks must agree (world_size > 1 and a process group is up)."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def _record_loss(self, loss: float | torch.Tensor) -> None:
        self.last_loss = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.losses.append((self.step, self.last_loss))
        if not math.isfinite(self.last_loss):
            self._safety("", pb.SAFETY_SIGNAL_NON_FINITE_LOSS, self.last_loss, "loss")

    def _periodic(self, step: int, val_loss: float, val_accuracy: float) -> None:
        cfg = self.config
        if cfg.probe_every > 0 and step % cfg.probe_every == 0:
            try:
                self.probe(step)
            except Exception as exc:  # a probe that fails is skipped, and said (never raised)
                kind = (
                    pb.SAFETY_SIGNAL_OUT_OF_MEMORY if is_oom(exc) else pb.SAFETY_SIGNAL_SEED_FAILED
                )
                self._safety("", kind, 1.0, f"probe skipped: {type(exc).__name__}: {exc}"[:300])
        if cfg.report_every > 0 and step % cfg.report_every == 0:
            monitor.report(self, step, val_loss, val_accuracy)
        if self._barrier_step(step):  # the vote is queued once its digest is hashed
            self.votes.cast(self, step, self._grad_digest)

    def _barrier_step(self, step: int) -> bool:
        every = self.config.barrier_frequency
        return every > 0 and step % every == 0

    # -- seed training -------------------------------------------------------------------------
    def shadow_backward(self, batch: ProbeBatch) -> int:
        """Set the gradient of every TRAINING seed (and of BLENDING seeds by blend phase) from
        its shadow loss; returns how many (see :mod:`actors.execution.shadow`).

        Runs with the model in eval mode and a forked RNG (no dropout draw, no BatchNorm update)
        and ``torch.autograd.grad`` on seed parameters, so the host is bit-identical to a run
        without seeds."""
        return shadow.serve(self, batch)

    def soft_targets(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on ``inputs`` (eval, no_grad, the configured autocast/chunk)."""
        if self.teacher is None:
            raise RuntimeError("the runtime has no teacher")
        cfg = self.config
        return soft_targets(
            self.teacher,
            inputs,
            self.device,
            autocast=cfg.teacher_autocast,
            chunk=cfg.teacher_chunk,
        )

    # -- probes and evidence -------------------------------------------------------------------
    def probe(self, step: int) -> dict[str, bool]:
        """Run the sampled isolation probe now; returns slot -> violated (signals are queued)."""
        return monitor.probe(self, step)

    def counterfactual(self, slot_id: str) -> dict[str, float]:
        """Validation metrics at alpha 1 vs alpha 0 for one slot (needs ``evaluate=`` or
        ``validation=``; the paired per-example gain G4 judges needs ``validation=``)."""
        if self.evaluate is None and self.validation is None:
            return {"cf_unavailable": 1.0}
        slot, validation = self.slots[slot_id], self.validation
        return counterfactual(
            self.model, slot, self.device, self.evaluate, validation, self.loss_fn
        )

    def loss_spike(self, since: int) -> tuple[float, int]:
        """How far the training loss rose since step ``since``, in standard errors, and the
        stage losses behind it (see :func:`monitor.loss_spike`)."""
        return monitor.loss_spike(self.losses, since)

    def reset_evidence(self, state: SlotState) -> dict[str, float]:
        """G5 evidence for a slot that has been released."""
        return reset_check(self.model, state, self.device, self.probe_batch)

    def stage_evidence(self, sid: str) -> dict[str, float]:
        """What the exit gate of the slot's stage reads (see :func:`monitor.stage_evidence`)."""
        return monitor.stage_evidence(self, sid)

    def _safety(self, slot: str, kind: int, value: float, detail: str) -> None:
        if not math.isfinite(value):  # actors refuse non-finite fields: the kind says it, in words
            value, detail = 0.0, f"{detail} ({value})"
        signal = pb.SafetySignal(
            slot=slot,
            kind=pb.SafetySignalKind.ValueType(kind),
            step=max(self.step, 0),
            value=value,
            detail=detail,
            rank=self.rank,
        )
        self.outbox.put(KIND_SAFETY, signal)

    def unmerge(self, slot_id: str) -> None:
        """Undo the fossil merge of ``slot_id``: the host's pre-merge weights come back bitwise
        and the seed is a fossil in its slot again (see :mod:`actors.execution.merge`)."""
        merge.unmerge(self, slot_id)

    # -- checkpoints ---------------------------------------------------------------------------
    def request_checkpoint(self, reason: str, step: int = 0) -> None:
        """Ask for an emergency checkpoint at the next step boundary (thread-safe, never blocks)."""
        self._checkpoint_reason = reason
        self._checkpoint_wanted.set()

    def request_rollback(self, reason: str, slots: Sequence[str] = (), step: int = 0) -> None:
        """Ask to roll the host back to the newest checkpoint taken before any of ``slots``'
        seeds entered the forward, once they have left it (thread-safe, never blocks)."""
        self.rollbacks.put(recovery.Rollback(reason, tuple(slots), step))

    def checkpoint(self, path: str) -> None:
        """Write host, seeds, stages, alpha and optimizer states atomically to ``path``."""
        recovery.checkpoint(self, path)

    def restore(self, path: str, *, host: bool = True) -> int:
        """Rebuild seeds, stages, alpha and optimizers from a checkpoint; returns its step.

        Everything is validated before anything changes. ``host``: also load the host's
        parameters, buffers and optimizer state the checkpoint holds."""
        return recovery.restore(self, path, host=host)


def eager_module(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (the module itself otherwise)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model
