"""The token a row held to JSON takes where its own choice is refused: the first in its order of
preference that the text's state allows. Sampler.preferred walks that order one token at a time
(the reference); this finds the same token without walking it.

The order is the sampler's: a greedy row's by logit; a sampled row's racing tokens (those its
filters keep) by race score, then the others by logit; ties by the smaller id. For all refused rows
at once, the CANDIDATES likeliest of each part of that order come to the host in one copy and are
checked in turn (inside a string, where most tokens may come, TEXT_CANDIDATES of it after them).
Where none of them is allowed, or a tie straddles the cut, the state's allowed
tokens as a mask (TokenMasks: built once per state by walking the tokens' sorted texts, the last
MAX_STATES kept) give the first allowed by a masked argmax. A state whose mask is kept skips the
checks. A row whose state allows no token keeps its choice, as the walk does.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from engine.json_object import JsonTokens, ThinkFirst

CANDIDATES = 32  # of each part of a row's order, checked one by one before a mask is built
# Inside a string most tokens are allowed and a mask walks nearly every token's text: before one is
# built there, this many are checked.
TEXT_CANDIDATES = 1024
MAX_STATES = 256  # masks kept (each a byte per vocabulary entry)

Allows = Callable[[object, int], bool]


class TokenMasks:
    """Per state, which tokens may come next, as a bool tensor over the logits' columns: what
    JsonTokens.allows says of each, found by walking the tokens' texts in sorted order as a trie
    (the texts that share a prefix are a range; a prefix the state refuses cuts off its range)."""

    def __init__(self, tokens: JsonTokens) -> None:
        self.tokens = tokens
        self._sorted: tuple[list[str], list[int]] | None = None
        self._kept: OrderedDict = OrderedDict()

    def known(self, state) -> bool:
        return state in self._kept

    def allowed(self, state, width: int, device: torch.device) -> torch.Tensor:
        mask = self._kept.get(state)
        if mask is None or mask.shape[0] != width or mask.device != device:
            mask = self._build(state, width, device)
            self._kept[state] = mask
            if len(self._kept) > MAX_STATES:
                self._kept.popitem(last=False)
        self._kept.move_to_end(state)
        return mask

    def _build(self, state, width: int, device: torch.device) -> torch.Tensor:
        if type(state) is ThinkFirst:
            return self._think_first(state, width, device)
        tokens = self.tokens
        machine = tokens.machine(state)
        ids = self._walk(machine, state)
        if machine.in_string(state):  # pieces without text of their own may come inside a string
            ids += [i for i, t in enumerate(tokens.texts[:width]) if t is None]
            ids += range(len(tokens.texts), width)
        mask = torch.zeros(width, dtype=torch.bool)
        mask[torch.tensor(ids, dtype=torch.long)] = True
        eos = [i for i in tokens.eos_ids if i < width]
        mask[eos] = machine.complete(state)
        return mask.to(device)

    def _think_first(self, state: ThinkFirst, width: int, device: torch.device) -> torch.Tensor:
        """Inside the reasoning any token but an end of text; before it, its opening or what the
        constraint's start allows."""
        if state.inside:
            mask = torch.ones(width, dtype=torch.bool)
            mask[[i for i in self.tokens.eos_ids if i < width]] = False
            return mask.to(device)
        mask = self.allowed(state.then, width, device).clone()
        if state.open_id is not None and state.open_id < width:
            mask[state.open_id] = True
        return mask

    def _walk(self, machine, state) -> list[int]:
        """The ids of the texted tokens the state allows."""
        texts, ids = self._texts()
        found: list[int] = []
        stack = [(0, len(texts), 0, state)]  # a range of texts sharing their first `depth` characters, and the state after them
        while stack:
            lo, hi, depth, at = stack.pop()
            while lo < hi and len(texts[lo]) == depth:  # the prefix itself: a token, allowed since `at` is a state
                found.append(ids[lo])
                lo += 1
            while lo < hi:
                prefix = texts[lo][:depth + 1]
                end = bisect_right(texts, prefix + "\U0010ffff", lo, hi)
                after = machine.feed(at, prefix[-1])
                if after is not None:
                    stack.append((lo, end, depth + 1, after))
                lo = end
        return found

    def _texts(self) -> tuple[list[str], list[int]]:
        """The texted tokens' texts in sorted order, and their ids: made on first use."""
        if self._sorted is None:
            pairs = sorted((text, i) for i, text in enumerate(self.tokens.texts) if text)
            self._sorted = [text for text, _ in pairs], [i for _, i in pairs]
        return self._sorted


