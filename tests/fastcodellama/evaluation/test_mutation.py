"""Type-aware input mutation: deterministic, new, and of the same kinds as the known inputs."""
from __future__ import annotations

import random

from fastcodellama.evaluation.mutation import mutate_inputs, mutate_value

KNOWN = [([1, 2, 3], "ab1", 4), ([], "Zz9", 0), ([5, -1], "", 7)]


def test_deterministic_for_a_seed_and_varied_across_seeds():
    first = mutate_inputs(KNOWN, 20, seed=0, salt="HumanEval/1")
    assert first == mutate_inputs(KNOWN, 20, seed=0, salt="HumanEval/1")
    assert first != mutate_inputs(KNOWN, 20, seed=1, salt="HumanEval/1")
    assert first != mutate_inputs(KNOWN, 20, seed=0, salt="HumanEval/2")


def test_new_distinct_and_same_types():
    found = mutate_inputs(KNOWN, 30, seed=3)
    assert len(found) == 30 and len({repr(f) for f in found}) == 30
    assert not {repr(f) for f in found} & {repr(k) for k in KNOWN}
    for args in found:
        assert [type(a) for a in args] == [list, str, int]
        assert all(isinstance(x, int) for x in args[0])
        assert args[2] >= 0  # non-negative numbers stay non-negative


def test_value_kinds_are_kept():
    rng = random.Random(0)
    for _ in range(200):
        assert isinstance(mutate_value(rng, True), bool)
        assert isinstance(mutate_value(rng, 2.5), float)
        assert mutate_value(rng, 2.5) >= 0
        assert isinstance(mutate_value(rng, {"a": 1}), dict)
        assert isinstance(mutate_value(rng, (1, "x")), tuple) and len(mutate_value(rng, (1, "x"))) == 2
        digits = mutate_value(rng, "12:30")
        assert set(digits) <= set("0123456789:")  # digits become digits, ':' stays


def test_no_known_inputs_gives_nothing():
    assert mutate_inputs([], 10, seed=0) == []
