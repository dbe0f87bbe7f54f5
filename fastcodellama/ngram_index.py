"""Incremental n-gram indexes over growing token texts, for copy drafting.

For every suffix length m in [n, max_match] a table maps the last m tokens before a position
e (the "key ending at e") to the most recent such e. A key enters a table only once the text
has a token at e, so a hit always has at least one token to copy and the copy never runs past
what the text holds. Appending a token to a text adds the keys ending just before it: O(1)
work per accepted token, never a rescan of the history. The work is done lazily, at the next
lookup (`sync`): while drafting is paused, texts only grow, and those that finish in the
meantime are never indexed for themselves.

Keys pack m token ids into one int (KEY_BITS bits each): cheaper to hash and to store than
tuples. Token ids must be below 2**KEY_BITS.

Three kinds of index, one per copy source:
  GroupIndex: the texts of one request's samples (a group). Each member's own output keys
      ("self"), the shared prompt's keys, and a cross-member table that keeps, per key, the
      latest end over all members plus the latest end from any other member ("sibling": the
      newest occurrence in a text other than the asking one).
  OtherPool: finished outputs of other requests, at most `capacity` tokens, oldest evicted.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Sequence

KEY_BITS = 20
MAX_TOKEN_ID = (1 << KEY_BITS) - 1
_POS_BITS = 32
_POS_MASK = (1 << _POS_BITS) - 1


def tail_keys(tokens: Sequence[int], end: int, n: int, max_match: int) -> list[int | None]:
    """keys[m] = packed key of tokens[end-m:end] for n <= m <= min(max_match, end), else None."""
    keys: list[int | None] = [None] * (max_match + 1)
    key = 0
    for m in range(1, min(max_match, end) + 1):
        key |= tokens[end - m] << (KEY_BITS * (m - 1))
        if m >= n:
            keys[m] = key
    return keys


def check_token_ids(token_ids: Sequence[int]) -> None:
    for t in token_ids:
        if not 0 <= t <= MAX_TOKEN_ID:
            raise ValueError(f"token ids must lie in [0, {MAX_TOKEN_ID}] to be indexed, got {t}")


def _new_tables(n: int, max_match: int) -> list[dict[int, int] | None]:
    return [None] * n + [{} for _ in range(n, max_match + 1)]


class NgramTables:
    """Most recent end of every m-gram of one text, for ends in [first_end, len(tokens) - 1].

    `tokens` is the caller's list (it grows in place); `sync()` indexes what was appended.
    """

    __slots__ = ("n", "max_match", "tokens", "tables", "next_end")

    def __init__(self, tokens: list[int], n: int, max_match: int, first_end: int = 1) -> None:
        self.n, self.max_match, self.tokens = n, max_match, tokens
        self.tables = _new_tables(n, max_match)
        self.next_end = max(first_end, n)
        self.sync()

    def sync(self) -> None:
        toks, tables, n, mm = self.tokens, self.tables, self.n, self.max_match
        for e in range(self.next_end, len(toks)):
            key = 0
            for m in range(1, min(mm, e) + 1):
                key |= toks[e - m] << (KEY_BITS * (m - 1))
                if m >= n:
                    tables[m][key] = e
        self.next_end = max(self.next_end, len(toks))

    def get(self, m: int, key: int) -> int | None:
        return self.tables[m].get(key)


class GroupIndex:
    """The texts of one group (the samples of one request) and their self and sibling keys.

    Members share the prompt: its keys (ends before the prompt's last token) are indexed once.
    A member whose prompt differs indexes its prompt in its own tables instead.
    """

    def __init__(self, prompt: Sequence[int], n: int, max_match: int, siblings: bool = True) -> None:
        self.n, self.max_match, self.siblings = n, max_match, siblings
        self.prompt = list(prompt)
        self.prompt_tables = NgramTables(self.prompt, n, max_match)
        self.texts: dict[int, list[int]] = {}       # member -> prompt + output so far
        self.own: dict[int, NgramTables] = {}       # running members only
        self.shares_prompt: dict[int, bool] = {}
        self.live: set[int] = set()
        # Cross-member tables: top[m][key] = member << 32 | end of the latest occurrence;
        # second[m][key] = the latest occurrence in a member other than top's.
        self.top = _new_tables(n, max_match)
        self.second = _new_tables(n, max_match)
        self.sib_next: dict[int, int] = {}          # member -> next end to index in the cross tables
        self._dirty: dict[int, None] = {}           # members with tokens not yet indexed, in order

    def add_member(self, member: int, prompt: Sequence[int]) -> list[int]:
        tokens = list(prompt)
        shared = tokens == self.prompt
        first_end = len(tokens) if shared else 1
        self.texts[member] = tokens
        self.shares_prompt[member] = shared
        self.own[member] = NgramTables(tokens, self.n, self.max_match, first_end)
        self.live.add(member)
        if self.siblings:
            self.sib_next[member] = max(len(tokens), self.n)
            if len(self.texts) == 2:
                self.sync_all_cross()
        return tokens

    def extend(self, member: int, token_ids: Sequence[int]) -> None:
        """Appends to the member's text; indexed at the next `sync`."""
        self.texts[member].extend(token_ids)
        self._dirty[member] = None

    def sync(self) -> None:
        """Indexes what members appended since the last sync (in the order they appended)."""
        if self._dirty:
            for member in self._dirty:
                self._index(member)
            self._dirty.clear()

    def _index(self, member: int) -> None:
        toks = self.texts[member]
        own = self.own.get(member)
        if own is None:  # finished: its text stays readable by its siblings only
            if self.siblings and len(self.texts) > 1:
                self._sync_cross(member)
            return
        if not (self.siblings and len(self.texts) > 1):
            own.sync()
            return
        start = own.next_end
        if self.sib_next[member] != start:      # only after a sibling joined: catch up separately
            own.sync()
            self._sync_cross(member)
            return
        # One pass for both: the member's own tables and the cross-member tables.
        n, mm, mine = self.n, self.max_match, own.tables
        top, second = self.top, self.second
        tag = member << _POS_BITS
        for e in range(start, len(toks)):
            v = tag | e
            key = 0
            for m in range(1, min(mm, e) + 1):
                key |= toks[e - m] << (KEY_BITS * (m - 1))
                if m >= n:
                    mine[m][key] = e
                    t = top[m]
                    old = t.get(key)
                    if old is not None and (old >> _POS_BITS) != member:
                        second[m][key] = old
                    t[key] = v
        own.next_end = self.sib_next[member] = max(start, len(toks))

    def _sync_cross(self, member: int) -> None:
        toks, n, mm = self.texts[member], self.n, self.max_match
        top, second = self.top, self.second
        tag = member << _POS_BITS
        for e in range(self.sib_next[member], len(toks)):
            v = tag | e
            key = 0
            for m in range(1, min(mm, e) + 1):
                key |= toks[e - m] << (KEY_BITS * (m - 1))
                if m >= n:
                    t = top[m]
                    old = t.get(key)
                    if old is not None and (old >> _POS_BITS) != member:
                        second[m][key] = old
                    t[key] = v
        self.sib_next[member] = max(self.sib_next[member], len(toks))

    def sync_all_cross(self) -> None:
        """Index what earlier members wrote before a sibling existed (once, when one joins)."""
        self.sync()
        for member in self.texts:
            self._sync_cross(member)

    def finish(self, member: int) -> list[int]:
        """The member stops asking for drafts; its text stays readable by its siblings."""
        self.own.pop(member, None)
        self.live.discard(member)
        return self.texts[member]

    def lookup_self(self, member: int, m: int, key: int) -> int | None:
        if self._dirty:
            self.sync()
        e = self.own[member].tables[m].get(key)
        if e is None and self.shares_prompt[member]:
            e = self.prompt_tables.tables[m].get(key)
        return e

    def lookup_sibling(self, member: int, m: int, key: int) -> tuple[list[int], int] | None:
        if not self.siblings:
            return None
        if self._dirty:
            self.sync()
        v = self.top[m].get(key)
        if v is not None and (v >> _POS_BITS) == member:
            v = self.second[m].get(key)
        if v is None:
            return None
        return self.texts[v >> _POS_BITS], v & _POS_MASK


class OtherPool:
    """Finished outputs of other requests: at most `capacity` tokens, oldest evicted first.

    Values pack (text id, end). Texts enter and leave in order, so when an entry's text is
    evicted every older occurrence of that key is gone too: eviction deletes exactly the
    entries that point into the evicted text, and lookups never see a stale one. Texts are
    indexed at the first lookup after they came (while drafting is paused none is looked up,
    and a text evicted before then is never indexed at all).
    """

    def __init__(self, n: int, max_match: int, capacity: int) -> None:
        self.n, self.max_match, self.capacity = n, max_match, capacity
        self.tables = _new_tables(n, max_match)
        self.texts: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.groups: dict[int, str] = {}
        self.num_tokens = 0
        self._next_id = 0
        self._unindexed: deque[int] = deque()  # the newest texts, in order

    def __len__(self) -> int:
        return len(self.texts)

    def num_entries(self) -> int:
        self._sync()
        return sum(len(t) for t in self.tables if t is not None)

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
            tag = tid << _POS_BITS
            for e, key_m, key in self._keys(self.texts[tid]):
                self.tables[key_m][key] = tag | e

    def _keys(self, text: Sequence[int]):
        n, mm = self.n, self.max_match
        for e in range(n, len(text)):
            key = 0
            for m in range(1, min(mm, e) + 1):
                key |= text[e - m] << (KEY_BITS * (m - 1))
                if m >= n:
                    yield e, m, key

    def _evict_oldest(self) -> None:
        tid, text = self.texts.popitem(last=False)
        del self.groups[tid]
        self.num_tokens -= len(text)
        if self._unindexed and self._unindexed[0] == tid:  # never indexed: no entry to delete
            self._unindexed.popleft()
            return
        tag = tid << _POS_BITS
        for e, m, key in self._keys(text):
            t = self.tables[m]
            if t.get(key) == tag | e:
                del t[key]

    def lookup(self, m: int, key: int) -> tuple[tuple[int, ...], int, str] | None:
        if self._unindexed:
            self._sync()
        v = self.tables[m].get(key)
        if v is None:
            return None
        tid = v >> _POS_BITS
        return self.texts[tid], v & _POS_MASK, self.groups[tid]
