"""The collector settings the server process applies at start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service import gc_tuning


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_tune_sets_the_young_threshold_and_keeps_the_older_ratios() -> None:
    gc_tuning.tune(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)


@pytest.mark.usefixtures("restore_gc")
def test_zero_leaves_the_interpreter_setting() -> None:
    gc.set_threshold(123, 4, 5)
    gc_tuning.tune(0)
    assert gc.get_threshold() == (123, 4, 5)


@pytest.mark.usefixtures("restore_gc")
def test_freeze_moves_existing_objects_out_of_collection() -> None:
    survivor = [object() for _ in range(100)]
    gc_tuning.freeze_startup_objects()
    assert gc.get_freeze_count() >= len(survivor)
