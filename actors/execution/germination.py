"""Germination: build a seed for a slot, check it on the probe batch, attach it or refuse.

The seed is built on a forked RNG seeded from the slot, step and blueprint (every rank builds the
same seed), shape-probed (its delta must be exactly zero), attached, and its output's autograd
graph walked: a seed that reaches a host parameter is refused (``strict_attach``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from actors.artifacts import ArtifactError, check_id
from actors.execution.blueprints import (
    Blueprint,
    SlotShape,
    get_blueprint,
    param_count,
    shape_probe,
)
from actors.execution.distill import check_germinate_kd
from actors.execution.errors import OrderError, is_oom
from actors.execution.evidence import slot_facts
from actors.execution.isolation import IsolationReport, graph_walk, isolation_signal
from actors.execution.kernels import as_blueprint
from actors.execution.mailbox import KIND_SAFETY
from actors.execution.memory import (
    activation_bytes,
    batch_scale,
    check_budget,
    collect,
    footprint,
    memory_evidence,
    request_bytes,
)
from actors.execution.optim import seed_optimizer
from actors.execution.probing import probe_mode, run_probe, split_batch
from actors.execution.seedchecks import (
    check_fit,
    check_limit,
    check_params,
    check_shares_nothing,
    host_tensors,
    untouched_host,
)
from actors.execution.slot import SeedSlot, SlotTap, host_parameters
from actors.execution.slotstate import SlotState
from actors.execution.stages import Mode
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime

_FLAGS = (ev.PARAMS_FINITE, ev.SHAPE_MATCH, ev.DTYPE_MATCH, ev.OUTPUT_FINITE)


@dataclass(frozen=True)
class Site:
    """What the probe batch shows at the slot before anything is attached."""

    inputs: Tensor
    base: Tensor  # model output with the slot as it is
    tap: SlotTap
    shape: SlotShape


def germinate(
    rt: ExecutionRuntime, state: SlotState, order: pb.ExecutionOrder, step: int
) -> dict[str, float]:
    """Build, check and attach the seed the order asks for; returns the G0 evidence. Running out
    of memory on the way is a refusal (the slot is left empty), never an exception."""
    try:
        return _germinate(rt, state, order, step)
    except OrderError:  # refused here: under DDP, where other ranks took it, it leaves them too
        rt.left.add(state.slot.slot_id)
        raise
    except Exception as exc:
        if not is_oom(exc):
            raise
        rt.left.add(state.slot.slot_id)
        if state.slot.seed is not None:  # the slot was free: whatever it holds is this seed's
            state.release(rt.device)
        collect(rt.device)
        evidence = {ev.SEED_OOM: 1.0, **memory_evidence(rt, 0)}
        raise OrderError(f"out of memory during germination: {exc}"[:500], evidence) from None


def _germinate(
    rt: ExecutionRuntime, state: SlotState, order: pb.ExecutionOrder, step: int
) -> dict[str, float]:
    slot, g = state.slot, order.germinate
    bp = resolve(rt, g)
    params = check_params(dict(g.params), bp)
    site = _site(rt, slot)
    check_germinate_kd(rt, params, site.inputs, site.base)
    check_fit(bp, site.shape, g.blend_mode)
    memory, activations = check_size(rt, bp, site, params, slot)
    seed = build_seed(rt, bp, site, params, slot, order.apply_at_step)
    try:
        if not any(p.requires_grad for p in seed.parameters()):
            raise OrderError("the seed has no trainable parameter: it could never learn")
        check_shares_nothing(rt, seed)
        with untouched_host(rt, slot.slot_id):
            rng_seed, writes_input = dry_run(seed, bp, site)
    except OrderError:
        _discard(seed)
        raise
    evidence, probe_ok = _seed_evidence(seed, bp, site)
    _add_facts(rt, evidence, bp, slot, memory, writes_input)
    slot.attach(seed, blueprint=bp.name, reads_input=bp.reads_input, blend_mode=g.blend_mode)
    slot.watched = host_tensors(rt, slot.slot_id)  # a write into them is a violation
    slot.seed_rng(_rng_seed(rt, slot, order.apply_at_step, bp))  # drawing or not (eager)
    slot.draws = rng_seed
    walk = _attached_checks(rt, slot, site, g.blend_mode, evidence)
    state.reset_evidence()
    state.attach_evidence = dict(evidence)
    if walk is not None and walk.violated:
        state.isolation_violations += 1
        rt.outbox.put(KIND_SAFETY, isolation_signal(slot.slot_id, step, walk, rank=rt.rank))
    leaks = (walk is not None and walk.violated) or writes_input
    _judge(rt, state, evidence, probe_ok, leaks=leaks)
    state.shape, state.params, state.activation_bytes = site.shape, params, activations
    _keep(rt, state, bp, g, seed)
    return evidence


def _add_facts(
    rt: ExecutionRuntime,
    evidence: dict[str, float],
    bp: Blueprint,
    slot: SeedSlot,
    memory: dict[str, float],
    writes_input: bool,
) -> None:
    """The G0 evidence besides the seed's own checks: input writes, the artifact, the slot's
    facts, the memory figures and the host's size."""
    evidence[ev.SEED_WRITES_INPUT] = float(writes_input)
    if bp.artifact:
        evidence[ev.ARTIFACT_VERIFIED] = 1.0
    evidence.update(slot_facts(slot))
    evidence.update(memory)
    host = host_parameters(rt.model, rt.slots)
    evidence[ev.HOST_PARAMS] = float(sum(p.numel() for p in host))


