from __future__ import annotations

import gc

import pytest

from engine import EngineConfig
from engine.gc_tuning import YOUNG_THRESHOLD, raise_young_threshold
from engine.llm_engine import LLMEngine


@pytest.fixture
def thresholds():
    saved, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*saved)
    (gc.enable if enabled else gc.disable)()


def test_default_threshold_is_raised(thresholds):
    gc.set_threshold(700, 10, 10)
    assert raise_young_threshold()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)


def test_a_threshold_set_by_the_process_is_left_alone(thresholds):
    gc.set_threshold(1234, 5, 5)
    assert not raise_young_threshold()
    assert gc.get_threshold() == (1234, 5, 5)
    gc.set_threshold(700, 10, 10)
    gc.disable()
    assert not raise_young_threshold()
    assert gc.get_threshold() == (700, 10, 10)


def test_an_engine_raises_it(thresholds, tiny_model_dir):
    gc.set_threshold(700, 10, 10)
    LLMEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=8))
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
