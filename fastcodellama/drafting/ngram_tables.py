"""Tables of n-gram keys for the copy-draft indexes (fastcodellama/ngram_index.py).

A set of tables holds one map per suffix length m in [n, max_match], from the key of m tokens
to a value (an end position, or an end packed with the text it belongs to). Two
implementations answer alike: DictTables, Python dicts (the reference), and CTables, the same
walk over a C hash table (ngram_tables.c, built once per machine as a CPython extension;
indexing a token costs ~0.1 us there against ~2 us in the Python loop). `new_tables` picks
CTables when the extension builds, DictTables otherwise.

The key of tokens[e-m:e] rolls from the last token back: key_0 = 0,
key_j = ((key_{j-1} ^ (tokens[e-j] + 1)) * MIX) mod 2**64. Distinct single tokens get distinct
keys; two longer grams share one with probability ~2**-64, and then a draft is copied from the
wrong place and rejected by verification: the output never changes.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import subprocess
import sysconfig
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

MIX = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1
MAX_MATCH = 8       # the C walk's limit
POS_BITS = 32       # values pack (text or member) << POS_BITS | end


def mix(key: int, token: int) -> int:
    return ((key ^ (token + 1)) * MIX) & MASK


def tail_keys(tokens: Sequence[int], end: int, n: int, max_match: int) -> list[int | None]:
    """keys[m] = key of tokens[end-m:end] for n <= m <= min(max_match, end), else None."""
    keys: list[int | None] = [None] * (max_match + 1)
    key = 0
    for m in range(1, min(max_match, end) + 1):
        key = ((key ^ (tokens[end - m] + 1)) * MIX) & MASK
        if m >= n:
            keys[m] = key
    return keys


class DictTables:
    """The reference: one dict per suffix length."""

    __slots__ = ("n", "max_match", "maps")

    def __init__(self, n: int, max_match: int) -> None:
        self.n, self.max_match = n, max_match
        self.maps: list[dict[int, int] | None] = [None] * n + [{} for _ in range(n, max_match + 1)]

    def get(self, m: int, key: int) -> int | None:
        return self.maps[m].get(key)

    def num_entries(self) -> int:
        return sum(len(t) for t in self.maps if t is not None)

    def index(self, tokens: Sequence[int], start: int, end: int, tag: int = 0,
              second: "DictTables | None" = None, member: int = -1) -> None:
        """For every end e in [start, end) and m in [n, min(max_match, e)]: self[m][key] = tag | e.
        With `second`, a value of another member (old >> POS_BITS != member) moves there first:
        self then holds each key's latest end over all members, second the latest from a member
        other than that one."""
        maps, n, mm = self.maps, self.n, self.max_match
        seconds = second.maps if second is not None else None
        for e in range(max(start, 1), min(end, len(tokens))):
            key = 0
            for m in range(1, min(mm, e) + 1):
                key = ((key ^ (tokens[e - m] + 1)) * MIX) & MASK
                if m >= n:
                    t = maps[m]
                    if seconds is not None:
                        old = t.get(key)
                        if old is not None and old >> POS_BITS != member:
                            seconds[m][key] = old
                    t[key] = tag | e

    def longest(self, tokens: Sequence[int], end: int, second: "DictTables | None" = None,
                member: int = -1) -> tuple[int, int] | None:
        """(m, value) for the longest m whose key (tokens[end-m:end]) is here, or None. With
        `second` (cross-member tables) a value of `member` itself gives way to second's."""
        keys = tail_keys(tokens, min(end, len(tokens)), self.n, self.max_match)
        for m in range(min(self.max_match, end, len(tokens)), self.n - 1, -1):
            v = self.maps[m].get(keys[m])
            if v is not None and second is not None and v >> POS_BITS == member:
                v = second.maps[m].get(keys[m])
            if v is not None:
                return m, v
        return None

    def run(self, tokens: Sequence[int], start: int, end: int, tag: int = 0, second: "DictTables | None" = None,
            member: int = -1) -> tuple:
        """index's arguments as one run for index_runs (batch_index), which indexes many in one call."""
        return self, tokens, start, end, self.n, self.max_match, tag, second, member

    def evict(self, tokens: Sequence[int], start: int, end: int, tag: int) -> None:
        """Deletes every entry still equal to tag | e for the ends e in [start, end)."""
        maps, n, mm = self.maps, self.n, self.max_match
        for e in range(max(start, 1), min(end, len(tokens))):
            key = 0
            for m in range(1, min(mm, e) + 1):
                key = ((key ^ (tokens[e - m] + 1)) * MIX) & MASK
                if m >= n and maps[m].get(key) == tag | e:
                    del maps[m][key]


