"""engine/json_choice.py against its reference: for rows held to JSON whose own choice is refused,
the token the sampler takes is the first its order of preference allows, as Sampler.preferred
walks that order, whatever the cut between checked candidates and masks; and each mask is what
JsonTokens.allows says of every token."""
from __future__ import annotations

import random

import pytest
import torch

from engine import json_choice
from engine.json_choice import TokenMasks
from engine.json_object import ANY, START, JsonTokens, ThinkFirst
from engine.json_schema import compile_schema
from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams

EOS = 2
TEXTS = ["{", "}", None, "[", "]", '"', ":", ",", " ", "\n", "a", "b", "1", "0", "-", ".", "e", "true", "false",
         "null", '{"', '":', '",', '"a"', ' "', "}\n", "ab", "12", None, '"b', "a\"", "\\", "\\n", "\\u00", "7",
         "[1", "],", "x", "{}", " {", '" :', "nul", "fa", "1.5", "-0", "E+", '"city"', "C", "F", '": "']
SCHEMA = compile_schema({"type": "object", "properties": {"city": {"type": "string", "maxLength": 3},
                                                          "n": {"type": "integer"}, "u": {"enum": ["C", "F"]}},
                         "required": ["city"], "additionalProperties": False})
TEXTS += [None, None]  # a thinking model's <think> and </think>: tokens without plain text, read by id
OPEN, CLOSE = len(TEXTS) - 2, len(TEXTS) - 1
TOKENS = JsonTokens(TEXTS, frozenset({EOS}))


def states(rng: random.Random, count: int) -> list:
    """States of JSON objects and of the schema, reached by random allowed tokens."""
    found = []
    while len(found) < count:
        state = rng.choice([START, SCHEMA.start])
        for _ in range(rng.randint(0, 12)):
            allowed = [t for t in range(len(TEXTS)) if t != EOS and TOKENS.allows(state, t)]
            if not allowed:
                break
            state = TOKENS.after(state, rng.choice(allowed))
        if state is not ANY:
            found.append(state)
        if rng.random() < 0.2:  # the reasoning first: open, or before it may open
            found[-1] = ThinkFirst(rng.random() < 0.5, rng.choice([OPEN, None]), CLOSE, found[-1])
    return found


def params(rng: random.Random) -> SamplingParams:
    if rng.random() < 0.3:
        return SamplingParams(temperature=0.0, json_object=True)
    return SamplingParams(temperature=rng.choice([0.5, 1.0, 2.0]), top_k=rng.choice([0, 1, 3, 20]),
                          top_p=rng.choice([1.0, 0.9, 0.5]), min_p=rng.choice([0.0, 0.0, 0.2]), json_object=True)


def logits(rng: random.Random, n: int) -> torch.Tensor:
    """Rows with ties (values on a coarse grid), some banned tokens (-inf), some flat rows, some
    with one token so far ahead that the others' race scores are 0, and some where every token but
    one or two is banned (then the allowed ones may all be at -inf)."""
    x = torch.tensor([[rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 3.0]) for _ in TEXTS] for _ in range(n)])
    for row in x:
        for t in rng.sample(range(len(TEXTS)), rng.randint(0, 6)):
            row[t] = float("-inf")
        kind = rng.random()
        if kind < 0.1:
            row[torch.isfinite(row)] = 0.25
        elif kind < 0.2:
            row[rng.randrange(len(TEXTS))] = 150.0
        elif kind < 0.3:
            keep = rng.sample(range(len(TEXTS)), 2)
            row[[t for t in range(len(TEXTS)) if t not in keep]] = float("-inf")
    return x


def reference(sampler: Sampler, x: torch.Tensor, rows: list[SamplingRow], free: list[int]) -> list[int]:
    """Each row's own choice where allowed, else the first allowed in Sampler.preferred's walk,
    else (nothing allowed) the end of text."""
    out = []
    for i, r in enumerate(rows):
        token = free[i]
        if not TOKENS.allows(r.json, token):
            token = next((t for t in sampler.preferred(x[i].clone(), r) if TOKENS.allows(r.json, t)), TOKENS.end_id)
        out.append(token)
    return out


