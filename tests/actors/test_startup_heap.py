"""An actor process freezes its start-up heap: the objects alive before serving leave the
cyclic collector's generations, what serving allocates is still collected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from actors.supervisor import freeze_startup_heap


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session runs with an ordinary heap


def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected(thawed: None) -> None:
    """Objects alive at the freeze are counted frozen and no longer tracked by any generation;
    a reference cycle made afterwards is found and freed by the next collection."""

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    kept = [Node() for _ in range(100)]
    frozen = freeze_startup_heap()
    assert frozen == gc.get_freeze_count() >= len(kept)
    young = {id(o) for o in gc.get_objects()}
    assert not any(id(node) in young for node in kept)
    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2  # the cycle made after the freeze is collected