def _judge(
    rt: ExecutionRuntime, state: SlotState, evidence: dict[str, float], probe_ok: bool, leaks: bool
) -> None:
    """Release the attached seed and refuse when a check failed (a leak only under
    ``strict_attach``)."""
    failed = [k for k in _FLAGS if evidence[k] != 1.0]
    if not probe_ok or failed or (rt.config.strict_attach and leaks):
        state.release(rt.device)
        raise OrderError(
            f"germination checks failed: {failed or 'isolation/zero output'}", evidence
        )


def _keep(
    rt: ExecutionRuntime, state: SlotState, bp: Blueprint, g: pb.Germinate, seed: nn.Module
) -> None:
    """The accepted seed's settings and optimizer (gradients synced across ranks)."""
    state.artifact = bp.artifact
    state.blend_steps = int(g.blend_steps) or rt.config.blend_steps
    state.schedule = g.alpha_schedule
    state.optimizer = seed_optimizer(list(seed.parameters()), state.params)
    state.slot.world = rt.world_size


def resolve(rt: ExecutionRuntime, g: pb.Germinate) -> Blueprint:
    """The registered blueprint ``g`` names, or the kernel of its artifact id: verified
    (signature, checksum) and loaded through the runtime's kernel cache. A refusal changes
    nothing and says why."""
    if not g.artifact_id:
        try:
            return get_blueprint(g.blueprint)
        except KeyError as exc:
            raise OrderError(str(exc), {ev.BLUEPRINT_KNOWN: 0.0}) from None
    refused = {ev.BLUEPRINT_KNOWN: 0.0, ev.ARTIFACT_VERIFIED: 0.0}
    try:
        kernel = rt.kernels.get(check_id(g.artifact_id))
        bp = as_blueprint(kernel)
    except ArtifactError as exc:
        raise OrderError(str(exc), refused) from None
    except KeyError as exc:
        raise OrderError(f"artifact {g.artifact_id[:12]}…: {exc}", refused) from None
    if g.blueprint and g.blueprint != bp.name:
        raise OrderError(f"artifact {g.artifact_id[:12]}… holds {bp.name!r}, not {g.blueprint!r}")
    return bp


def _site(rt: ExecutionRuntime, slot: SeedSlot) -> Site:
    if rt.probe_batch is None:
        raise OrderError("no probe batch: pass probe_batch= before germinating")
    inputs, _ = split_batch(rt.probe_batch)
    with probe_mode(rt.model, rt.device):
        # with grad, like the forward it is compared with below: modules with a no-grad fast
        # path (nn.TransformerEncoderLayer, nn.MultiheadAttention) differ in the last bits
        base, taps = run_probe(rt.model, inputs, {}, [slot], grad=True)
        base = base.detach()
    tap = taps.get(slot.slot_id)
    if tap is None:
        raise OrderError(f"slot {slot.slot_id} is not on the probe batch's forward path")
    if not isinstance(tap.h, torch.Tensor):  # an LSTM's (output, state), attention's pair
        raise OrderError(
            f"slot {slot.slot_id} wraps a submodule that returns {type(tap.h).__name__}, not a "
            "tensor: put the slot after a submodule with a tensor output"
        )
    return Site(inputs, base, tap, SlotShape.of(tap.h, tap.x))


def build_seed(
    rt: ExecutionRuntime,
    bp: Blueprint,
    site: Site,
    params: dict[str, float],
    slot: SeedSlot,
    at_step: int,
) -> nn.Module:
    """The seed, built on a forked RNG seeded from the slot, the step and the blueprint."""
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []):
        torch.manual_seed(_rng_seed(rt, slot, at_step, bp, ""))
        seed: nn.Module = bp.build(site.shape, params, rt.hosts.get(slot.slot_id, slot))
        return seed.to(device=rt.device, dtype=site.tap.h.dtype)


def _rng_seed(
    rt: ExecutionRuntime, slot: SeedSlot, at_step: int, bp: Blueprint, stream: str = ":forward"
) -> int:
    """A seed for torch's RNG, the same on every rank (``stream`` tells the uses apart)."""
    salt = f"{rt.config.seed_salt}:{slot.slot_id}:{at_step}:{bp.name}{stream}".encode()
    return int.from_bytes(hashlib.sha256(salt).digest()[:7], "big")


