"""benchmarks/after_drafts.py: the step after a drafting step queued ahead, waited for, or learned."""
from __future__ import annotations

import after_drafts
from engine import DEFAULT_MODEL
from engine.overlap_choice import OverlapChoice
from engine.tokenizer import Tokenizer
from tests.benchmarks.test_host_overhead import _requests


def _table(seqs: int, rows: int, measured_s: float) -> float:
    return 0.002


def test_each_way_runs_as_it_says_and_the_learned_choice_comes_back():
    tokenizer = Tokenizer(DEFAULT_MODEL)
    learned = OverlapChoice.ahead
    rows = {way: after_drafts.run(4, way, _requests(tokenizer), tokenizer, _table, steps=30, warmup=2)
            for way in after_drafts.WAYS}
    assert OverlapChoice.ahead is learned
    assert all(row["steps"] > 0 and row["tokens_per_s"] > 0 for row in rows.values())
    # (the requests end within the 30 steps.) Queued ahead, every step is; waiting, the steps after
    # drafting steps are not (some draft here: their bodies repeat themselves).
    ahead, wait = rows["ahead"], rows["wait"]
    assert ahead["overlapped"] == ahead["steps"] and wait["overlapped"] < wait["steps"]
