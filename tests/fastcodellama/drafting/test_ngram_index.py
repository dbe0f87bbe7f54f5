"""The incremental indexes against brute-force scans of the same texts."""
from __future__ import annotations

import random

import pytest

from fastcodellama.drafting.ngram_index import (
    MAX_TOKEN_ID,
    GroupIndex,
    NgramTables,
    OtherPool,
    check_token_ids,
    tail_keys,
)
from fastcodellama.drafting.ngram_tables import DictTables, load_extension, table_factory


@pytest.fixture(params=["dict", "c"])
def tables(request):
    """Every index test runs on the reference dicts and on the C tables."""
    if request.param == "c" and load_extension() is None:
        pytest.skip("the n-gram tables' C extension does not build here")
    return table_factory(request.param)


def brute_last_end(text: list[int], gram: list[int], limit: int, first_end: int = 1) -> int | None:
    """Most recent e in [first_end, limit - 1] with text[e-m:e] == gram (a token follows it)."""
    m = len(gram)
    for e in range(limit - 1, max(first_end, m) - 1, -1):
        if text[e - m:e] == gram:
            return e
    return None


def random_text(rng: random.Random, length: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(length)]


def grow_in_chunks(rng: random.Random, target: list[int], tokens: list[int], sync) -> None:
    while len(tokens) < len(target):
        step = rng.choice((1, 1, 1, 2, 3, 7))
        tokens.extend(target[len(tokens):len(tokens) + step])
        sync()


@pytest.mark.parametrize("n,max_match", [(1, 1), (1, 4), (2, 3), (3, 6)])
def test_tables_match_brute_force_at_every_length(n: int, max_match: int, tables) -> None:
    rng = random.Random(n * 10 + max_match)
    for _ in range(20):
        text = random_text(rng, rng.randrange(1, 80), rng.choice((2, 3, 5, 50)))
        tokens: list[int] = []
        idx = NgramTables(tokens, n, max_match, tables=tables)
        for L in range(1, len(text) + 1):
            tokens.append(text[L - 1])
            idx.sync()
            keys = tail_keys(tokens, L, n, max_match)
            for m in range(1, max_match + 1):
                if m < n or m > L:
                    assert keys[m] is None
                    continue
                assert idx.get(m, keys[m]) == brute_last_end(tokens, tokens[L - m:L], L)


def test_longest_match_first_and_copy_never_past_the_end(tables) -> None:
    tokens = [1, 2, 3, 9, 2, 3, 5, 3]
    idx = NgramTables(tokens, 1, 4, tables=tables)
    keys = tail_keys(tokens, len(tokens), 1, 4)
    assert idx.get(2, keys[2]) is None                   # "5 3" never occurred before
    assert idx.get(1, keys[1]) == 6                      # most recent earlier "3": ends at 6, copy "5 3"
    tokens.append(9)
    idx.sync()
    keys = tail_keys(tokens, len(tokens), 1, 4)
    assert idx.get(2, keys[2]) == 4                      # "3 9" ended at 4: longest match wins
    e = idx.get(1, tail_keys(tokens, len(tokens), 1, 1)[1])
    assert e == 4 and len(tokens) - e == 5               # the copy holds what the text has, no more


def test_incremental_equals_rebuilt(tables) -> None:
    rng = random.Random(7)
    for _ in range(30):
        n, mm = rng.choice(((1, 4), (2, 2), (1, 8)))
        text = random_text(rng, rng.randrange(0, 200), rng.choice((3, 20, 1000)))
        tokens: list[int] = []
        inc = NgramTables(tokens, n, mm, tables=tables)
        grow_in_chunks(rng, text, tokens, inc.sync)
        rebuilt = NgramTables(list(text), n, mm, tables=DictTables)
        assert inc.tables.num_entries() == rebuilt.tables.num_entries()
        for m in range(n, mm + 1):
            for key, e in rebuilt.tables.maps[m].items():
                assert inc.get(m, key) == e
        assert inc.next_end == rebuilt.next_end


def test_token_ids_are_checked() -> None:
    check_token_ids([0, MAX_TOKEN_ID])
    for bad in ([MAX_TOKEN_ID + 1], [-1]):
        with pytest.raises(ValueError):
            check_token_ids(bad)


class BruteGroup:
    """What GroupIndex should answer, from the plain texts and the order tokens arrived in."""

    def __init__(self, prompt: list[int]) -> None:
        self.prompt = prompt
        self.texts: dict[int, list[int]] = {}
        self.log: list[tuple[int, int]] = []       # (member, end) in the order ends became copyable

    def add(self, member: int) -> None:
        self.texts[member] = list(self.prompt)

    def extend(self, member: int, toks: list[int]) -> None:
        text = self.texts[member]
        old = len(text)
        text.extend(toks)
        start = max(old, len(self.prompt))
        self.log += [(member, e) for e in range(start, len(text))]

    def self_end(self, member: int, m: int) -> int | None:
        text = self.texts[member]
        return brute_last_end(text, text[len(text) - m:], len(text))

    def sibling_hit(self, member: int, m: int) -> tuple[int, int] | None:
        me = self.texts[member]
        gram = me[len(me) - m:]
        for other, e in reversed(self.log):
            if other != member and e >= m and self.texts[other][e - m:e] == gram:
                return other, e
        return None


