"""OverlapChoice: after a drafting step, queue the next step ahead or wait, by measured tokens per second."""
from __future__ import annotations

from engine.overlap_choice import EXPLOIT, PAIRS, WINDOW, OverlapChoice


def _windows(choice: OverlapChoice, seqs: int, rate, count: int) -> list[bool]:
    """`count` windows of steps, each way's tokens per second given by rate(ahead, window index);
    the way each window ran."""
    ways = []
    for w in range(count):
        ahead = choice.ahead(seqs)
        ways.append(ahead)
        for _ in range(WINDOW):
            assert choice.ahead(seqs) == ahead  # a window runs one way
            choice.observe(seqs, tokens=round(rate(ahead, w) * 0.01), seconds=0.01)
    return ways


def test_the_ways_run_in_turn_then_the_faster_with_a_pair_measured_again_now_and_then():
    choice = OverlapChoice()
    ways = _windows(choice, 16, lambda ahead, w: 1000.0 if ahead else 1500.0, 2 * PAIRS + EXPLOIT + 4)
    # pairs ahead first, then waiting first, in turn
    assert ways == [True, False, False, True] * (PAIRS // 2) + [False] * EXPLOIT + [True, False, False, True]


def test_a_trend_in_the_workload_weighs_on_both_ways_alike():
    """Throughput that rises steadily (sequences finishing, say) by more per window than one way
    is better would favour whichever way ran later; pairs that begin with either way in turn see
    the 5% advantage, of either way."""
    for faster in (True, False):
        choice = OverlapChoice()
        ways = _windows(choice, 64, lambda ahead, w: (1.05 if ahead == faster else 1.0) * 1000.0 * (1.0 + 0.1 * w),
                        2 * PAIRS + 1)
        assert ways[-1] is faster


def test_a_way_that_turned_faster_takes_over_and_batch_sizes_keep_their_own():
    choice = OverlapChoice()
    _windows(choice, 256, lambda ahead, w: 1000.0 if ahead else 2000.0, 2 * PAIRS)
    assert not choice.ahead(256) and not choice.ahead(300)  # 300: 256's bucket (powers of two, in the logarithm)
    assert choice.ahead(16)  # a batch size with nothing measured starts ahead
    ways = _windows(choice, 256, lambda ahead, w: 3000.0 if ahead else 2000.0, 5 * (EXPLOIT + 4))
    assert ways[-(EXPLOIT + 4):].count(True) >= EXPLOIT + 2  # the faster way, but for pairs measured