@pytest.mark.parametrize("candidates, in_text", [(1, 2), (3, 1024), (32, 1024)])
def test_the_choice_is_the_first_allowed_in_the_rows_own_order(monkeypatch, candidates, in_text):
    """Whatever the numbers of candidates checked (inside strings too) before a mask decides."""
    monkeypatch.setattr(json_choice, "CANDIDATES", candidates)
    monkeypatch.setattr(json_choice, "TEXT_CANDIDATES", in_text)
    rng = random.Random(candidates)
    plain, held = Sampler((EOS,)), Sampler((EOS,), json_tokens=TOKENS)
    refused = 0
    for step in range(60):
        n = rng.randint(1, 8)
        x, at = logits(rng, n), states(rng, n)
        rows = [SamplingRow(i, params(rng), rng.getrandbits(60), rng.randint(0, 50), (), 0, None, at[i])
                for i in range(n)]
        free = plain(x.clone(), [r._replace(json=None) for r in rows]).tokens
        expected = reference(plain, x, rows, free)
        refused += sum(e != f for e, f in zip(expected, free))
        assert held(x.clone(), rows).tokens == expected, step
    assert refused > 60  # the walk was needed in many rows, not only the own choices kept


def test_masks_say_what_allows_says_of_every_token():
    masks = TokenMasks(TOKENS)
    width = len(TEXTS) + 3  # columns past the texts: pieces without text (allowed inside a string only)
    for state in states(random.Random(1), 200):
        mask = masks.allowed(state, width, torch.device("cpu"))
        assert mask.tolist() == [TOKENS.allows(state, t) for t in range(width)]
        assert masks.known(state)


def test_inside_a_string_where_no_racing_token_is_allowed_the_rest_go_by_logit(monkeypatch):
    """The racing tokens (top-k 2: a newline and '}\\n', which no JSON string holds raw) are refused:
    the likeliest allowed of the others comes next, not the smallest id, whichever check decides."""
    monkeypatch.setattr(json_choice, "CANDIDATES", 1)
    state = TOKENS.after(TOKENS.after(START, TEXTS.index('{"')), TEXTS.index("a"))
    x = torch.zeros(1, len(TEXTS))
    x[0, TEXTS.index("\n")], x[0, TEXTS.index("}\n")], x[0, TEXTS.index("ab")] = 9.0, 8.0, 5.0
    row = SamplingRow(0, SamplingParams(temperature=1.0, top_k=2, json_object=True), 7, 0, (), 0, None, state)
    assert Sampler((EOS,), json_tokens=TOKENS)(x, [row]).tokens == [TEXTS.index("ab")]


def test_in_text_is_inside_free_strings():
    assert TOKENS.in_text(TOKENS.after(START, TEXTS.index('{"'))) and not TOKENS.in_text(START)
    inside = SCHEMA.feed(SCHEMA.start, '{"city": "a')
    assert TOKENS.in_text(inside) and not TOKENS.in_text(SCHEMA.feed(SCHEMA.start, '{"ci'))  # keys listed: no
    assert not TOKENS.in_text(SCHEMA.feed(SCHEMA.start, '{"u": "C')) and not TOKENS.in_text(ANY)


def test_masks_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(json_choice, "MAX_STATES", 4)
    masks = TokenMasks(TOKENS)
    found = list(dict.fromkeys(states(random.Random(2), 40)))
    for state in found:
        masks.allowed(state, len(TEXTS), torch.device("cpu"))
    assert len(masks._kept) == 4 and all(masks.known(s) for s in found[-4:]) and not masks.known(found[0])


def test_a_thinking_models_reasoning_comes_first_free():
    """Inside the block any token but an end of text, its close starting the constraint; before it,
    its opening or the constraint's first tokens."""
    inside = ThinkFirst(True, OPEN, CLOSE, START)
    assert all(TOKENS.allows(inside, t) for t in range(len(TEXTS)) if t != EOS) and not TOKENS.allows(inside, EOS)
    assert TOKENS.after(inside, TEXTS.index("x")) == inside and TOKENS.after(inside, CLOSE) == START
    before = inside._replace(inside=False)
    assert TOKENS.allows(before, OPEN) and TOKENS.allows(before, TEXTS.index("{")) and not TOKENS.allows(before, CLOSE)
    assert TOKENS.after(before, OPEN) == inside and TOKENS.after(before, TEXTS.index("{")) == TOKENS.after(
        START, TEXTS.index("{"))
    assert TOKENS.in_text(inside) and not TOKENS.in_text(before)
