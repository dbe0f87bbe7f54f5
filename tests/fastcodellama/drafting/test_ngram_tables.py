"""The C n-gram tables against the reference dicts, operation by operation."""
from __future__ import annotations

import random

import pytest

from fastcodellama.drafting.ngram_tables import (POS_BITS, DictTables, batch_index, load_extension, member_index,
                                                 table_factory, tail_keys)

pytestmark = pytest.mark.skipif(load_extension() is None, reason="the C extension does not build here")


def assert_same(c, ref: DictTables) -> None:
    assert c.num_entries() == ref.num_entries()
    for m in range(ref.n, ref.max_match + 1):
        for key, value in ref.maps[m].items():
            assert c.get(m, key) == value


@pytest.mark.parametrize("n,max_match", [(1, 4), (2, 3), (1, 8)])
def test_index_evict_and_cross_tables_agree_with_the_dicts(n: int, max_match: int) -> None:
    rng = random.Random(n * 100 + max_match)
    ctables = table_factory("c")
    c_top, c_second = ctables(n, max_match), ctables(n, max_match)
    d_top, d_second = DictTables(n, max_match), DictTables(n, max_match)
    c_pool, d_pool = ctables(n, max_match), DictTables(n, max_match)
    texts = [[rng.randrange(6) for _ in range(rng.randrange(0, 400))] for _ in range(12)]
    done = [0] * len(texts)
    for _ in range(300):  # members write in interleaved runs; the cross tables see them in that order
        member = rng.randrange(len(texts))
        start, end = done[member], min(len(texts[member]), done[member] + rng.choice((1, 2, 5, 40)))
        done[member] = end
        tag = member << POS_BITS
        c_top.index(texts[member], start, end, tag, c_second, member)
        d_top.index(texts[member], start, end, tag, d_second, member)
    assert_same(c_top, d_top)
    assert_same(c_second, d_second)
    hits = 0
    for _ in range(200):  # the longest match of a tail, with a member's own occurrences giving way
        probe = [rng.randrange(6) for _ in range(rng.randrange(0, max_match + 2))]
        member = rng.randrange(len(texts))
        want = d_top.longest(probe, len(probe), d_second, member)
        assert c_top.longest(probe, len(probe), c_second, member) == want
        assert c_top.longest(probe, len(probe)) == d_top.longest(probe, len(probe))
        hits += want is not None
    assert hits > 100
    live = []
    for tid, text in enumerate(texts):  # a pool: whole texts in, oldest out (the deletions shift runs back)
        c_pool.index(text, n, len(text), tid << POS_BITS)
        d_pool.index(text, n, len(text), tid << POS_BITS)
        live.append(tid)
        if len(live) > 4:
            old = live.pop(0)
            c_pool.evict(texts[old], n, len(texts[old]), old << POS_BITS)
            d_pool.evict(texts[old], n, len(texts[old]), old << POS_BITS)
        assert_same(c_pool, d_pool)
    probe = [rng.randrange(6) for _ in range(max_match)]
    keys = tail_keys(probe, max_match, n, max_match)
    for m in range(n, max_match + 1):
        assert c_pool.get(m, keys[m]) == d_pool.get(m, keys[m])


def test_many_keys_grow_and_empty_out() -> None:
    c = table_factory("c")(1, 1)
    text = list(range(50_000))
    c.index(text, 1, len(text), 7 << POS_BITS)
    assert c.num_entries() == len(text) - 1
    assert c.get(1, tail_keys(text, 1234, 1, 1)[1]) == 7 << POS_BITS | 1234
    c.evict(text, 1, len(text), 7 << POS_BITS)
    assert c.num_entries() == 0
    assert c.get(1, tail_keys(text, 1234, 1, 1)[1]) is None


def test_a_bad_token_raises_and_the_ends_before_it_stay() -> None:
    c = table_factory("c")(1, 2)
    with pytest.raises(TypeError):
        c.index([1, 2, "x", 4], 1, 4)
    keys = tail_keys([1, 2], 2, 1, 2)
    assert c.get(1, keys[1]) == 2 and c.get(2, keys[2]) == 2 and c.num_entries() == 3
    with pytest.raises(ValueError):
        table_factory("c")(1, 9)
    with pytest.raises(ValueError):
        table_factory("python")


def test_runs_indexed_in_one_call_agree_with_the_dicts_run_by_run() -> None:
    """batch_index: the runs of many texts (cross tables among them) in one C call, in their order,
    leave the tables the dicts' index calls leave; a malformed run is an error, not a crash."""
    rng = random.Random(3)
    ctables = table_factory("c")
    c_own, c_top, c_second = ctables(1, 4), ctables(1, 4), ctables(1, 4)
    d_own, d_top, d_second = DictTables(1, 4), DictTables(1, 4), DictTables(1, 4)
    texts = [[rng.randrange(5) for _ in range(rng.randrange(1, 80))] for _ in range(6)]
    c_runs, d_runs, done = [], [], [1] * len(texts)
    for _ in range(40):
        member = rng.randrange(len(texts))
        start, end = done[member], min(len(texts[member]), done[member] + rng.choice((1, 3, 20)))
        done[member] = end
        for own, top, second, runs in ((c_own, c_top, c_second, c_runs), (d_own, d_top, d_second, d_runs)):
            runs.append(own.run(texts[member], start, end))
            runs.append(top.run(texts[member], start, end, member << POS_BITS, second, member))
    batch_index(ctables)(c_runs)
    batch_index(DictTables)(d_runs)
    for c, d in ((c_own, d_own), (c_top, d_top), (c_second, d_second)):
        assert_same(c, d)
    assert d_top.num_entries() > 50 and d_second.num_entries() > 10
    with pytest.raises(TypeError):
        batch_index(ctables)([(c_own.maps, texts[0])])


def test_a_malformed_member_is_an_error_and_what_came_before_it_stays() -> None:
    """member_index (the proposer's indexing of every running member in one call): a member that
    is not (output, text, prompt_len, cursor of 2, ...) with lists where lists belong, or whose
    text is shorter than its prompt, raises; the members before it are indexed."""
    index_members = member_index(table_factory("c"))
    own = table_factory("c")(1, 4)
    output, text, cursor = [3, 4, 5], [1, 2], [2, 2]
    good = (output, text, 2, cursor, own.maps, None, None, None, 0)
    bad = [(output,), (tuple(output), *good[1:]), (output, text, 2, [2], *good[4:]),
           (output, text, 2, cursor, own.maps, [], None, None, 0), (output, [1], 2, *good[3:])]
    for member in bad:
        with pytest.raises((TypeError, ValueError)):
            index_members([member], 1, 4)
    with pytest.raises(TypeError):
        index_members([good, bad[0]], 1, 4)
    assert text == [1, 2, 3, 4, 5] and cursor == [5, 2] and own.get(1, tail_keys(text, 4, 1, 4)[1]) == 4
    with pytest.raises(ValueError):
        index_members([], 0, 4)