def first_allowed_greedy(x: torch.Tensor, states: Sequence, chosen: list[int], allows: Allows,
                         masks: TokenMasks) -> None:
    """Greedy rows (x: their logits, one row each): chosen[i] becomes the likeliest token states[i] allows."""
    vals, ids = _top(x)
    for i, state in enumerate(states):
        token, decided = (None, False) if masks.known(state) else _first(x[i], vals[i], ids[i], x.shape[1], state,
                                                                          allows, masks)
        if not decided:
            token = _best(x[i], masks.allowed(state, x.shape[1], x.device))
        if token is not None:
            chosen[i] = token


def first_allowed_sampled(x: torch.Tensor, racing: torch.Tensor, score: torch.Tensor, states: Sequence,
                          chosen: list[int], allows: Allows, masks: TokenMasks) -> None:
    """Sampled rows: `racing` the tokens their filters keep, `score` their race scores; chosen[i]
    becomes the first token states[i] allows among the racing ones by score, else among the rest
    by logit."""
    race_key, rest_key = torch.where(racing, score, -1.0), torch.where(racing, float("-inf"), x)
    race_vals, race_ids = _top(race_key)
    rest_vals, rest_ids = _top(rest_key)
    counts = racing.sum(dim=-1).tolist()
    width = x.shape[1]
    for i, state in enumerate(states):
        token, decided = None, False
        if not masks.known(state):
            token, decided = _first(race_key[i], race_vals[i], race_ids[i], counts[i], state, allows, masks)
            if decided and token is None:
                token, decided = _first(rest_key[i], rest_vals[i], rest_ids[i], width - counts[i], state, allows,
                                        masks)
        if not decided:
            allowed = masks.allowed(state, width, x.device)
            token = _best(score[i], allowed & racing[i], floor=-1.0)  # racing scores are >= 0
            if token is None:
                token = _best(x[i], allowed)
        if token is not None:
            chosen[i] = token


def _first(key: torch.Tensor, vals: list[float], ids: list[int], total: int, state, allows: Allows,
           masks: TokenMasks) -> tuple[int | None, bool]:
    """_checked over one part of a row's order (its largest `vals`, the first `total` of `key`'s
    order), and inside a string over TEXT_CANDIDATES of it where those did not decide."""
    token, decided = _checked(vals[:total], ids[:total], total, state, allows)
    if not decided and masks.tokens.in_text(state):
        more_vals, more_ids = _top(key[None], TEXT_CANDIDATES)
        token, decided = _checked(more_vals[0][:total], more_ids[0][:total], total, state, allows)
    return token, decided


def _top(key: torch.Tensor, count: int | None = None) -> tuple[list[list[float]], list[list[int]]]:
    """Each row's `count` (else CANDIDATES) largest keys and their ids, brought to the host in one copy."""
    k = min(count or CANDIDATES, key.shape[1])
    vals, ids = torch.topk(key, k, dim=-1)
    both = torch.cat([vals.double(), ids.double()], dim=-1).tolist()
    return [row[:k] for row in both], [[int(t) for t in row[k:]] for row in both]


def _checked(vals: list[float], ids: list[int], total: int, state, allows: Allows) -> tuple[int | None, bool]:
    """(token, decided) over the largest `vals` of a part of the order that has `total` tokens: the
    first allowed in order (ties by id); (None, True) where the part has no allowed token; (None,
    False) where that cannot be told from these (more tokens past them, or ties across the cut)."""
    cut = vals[-1] if len(vals) < total else None
    for value, token in sorted(zip(vals, ids), key=lambda p: (-p[0], p[1])):
        if cut is not None and value <= cut:
            return None, False
        if allows(state, token):
            return token, True
    return None, True  # every token of the part checked (with a cut, the last candidate stops the loop)


def _best(key: torch.Tensor, allowed: torch.Tensor, floor: float = float("-inf")) -> int | None:
    """The allowed token with the largest key, the smallest id among equals; None where no allowed
    token's key is above `floor` (-inf: where none is allowed, or only tokens at -inf, which come in
    id order: the smallest allowed id)."""
    masked = torch.where(allowed, key, floor)
    best = masked.max()
    if best > floor:
        return int(torch.nonzero(masked == best)[0, 0])
    if floor == float("-inf") and bool(allowed.any()):
        return int(torch.nonzero(allowed)[0, 0])
    return None