class CTables:
    """DictTables over ngram_tables.c."""

    __slots__ = ("n", "max_match", "maps", "_c")

    def __init__(self, n: int, max_match: int, module) -> None:
        if max_match > MAX_MATCH:
            raise ValueError(f"max_match must be <= {MAX_MATCH}, got {max_match}")
        self.n, self.max_match, self._c = n, max_match, module
        self.maps = [None] * n + [module.new() for _ in range(n, max_match + 1)]

    def get(self, m: int, key: int) -> int | None:
        return self._c.get(self.maps[m], key)

    def num_entries(self) -> int:
        return sum(self._c.size(t) for t in self.maps if t is not None)

    def index(self, tokens: Sequence[int], start: int, end: int, tag: int = 0,
              second: "CTables | None" = None, member: int = -1) -> None:
        self._c.index(self.maps, tokens, start, end, self.n, self.max_match, tag,
                      second.maps if second is not None else None, member)

    def run(self, tokens: Sequence[int], start: int, end: int, tag: int = 0, second: "CTables | None" = None,
            member: int = -1) -> tuple:
        return (self.maps, tokens, start, end, self.n, self.max_match, tag,
                second.maps if second is not None else None, member)

    def longest(self, tokens: Sequence[int], end: int, second: "CTables | None" = None,
                member: int = -1) -> tuple[int, int] | None:
        return self._c.longest(self.maps, tokens, end, self.n, self.max_match,
                               second.maps if second is not None else None, member)

    def evict(self, tokens: Sequence[int], start: int, end: int, tag: int) -> None:
        self._c.evict(self.maps, tokens, start, end, self.n, self.max_match, tag)


@functools.cache
def load_extension():
    """The compiled module, or None (no compiler or Python headers, or the build failed)."""
    from engine.kernels.build import compile_once, compiler

    cc = compiler()
    include = sysconfig.get_paths().get("include")
    if cc is None or not include or not (Path(include) / "Python.h").exists():
        return None
    source = Path(__file__).with_name("ngram_tables.c")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    try:
        path = compile_once(cc, source, ("-O2", "-shared", "-fPIC", f"-I{include}"), "_ngram_tables", suffix)
        loader = importlib.machinery.ExtensionFileLoader("_ngram_tables", str(path))
        spec = importlib.util.spec_from_file_location("_ngram_tables", str(path), loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        return module
    except (OSError, ImportError, subprocess.CalledProcessError) as exc:
        log.warning("building the n-gram tables failed (%s): using Python dicts",
                    getattr(exc, "stderr", "") or exc)
        return None


def _c_module(factory: Callable[[int, int], DictTables | CTables]):
    """The compiled module behind a factory of C tables (table_factory's partial), else None."""
    return factory.keywords["module"] if isinstance(factory, functools.partial) else None


def batch_search(factory: Callable[[int, int], DictTables | CTables]) -> Callable | None:
    """ngram_tables.c's best_copies (a whole search's lookups in one call) where `factory` makes C
    tables; None for dicts (the proposer then looks each sequence up in Python)."""
    module = _c_module(factory)
    return module.best_copies if module is not None else None


def batch_index(factory: Callable[[int, int], DictTables | CTables]) -> Callable[[list[tuple]], None]:
    """What indexes a list of runs (Tables.run) in order: one C call where `factory` makes C tables."""
    module = _c_module(factory)
    return module.index_runs if module is not None else _index_dict_runs


def member_index(factory: Callable[[int, int], DictTables | CTables]) -> Callable | None:
    """ngram_tables.c's index_members (every running member's new tokens into its group's tables
    in one call) where `factory` makes C tables; None for dicts (the proposer then indexes each
    member in Python)."""
    module = _c_module(factory)
    return module.index_members if module is not None else None


def _index_dict_runs(runs: list[tuple]) -> None:
    for tables, tokens, start, end, _, _, tag, second, member in runs:
        tables.index(tokens, start, end, tag, second, member)


def table_factory(kind: str = "auto") -> Callable[[int, int], DictTables | CTables]:
    """kind: "c", "dict", or "auto" (C when it builds)."""
    if kind not in ("auto", "c", "dict"):
        raise ValueError(f"kind must be auto, c or dict, got {kind!r}")
    module = load_extension() if kind != "dict" else None
    if module is None:
        if kind == "c":
            raise RuntimeError("the n-gram tables' C extension could not be built")
        return DictTables
    return functools.partial(CTables, module=module)