def check_size(
    rt: ExecutionRuntime, bp: Blueprint, site: Site, params: dict[str, float], slot: SeedSlot
) -> tuple[dict[str, float], int]:
    """Size the seed without building it (a meta-device ghost, or an artifact's verified
    manifest) and refuse it when it is too large or would exceed the rank's seed memory budget;
    returns the memory evidence and the seed's activation estimate."""
    src = site.tap.x if bp.reads_input and site.tap.x is not None else site.tap.h
    scale = batch_scale(rt.config, site.shape)
    kernel = rt.kernels.peek(bp.artifact) if bp.artifact else None
    if kernel is not None:  # sizes from the verified manifest
        m = kernel.manifest
        total = sum(math.prod(s) for s in m.tensors.values())
        check_limit(rt, bp, m.param_count, total)
        activations = int(2 * src.numel() * src.element_size() * scale)  # output + one more
        request = request_bytes(m.param_count, total - m.param_count, site.shape.dtype)
        return check_budget(rt, request + activations), activations
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            ghost = bp.build(site.shape, params, rt.hosts.get(slot.slot_id, slot))
    except Exception as exc:
        raise OrderError(f"blueprint {bp.name!r} cannot build with {params}: {exc}") from None
    try:
        n = param_count(ghost)
        check_limit(rt, bp, n, sum(t.numel() for t in ghost.buffers()) + n)
        activations = int(activation_bytes(ghost, tuple(src.shape), site.shape.dtype) * scale)
        request = footprint(ghost, site.shape.dtype, activations)
    finally:
        _discard(ghost)
    return check_budget(rt, request), activations


def dry_run(seed: nn.Module, bp: Blueprint, site: Site) -> tuple[bool, bool]:
    """Run the seed in train mode on a copy of the slot activation, without and with autograd
    recording: does it draw random numbers (a compiled forward then runs it on its own RNG
    stream, as every eager forward does) and does it write its input in place?"""
    src = site.tap.x if bp.reads_input else site.tap.h
    if src is None:
        return False, False
    draws = writes = False
    for grad in (False, True):
        d, w = _dry_once(seed, src, grad)
        draws, writes = draws or d, writes or w
    return draws, writes


def _dry_once(seed: nn.Module, src: Tensor, grad: bool) -> tuple[bool, bool]:
    view = src.detach().clone()
    version = view._version
    was = seed.training
    devices = [src.device] if src.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(grad):
        before = _rng_states(devices)
        seed.train()
        try:
            seed(view)
        except Exception as exc:
            raise OrderError(f"seed forward fails on the slot activation: {exc}") from None
        finally:
            seed.train(was)
        after = _rng_states(devices)
    draws = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    return draws, view._version != version


def _rng_states(devices: list[torch.device]) -> list[Tensor]:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]


def _discard(module: nn.Module) -> None:
    """Undo what a factory attached elsewhere (hooks on the host): call every ``release()``."""
    for m in module.modules():
        rel = getattr(m, "release", None)
        if callable(rel):
            rel()


def _seed_evidence(seed: nn.Module, bp: Blueprint, site: Site) -> tuple[dict[str, float], bool]:
    with torch.random.fork_rng(devices=[site.inputs.device] if site.inputs.is_cuda else []):
        probe = shape_probe(seed, bp, site.tap.h, site.tap.x)
    finite = all(bool(torch.isfinite(p).all()) for p in seed.parameters())
    memory = sum(t.numel() * t.element_size() for t in (*seed.parameters(), *seed.buffers()))
    evidence = {
        ev.BLUEPRINT_KNOWN: 1.0,
        ev.BLUEPRINT_SIGNED_OFF: 1.0,
        ev.PARAMS_FINITE: float(finite),
        ev.SHAPE_MATCH: float(probe.shape_ok),
        ev.DTYPE_MATCH: float(probe.dtype_ok),
        ev.OUTPUT_FINITE: float(probe.finite),
        ev.SEED_PARAMS: float(param_count(seed)),
        ev.SEED_MEMORY_BYTES: float(memory),
    }
    return evidence, probe.ok


def _attached_checks(
    rt: ExecutionRuntime, slot: SeedSlot, site: Site, blend_mode: int, evidence: dict[str, float]
) -> IsolationReport | None:
    """With the seed attached and fully on: output delta, graph walk, baseline accuracy."""
    on = Mode.CONVEX if blend_mode == pb.BLEND_MODE_CONVEX else Mode.RESIDUAL
    with probe_mode(rt.model, rt.device):
        full, taps = run_probe(rt.model, site.inputs, {slot: (on, 1.0)}, [slot], grad=True)
        z = taps[slot.slot_id].z
        walk = graph_walk(z, host_parameters(rt.model, rt.slots)) if z is not None else None
    evidence[ev.GERMINATION_MAX_ABS_DELTA] = float((full.detach() - site.base).abs().max())
    evidence["attach_isolation_violation"] = float(walk is not None and walk.violated)
    if rt.evaluate is not None or rt.validation is not None:
        cf = rt.counterfactual(slot.slot_id)
        if ev.CF_ACC_OFF in cf:
            evidence[ev.BASELINE_ACC] = cf[ev.CF_ACC_OFF]
        if cf.get(ev.CF_GAIN_ON_LOSS) == 1.0:  # a non-class target: G4 judges on loss
            evidence[ev.BASELINE_LOSS] = cf[ev.CF_LOSS_OFF]
    return walk
