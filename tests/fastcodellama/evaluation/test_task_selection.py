"""Filter, clustering and submission order on small hand-made cases (no execution)."""
from __future__ import annotations

import pytest

from fastcodellama.evaluation.examples import Example
from fastcodellama.evaluation.task_selection import cluster_samples, filter_samples, normalise, select_task, submission

EXAMPLES = [Example("f(1)", (1,), 2), Example("f(2)", (2,), 4)]


def test_filter_keeps_those_passing_the_most_examples():
    assert filter_samples([2, 1, 2, 0]) == (0, 2)
    assert filter_samples([1, 0, 1]) == (0, 2)  # none passes all: the best ones still go on
    assert filter_samples([0, 0]) == (0, 1)  # none passes any: all go on


def test_clusters_by_normalised_outputs():
    outputs = [["=0.30000000000000004", "=[1, 2]"], ["=0.3", "=[1, 2]"], ["=0.3", "=[2, 1]"],
               ["!ZeroDivisionError", "=[1, 2]"], ["=3.0", "={'b': 1, 'a': 2}"], ["=3", "={'a': 2, 'b': 1}"]]
    assert cluster_samples(range(6), outputs) == [[0, 1], [2], [3], [4, 5]]
    assert normalise("=<object at 0x7f00aa>") == normalise("=<object at 0x7f11bb>")
    assert normalise("!timeout") == "!timeout"


def test_largest_clusters_first_one_sample_each():
    # samples 0-1 pass both examples, 2-5 only one; without the filter, 2, 3 and 5 form the largest cluster
    outputs = [["=2", "=4", "=9"], ["=2", "=4", "=9"], ["=2", "=5", "=9"], ["=2", "=5", "=9"], ["=2", "=5", "=1"],
               ["=2", "=5", "=9"]]
    chosen = select_task("t", EXAMPLES, outputs, submit=3)
    assert chosen.kept == (0, 1) and chosen.clusters == ((0, 1),) and chosen.submitted == (0, 1)
    assert chosen.passed_examples == (2, 2, 1, 1, 1, 1) and chosen.passed_all == 2
    unfiltered = select_task("t", EXAMPLES, outputs, submit=3, mode="cluster")
    assert unfiltered.clusters == ((2, 3, 5), (0, 1), (4,)) and unfiltered.submitted == (2, 0, 4)


def test_ties_by_log_probability_then_order_and_degenerate_clusters_last():
    outputs = [["!TypeError"]] * 3 + [["=1"], ["=2"], ["=2"], ["=1"], ["=None"]]
    plain = select_task("t", [], outputs, submit=4, mode="cluster")
    assert plain.clusters == ((3, 6), (4, 5), (0, 1, 2), (7,)) and plain.submitted == (3, 4, 0, 7)
    logprobs = [None, -1.0, None, -9.0, -5.0, -2.0, -8.0, None]
    ranked = select_task("t", [], outputs, submit=2, logprobs=logprobs, mode="cluster")
    assert ranked.clusters[:2] == ((5, 4), (6, 3)) and ranked.submitted == (5, 6)


def test_submission_goes_round_the_clusters_when_there_are_few():
    assert submission(((0, 1, 2), (3, 4), (5,)), 5) == (0, 3, 5, 1, 4)
    assert submission(((0,),), 3) == (0,)


def test_modes():
    outputs = [["=2", "=4", "=1"], ["=0", "=0", "=1"], ["=2", "=4", "=7"], ["=0", "=0", "=1"]]
    assert select_task("t", EXAMPLES, outputs, 1, mode="filter").clusters == ((0,), (2,))
    assert select_task("t", EXAMPLES, outputs, 1, mode="none").submitted == (0,)
    assert select_task("t", EXAMPLES, outputs, 1, mode="cluster").submitted == (1,)
    with pytest.raises(ValueError):
        select_task("t", EXAMPLES, outputs, 1, mode="best")