def test_group_self_and_sibling_lookups_match_brute_force(tables) -> None:
    rng = random.Random(3)
    for trial in range(15):
        n, mm = (1, 4) if trial % 2 else (2, 3)
        vocab = rng.choice((3, 6, 30))
        prompt = random_text(rng, rng.randrange(mm, 30), vocab)
        group, ref = GroupIndex(prompt, n, mm, tables=tables), BruteGroup(prompt)
        members = list(range(rng.randrange(1, 5)))
        for mb in members:
            group.add_member(mb, prompt)
            ref.add(mb)
        for _ in range(60):
            mb = rng.choice(members)
            toks = random_text(rng, rng.choice((1, 1, 2, 4)), vocab)
            group.extend(mb, toks)
            ref.extend(mb, toks)
            q = rng.choice(members)
            text = group.texts[q]
            assert text == ref.texts[q]
            keys = tail_keys(text, len(text), n, mm)
            for m in range(n, mm + 1):
                assert group.lookup_self(q, m, keys[m]) == ref.self_end(q, m)
                hit = group.lookup_sibling(q, m, keys[m])
                want = ref.sibling_hit(q, m)
                if want is None:
                    assert hit is None
                else:
                    assert hit is not None and hit[0] is group.texts[want[0]] and hit[1] == want[1]
            lengths = range(min(mm, len(text)), n - 1, -1)   # the longest match first
            want_self = next(((m, e) for m in lengths if (e := ref.self_end(q, m)) is not None), None)
            assert group.longest_self(q) == want_self
            want_sib = next(((m, w) for m in lengths if (w := ref.sibling_hit(q, m)) is not None), None)
            got = group.longest_sibling(q)
            if want_sib is None:
                assert got is None
            else:
                assert got is not None and got[0] == want_sib[0] and got[1] is group.texts[want_sib[1][0]]
                assert got[2] == want_sib[1][1]


def test_a_late_sibling_sees_what_the_first_member_wrote(tables) -> None:
    prompt = [1, 2]
    group = GroupIndex(prompt, 1, 3, tables=tables)
    group.add_member(0, prompt)
    group.extend(0, [7, 8, 9, 4])
    group.add_member(1, prompt)
    group.extend(1, [5, 7])
    text, e = group.lookup_sibling(1, 1, tail_keys(group.texts[1], 4, 1, 1)[1])
    assert text[e:] == [8, 9, 4]


def test_a_member_with_another_prompt_indexes_its_own(tables) -> None:
    group = GroupIndex([1, 2, 3], 1, 2, tables=tables)
    group.add_member(0, [1, 2, 3])
    group.add_member(1, [4, 5, 4])
    key = tail_keys([4, 5, 4], 3, 1, 1)[1]
    assert group.lookup_self(1, 1, key) == 1
    assert group.lookup_self(0, 1, tail_keys([1, 2, 3, 1], 4, 1, 1)[1]) == 1


def test_finished_member_stays_visible_to_siblings(tables) -> None:
    group = GroupIndex([0], 1, 2, tables=tables)
    for mb in (0, 1):
        group.add_member(mb, [0])
    group.extend(0, [5, 6, 7])
    group.finish(0)
    assert group.live == {1}
    group.extend(1, [5])
    text, e = group.lookup_sibling(1, 2, tail_keys(group.texts[1], 2, 1, 2)[2])
    assert text[e:] == [6, 7]


def brute_pool(texts: list[list[int]], gram: list[int]) -> tuple[int, int] | None:
    m = len(gram)
    for i in range(len(texts) - 1, -1, -1):
        e = brute_last_end(texts[i], gram, len(texts[i]), first_end=m)
        if e is not None:
            return i, e
    return None


def test_pool_lookup_matches_brute_force_and_evicts_oldest(tables) -> None:
    rng = random.Random(11)
    cap = 120
    pool = OtherPool(1, 3, cap, tables=tables)
    live: list[list[int]] = []
    for step in range(80):
        text = random_text(rng, rng.randrange(0, 50), 8)
        pool.add(text)
        if len(text) >= 2:
            live.append(text[-cap:])
        while sum(map(len, live)) > cap:
            live.pop(0)
        assert pool.num_tokens == sum(map(len, live)) <= cap
        assert [list(t) for t in pool.texts.values()] == live
        if step % 4:  # texts are indexed at a lookup: some come and go between lookups, never indexed
            continue
        assert pool.num_entries() <= 3 * cap
        query = random_text(rng, 3, 8)
        keys = tail_keys(query, 3, 1, 3)
        longest = None
        for m in (1, 2, 3):
            got = pool.lookup(m, keys[m])
            want = brute_pool(live, query[3 - m:])
            if want is None:
                assert got is None
            else:
                assert got is not None and list(got[0]) == live[want[0]] and got[1] == want[1]
                longest = (m, got[0], got[1])
        got = pool.longest(query, 3)
        assert (got is None) == (longest is None)
        if got is not None:
            assert got[:3] == longest


def test_pool_with_no_room_stays_empty(tables) -> None:
    pool = OtherPool(1, 4, 0, tables=tables)
    pool.add([1, 2, 3, 1, 2])
    assert len(pool) == 0 and pool.num_entries() == 0
