"""The gateway's start-up heap is frozen out of the cycle collector's reach."""

import gc

import pytest

from actors.heap import COLLECTOR_THRESHOLDS, freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def restore_collector():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_objects_alive_at_start_up_are_frozen_and_later_garbage_is_still_collected(
    restore_collector,
):
    kept = _Node()
    frozen = freeze_startup_heap()

    assert frozen > 0  # (the count then falls as frozen objects die: not compared again)
    assert gc.get_threshold() == COLLECTOR_THRESHOLDS
    assert not any(obj is kept for obj in gc.get_objects())  # out of every generation
    # A cycle made afterwards is still found by a collection.
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_start_up_garbage_is_collected_before_the_freeze(restore_collector):
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    ids = {id(a), id(b)}
    del a, b
    freeze_startup_heap()
    gc.unfreeze()
    assert not any(id(obj) in ids and isinstance(obj, _Node) for obj in gc.get_objects())
