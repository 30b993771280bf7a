"""A trainer rank's confirmations as status shows them: each order once, the latest by step."""

from __future__ import annotations

from actors.attached import confirmed_by_rank
from leyline import pb

S = pb.SeedLifecycleStage


def _ack(order: str, step: int, stage: int, *, ok: bool = True, rank: int = 0) -> pb.ExecutionAck:
    return pb.ExecutionAck(
        order_id=order, slot="l0.s0", rank=rank, applied_at_step=step, stage=stage, ok=ok
    )


def test_copied_confirmations_count_once_and_never_become_the_latest() -> None:
    """Copies of two genuine confirmations appended after them (as a Redis writer can) leave
    the counts at two and the latest at the highest step, not the last appended."""
    germinated = _ack("o1", 10, S.SEED_STAGE_GERMINATED)
    training = _ack("o2", 20, S.SEED_STAGE_TRAINING)
    (row,) = confirmed_by_rank([germinated, training, germinated, training, germinated]).values()
    assert row["confirmed"] == 2 and row["refused"] == 0
    assert row["last"]["stage"] == "TRAINING" and row["last"]["step"] == 20


def test_ranks_are_counted_apart_and_refusals_separately() -> None:
    """The same order confirmed by two ranks counts once for each; a refusal is counted as
    refused."""
    acks = [_ack("o1", 5, S.SEED_STAGE_GERMINATED, rank=r) for r in (0, 1)]
    acks.append(_ack("o2", 7, S.SEED_STAGE_TRAINING, ok=False, rank=1))
    rows = confirmed_by_rank(acks)
    assert rows["0"]["confirmed"] == 1 and rows["0"]["refused"] == 0
    assert rows["1"]["confirmed"] == 1 and rows["1"]["refused"] == 1
    assert rows["1"]["last"]["ok"] is False
