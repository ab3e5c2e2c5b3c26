"""Which collector thresholds a serving process sets (hogsend.cli.serving)."""

import gc
from collections.abc import Iterator

import pytest

from hogsend.cli.serving import API_GC_THRESHOLDS, WORKER_GC_THRESHOLDS, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_a_process_serving_the_api_collects_young_garbage_less_often() -> None:
    tune_garbage_collector(api=True)
    assert gc.get_threshold() == API_GC_THRESHOLDS


@pytest.mark.usefixtures("restored_gc")
def test_a_worker_alone_keeps_the_lower_threshold_that_bounds_its_memory() -> None:
    tune_garbage_collector(api=False)
    assert gc.get_threshold() == WORKER_GC_THRESHOLDS
    assert WORKER_GC_THRESHOLDS[0] < API_GC_THRESHOLDS[0]
