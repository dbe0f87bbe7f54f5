"""The unbiased pass@k estimator of the Codex paper (Chen et al., 2021), in its stable form."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, of which c are
    correct, is correct: 1 - C(n-c, k) / C(n, k), computed as a product to avoid huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k(totals: Sequence[int], corrects: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over tasks, for each k that every task has enough samples for (k <= n)."""
    if len(totals) != len(corrects) or not totals:
        raise ValueError("need one (n, c) pair per task, and at least one task")
    return {f"pass@{k}": float(np.mean([estimate_pass_at_k(n, c, k) for n, c in zip(totals, corrects)]))
            for k in ks if k <= min(totals)}
