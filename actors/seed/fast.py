"""The step report that only moves a slot's progress on, decided without the general machinery.

Most inputs of a SeedActor are step reports that change nothing but the slot's last step, alpha
and validation accuracy (docs/design.md §4, "Step-report bookkeeping"). :func:`report_progress`
decides such a report directly: one ``lifecycle.progress`` and its fold, no ``Builder``, no
outcome records. It returns exactly the :class:`~actors.core.Decision` that the general path
(:func:`actors.seed.core.decide`) returns for it, and None for any report it cannot vouch for:
the bootstrap, a terminated slot, a stale or repeated step, an embargo or a reset retry that may
be due, a stage budget used up (its exit gate is requested), a wait ended by an ack (the awaited
order may be sent again). tests/actors/test_cores_seed_fast.py compares the two paths over many
states and reports.
"""

from __future__ import annotations

from actors.core import Decision, Message, lone_decision
from actors.seed.lifecycle import stage_budget
from actors.seed.state import _KNOWN_BARE, SeedState, advanced
from contracts.config import KasminaConfig
from leyline import pb

__all__ = ["report_progress"]

# stages whose step report may only advance the progress (EMBARGOED and RESETTING act on steps;
# UNKNOWN bootstraps; TERMINATED records nothing)
_PROGRESS_ONLY = frozenset(
    {
        pb.SEED_STAGE_DORMANT,
        pb.SEED_STAGE_GERMINATED,
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
        pb.SEED_STAGE_FOSSILIZED,
        pb.SEED_STAGE_CULLED,
    }
)


def report_progress(state: SeedState, report: Message, config: KasminaConfig) -> Decision | None:
    """The decision on ``report`` when it is a step report that only advances the slot's
    progress, else None (the SeedActor's ``CoreSpec.fast``; ``decide`` starts with it too)."""
    if not isinstance(report, pb.StepReport):
        return None
    step = report.step
    if state.stage not in _PROGRESS_ONLY or step <= state.last_step:
        return None
    slot = state.slot
    mine = None
    for entry in report.slots:
        if entry.slot == slot:
            mine = entry
            break
    if _may_act(state, step, mine is not None, config):
        return None
    event = pb.LifecycleProgress(
        slot=slot,
        seq=state.seq + 1,
        step=step,
        step_report=True,
        alpha=state.alpha if mine is None else mine.alpha,
        val_acc=max(0.0, report.val_accuracy),
    )
    _KNOWN_BARE[1] = event
    return lone_decision(event, advanced(state, event))


def _may_act(state: SeedState, step: int, reported: bool, config: KasminaConfig) -> bool:
    """Whether a report of ``step`` may make the slot do more than advance: resend an awaited
    order (a wait ended by an ack), or request the exit gate of a stage whose budget it uses up
    (neither paused nor waiting, and the report has the slot's own figures)."""
    wait = state.awaiting
    if wait is not None:
        return wait.acked
    if not reported or state.paused:
        return False
    budget = stage_budget(state.stage, config, state.blend_steps)
    return budget is not None and step - state.stage_entered_step >= budget
