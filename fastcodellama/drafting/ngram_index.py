"""Incremental n-gram indexes over growing token texts, for copy drafting.

For every suffix length m in [n, max_match] a table maps the last m tokens before a position
e (the "key ending at e") to the most recent such e. A key enters a table only once the text
has a token at e, so a hit always has at least one token to copy and the copy never runs past
what the text holds. Appending a token to a text adds the keys ending just before it: O(1)
work per accepted token, never a rescan of the history. The work is done lazily, at the next
lookup (`sync`): while drafting is paused, texts only grow, and those that finish in the
meantime are never indexed for themselves. The tables and their keys are
fastcodellama/ngram_tables.py's (C hash tables where the extension builds, dicts otherwise).

Three kinds of index, one per copy source:
  GroupIndex: the texts of one request's samples (a group). Each member's own output keys
      ("self"), the shared prompt's keys, and a cross-member table that keeps, per key, the
      latest end over all members plus the latest end from any other member ("sibling": the
      newest occurrence in a text other than the asking one).
  OtherPool: finished outputs of other requests, at most `capacity` tokens, oldest evicted.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Sequence

from fastcodellama.drafting.ngram_tables import POS_BITS, DictTables, CTables, batch_index, table_factory, tail_keys

__all__ = ["MAX_TOKEN_ID", "GroupIndex", "NgramTables", "OtherPool", "check_token_ids", "tail_keys"]

MAX_TOKEN_ID = (1 << 31) - 1
_POS_MASK = (1 << POS_BITS) - 1
Tables = DictTables | CTables
TableFactory = Callable[[int, int], Tables]


def check_token_ids(token_ids: Sequence[int]) -> None:
    for t in token_ids:
        if not 0 <= t <= MAX_TOKEN_ID:
            raise ValueError(f"token ids must lie in [0, {MAX_TOKEN_ID}] to be indexed, got {t}")


class NgramTables:
    """Most recent end of every m-gram of one text, for ends in [n, len(tokens) - 1].

    `tokens` is the caller's list (it grows in place); `sync()` indexes what was appended.
    """

    __slots__ = ("tokens", "tables", "next_end")

    def __init__(self, tokens: list[int], n: int, max_match: int, tables: TableFactory | None = None) -> None:
        self.tokens = tokens
        self.tables = (tables or table_factory())(n, max_match)
        self.next_end = n
        self.sync()

    def sync(self) -> None:
        end = len(self.tokens)
        if end > self.next_end:
            self.tables.index(self.tokens, self.next_end, end)
            self.next_end = end

    def get(self, m: int, key: int) -> int | None:
        return self.tables.get(m, key)


class GroupIndex:
    """The texts of one group (the samples of one request) and their self and sibling keys.

    Members share the prompt: its keys (ends before the prompt's last token) are indexed once.
    A member whose prompt differs indexes its prompt in its own tables instead.
    """

    def __init__(self, prompt: Sequence[int], n: int, max_match: int, siblings: bool = True,
                 tables: TableFactory | None = None) -> None:
        self.n, self.max_match, self.siblings = n, max_match, siblings
        self._new = tables or table_factory()
        self._index_runs = batch_index(self._new)
        self.prompt = list(prompt)
        self.prompt_tables = NgramTables(self.prompt, n, max_match, tables=self._new)
        self.texts: dict[int, list[int]] = {}       # member -> prompt + output so far
        self.own: dict[int, Tables] = {}            # running members only: the keys of their own text
        # member -> [next end of its own keys, next end of its keys in the cross tables]: lists,
        # so that ngram_tables.c's index_members advances them where a proposer indexes in C.
        self.cursors: dict[int, list[int]] = {}
        self.shares_prompt: dict[int, bool] = {}
        self.live: set[int] = set()
        # Cross-member tables: top[m][key] = member << POS_BITS | end of the latest occurrence;
        # second[m][key] = the latest occurrence in a member other than top's.
        self.top = self._new(n, max_match)
        self.second = self._new(n, max_match)
        self._dirty: dict[int, None] = {}           # members with tokens not yet indexed, in order

    def add_member(self, member: int, prompt: Sequence[int]) -> list[int]:
        tokens = list(prompt)
        shared = tokens == self.prompt
        first_end = len(tokens) if shared else 1
        self.texts[member] = tokens
        self.shares_prompt[member] = shared
        own = self.own[member] = self._new(self.n, self.max_match)
        cursor = self.cursors[member] = [max(first_end, self.n), max(len(tokens), self.n)]
        if len(tokens) > cursor[0]:  # a prompt of its own: its keys are the member's own
            own.index(tokens, cursor[0], len(tokens))
            cursor[0] = len(tokens)
        self.live.add(member)
        if self.siblings and len(self.texts) == 2:
            self.sync_all_cross()
        return tokens

    def extend(self, member: int, token_ids: Sequence[int]) -> None:
        """Appends to the member's text; indexed at the next `sync`."""
        self.texts[member].extend(token_ids)
        self._dirty[member] = None

    def sync(self) -> None:
        """Indexes what members appended since the last sync (in the order they appended)."""
        if self._dirty:
            runs: list[tuple] = []
            self.take_runs(runs)
            self._index_runs(runs)

    def take_runs(self, runs: list[tuple]) -> None:
        """sync as runs appended to `runs` (Tables.run, in the order sync indexes them), taken as
        indexed: a caller indexes many groups' runs in one call (ngram_tables.batch_index)."""
        if not self._dirty:
            return
        cross = self.siblings and len(self.texts) > 1
        for member in self._dirty:
            text, cursor = self.texts[member], self.cursors[member]
            end = len(text)
            own = self.own.get(member)  # a finished member's text stays readable by its siblings only
            if own is not None and end > cursor[0]:
                runs.append(own.run(text, cursor[0], end))
                cursor[0] = end
            if cross and end > cursor[1]:
                runs.append(self.top.run(text, cursor[1], end, member << POS_BITS, self.second, member))
                cursor[1] = end
        self._dirty.clear()

    def sync_all_cross(self) -> None:
        """Index what earlier members wrote before a sibling existed (once, when one joins): every
        member goes through sync, after those already waiting for it."""
        self._dirty.update(dict.fromkeys(self.texts))
        self.sync()

    def finish(self, member: int) -> list[int]:
        """The member stops asking for drafts; its text stays readable by its siblings."""
        self.own.pop(member, None)
        self.live.discard(member)
        return self.texts[member]

    def longest_self(self, member: int) -> tuple[int, int] | None:
        """(m, e): the longest m in [n, max_match] whose last m tokens of the member's text occur
        earlier in it (output first, then the shared prompt at equal m), at the latest end e."""
        if self._dirty:
            self.sync()
        toks = self.texts[member]
        hit = self.own[member].longest(toks, len(toks))
        if self.shares_prompt[member] and (hit is None or hit[0] < self.max_match):
            in_prompt = self.prompt_tables.tables.longest(toks, len(toks))
            if in_prompt is not None and (hit is None or in_prompt[0] > hit[0]):
                hit = in_prompt
        return hit

    def longest_sibling(self, member: int) -> tuple[int, list[int], int] | None:
        """(m, text, e): the longest m whose last m tokens of the member's text occur in another
        member's, at the newest such occurrence."""
        if not self.siblings:
            return None
        if self._dirty:
            self.sync()
        toks = self.texts[member]
        hit = self.top.longest(toks, len(toks), self.second, member)
        if hit is None:
            return None
        m, v = hit
        return m, self.texts[v >> POS_BITS], v & _POS_MASK

    def lookup_self(self, member: int, m: int, key: int) -> int | None:
        if self._dirty:
            self.sync()
        e = self.own[member].get(m, key)
        if e is None and self.shares_prompt[member]:
            e = self.prompt_tables.tables.get(m, key)
        return e

    def lookup_sibling(self, member: int, m: int, key: int) -> tuple[list[int], int] | None:
        if not self.siblings:
            return None
        if self._dirty:
            self.sync()
        v = self.top.get(m, key)
        if v is not None and (v >> POS_BITS) == member:
            v = self.second.get(m, key)
        if v is None:
            return None
        return self.texts[v >> POS_BITS], v & _POS_MASK


class OtherPool:
    """Finished outputs of other requests: at most `capacity` tokens, oldest evicted first.

    Values pack (text id, end). Texts enter and leave in order, so when an entry's text is
    evicted every older occurrence of that key is gone too: eviction deletes exactly the
    entries that point into the evicted text, and lookups never see a stale one. Texts are
    indexed at the first lookup after they came (while drafting is paused none is looked up,
    and a text evicted before then is never indexed at all).
    """

    def __init__(self, n: int, max_match: int, capacity: int, tables: TableFactory | None = None) -> None:
        self.n, self.max_match, self.capacity = n, max_match, capacity
        self.tables = (tables or table_factory())(n, max_match)
        self.texts: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.groups: dict[int, str] = {}
        self.num_tokens = 0
        self._next_id = 0
        self._unindexed: deque[int] = deque()  # the newest texts, in order

    def __len__(self) -> int:
        return len(self.texts)

    def num_entries(self) -> int:
        self._sync()
        return self.tables.num_entries()

    def add(self, token_ids: Sequence[int], group_id: str = "") -> None:
        if self.capacity <= 0 or len(token_ids) < 2:
            return
        text = tuple(token_ids[-self.capacity:])
        tid = self._next_id
        self._next_id += 1
        while self.texts and self.num_tokens + len(text) > self.capacity:
            self._evict_oldest()
        self.texts[tid] = text
        self.groups[tid] = group_id
        self.num_tokens += len(text)
        self._unindexed.append(tid)

    def _sync(self) -> None:
        while self._unindexed:
            tid = self._unindexed.popleft()
            text = self.texts[tid]
            self.tables.index(text, self.n, len(text), tid << POS_BITS)

    def _evict_oldest(self) -> None:
        tid, text = self.texts.popitem(last=False)
        del self.groups[tid]
        self.num_tokens -= len(text)
        if self._unindexed and self._unindexed[0] == tid:  # never indexed: no entry to delete
            self._unindexed.popleft()
            return
        self.tables.evict(text, self.n, len(text), tid << POS_BITS)

    def synced(self) -> tuple[list, OrderedDict[int, tuple[int, ...]]]:
        """Every text indexed: the tables by suffix length and the texts by id, for a search that
        reads them itself (ngram_tables.c's best_copies)."""
        if self._unindexed:
            self._sync()
        return self.tables.maps, self.texts

    def longest(self, tokens: Sequence[int], end: int) -> tuple[int, tuple[int, ...], int, str] | None:
        """(m, text, e, group id) for the longest m whose last m tokens before `end` occur in
        the pool, at the newest occurrence."""
        if self._unindexed:
            self._sync()
        hit = self.tables.longest(tokens, end)
        if hit is None:
            return None
        m, v = hit
        tid = v >> POS_BITS
        return m, self.texts[tid], v & _POS_MASK, self.groups[tid]

    def lookup(self, m: int, key: int) -> tuple[tuple[int, ...], int, str] | None:
        if self._unindexed:
            self._sync()
        v = self.tables.get(m, key)
        if v is None:
            return None
        tid = v >> POS_BITS
        return self.texts[tid], v & _POS_MASK, self.groups[tid]
