"""The awaited order a slot records folds to the same state however its map fields were built."""

from __future__ import annotations

from actors import seed
from leyline import pb


def _progress(params: dict[str, float]) -> pb.LifecycleProgress:
    order = pb.ExecutionOrder(order_id="o1", slot="h", germinate=pb.Germinate(blueprint="b"))
    for name, value in params.items():  # insertion order is the caller's
        order.germinate.params[name] = value
    return pb.LifecycleProgress(slot="h", seq=2, pending_id="o1", pending_order=order)


def test_pending_order_digest_ignores_map_insertion_order() -> None:
    """Two folds of the same awaited order, its germinate params inserted in opposite orders and
    one of them through the wire, give one state digest (live and replayed states agree)."""
    names = [f"p{i}" for i in range(12)]
    forward = _progress({n: float(i) for i, n in enumerate(names)})
    backward = _progress({n: float(names.index(n)) for n in reversed(names)})
    wire = pb.LifecycleProgress.FromString(backward.SerializeToString())
    start = seed.evolve(
        seed.initial_state("h"),
        pb.LifecycleTransition(slot="h", seq=1, from_stage=0, to_stage=1, cause="bootstrap"),
    )
    digests = {seed.digest(seed.evolve(start, e)) for e in (forward, backward, wire)}
    assert len(digests) == 1
