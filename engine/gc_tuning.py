"""How the engine's process collects cyclic garbage.

A step at a large batch allocates thousands of short-lived containers (rows, chunks, updates,
outputs). CPython's default runs a young collection whenever allocations outnumber frees by 700,
which a step's transient objects do several times over, and every tenth of those a middle one:
at 256 running sequences that was about a tenth of the host's step. Nearly all of those objects
are freed by reference counting by the end of the step, so a higher young threshold is almost
never reached. Memory is not at stake: only reference cycles wait longer to be collected.
(gc.freeze() is not used: an engine frozen and later dropped, as tests do, would never be freed.)
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
_DEFAULT_YOUNG = 700  # CPython's: a threshold set by someone else is left alone


def raise_young_threshold() -> bool:
    """Raises the young generation's threshold unless the process set its own or disabled the
    collector; returns whether it did."""
    young, middle, old = gc.get_threshold()
    if not gc.isenabled() or young != _DEFAULT_YOUNG:
        return False
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return True
