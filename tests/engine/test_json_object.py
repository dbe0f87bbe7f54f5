"""engine/json_object.py: the automaton takes exactly the prefixes of JSON objects."""
from __future__ import annotations

import json
import random

import pytest

from engine.json_object import ANY, MAX_LEADING_WHITESPACE, MAX_WHITESPACE, START, JsonTokens, complete, feed

DOCS = [{}, {"a": 1}, {"a": [1, 2.5, -3e-2, 0, True, False, None]}, {"k": {"n": {"m": []}}, "s": "x\"y\\z\u00e9\n"},
        {"u": "\u2603", "e": -0.0, "big": 12345678901234567890, "list": [[], {}, [{}]]}]


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("indent", [None, 2])
def test_every_prefix_of_an_object_is_taken_and_only_the_whole_completes(doc, indent):
    for ensure_ascii in (True, False):
        text = json.dumps(doc, indent=indent, ensure_ascii=ensure_ascii)
        for end in range(len(text)):
            state = feed(START, text[:end])
            assert state is not None and not complete(state), text[:end]
        assert complete(feed(START, text))
        assert feed(START, text + "x") is None and feed(START, text + " ") is None


@pytest.mark.parametrize("bad", ["[1]", '"s"', "1", "{1:2}", '{"a" 1}', '{"a":}', '{"a":1,}', '{"a":01}',
                                 '{"a":1.}', '{"a":-}', '{"a":tru}', '{"a":"\x01"}', '{"a":"\\x"}',
                                 '{"a":"\\u12G4"}', '{"a":[1,]}', '{"a":[1}', '{"a":1]}', "{}}", '{"a":nul}'])
def test_what_no_object_starts_with_is_refused(bad):
    state, at = START, 0
    while at < len(bad) and state is not None:
        state = feed(state, bad[at])
        at += 1
    assert state is None or not complete(state)
    assert not (complete(feed(START, bad)))


def test_random_texts_agree_with_the_json_module():
    """A text the automaton completes is one JSON object; one it refuses is no object's prefix
    (checked by completing it: no completion makes it parse where the automaton refused it)."""
    rng = random.Random(0)
    alphabet = list('{}[]:,"01-.eE+ a\\ntru') + ["null", "true", '"k"']
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        state = feed(START, text)
        if complete(state):
            assert isinstance(json.loads(text), dict), text
        if state is None:
            with pytest.raises(ValueError):
                parsed = json.loads(text)
                if not isinstance(parsed, dict):
                    raise ValueError


def test_whitespace_is_bounded():
    assert feed(START, "{" + " " * MAX_WHITESPACE) is not None
    assert feed(START, "{" + " " * (MAX_WHITESPACE + 1)) is None
    assert feed(START, "\n" * MAX_LEADING_WHITESPACE + "{") is not None
    assert feed(START, "\n" * (MAX_LEADING_WHITESPACE + 1)) is None


def test_tokens_without_text_only_inside_strings_and_the_end_only_after_the_object():
    tokens = JsonTokens(texts=['{"a', '": "', "b", None, '"}', "x"], eos_ids=frozenset({9}))
    state = START
    assert tokens.allows(state, 0) and not tokens.allows(state, 3) and not tokens.allows(state, 9)
    state = tokens.after(state, 0)  # inside the key
    assert tokens.allows(state, 3) and tokens.after(state, 3) == state
    for t in (1, 2, 3, 4):
        state = tokens.after(state, t)
    assert complete(state) and tokens.allows(state, 9) and not tokens.allows(state, 5)
    assert tokens.allows(ANY, 5) and tokens.after(START, 5) is ANY and tokens.after(ANY, 0) is ANY


# ---------------------------------------------------------------------- through the engine

PROMPTS = ["# settings as JSON\nconfig = ", "def f():\n    return ", 'data = {"a": [1, 2], "b": {"c": "d"}}\nsame = ']


@pytest.fixture(scope="module")
def engines():
    from engine import DEFAULT_MODEL, LLM
    from fastcodellama.drafting import SpecConfig, build_proposer

    plain = LLM(DEFAULT_MODEL, num_kv_blocks=256, block_size=16)
    drafting = LLM(DEFAULT_MODEL, num_kv_blocks=256, block_size=16, proposer=build_proposer(SpecConfig(policy="fixed")))
    return plain, drafting


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_engine_output_is_a_json_object_and_drafting_changes_nothing(engines, temperature):
    from engine import SamplingParams
    from tests.engine.helpers import assert_no_leaks

    params = SamplingParams(max_tokens=48, temperature=temperature, top_p=0.95, seed=7, n=3, json_object=True)
    plain, drafting = (e.generate(PROMPTS, params) for e in engines)
    for a, b in zip(plain, drafting):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        for c in a.outputs:
            state = feed(START, c.text)
            assert state is not None, c.text
            if c.finish_reason == "stop":
                assert isinstance(json.loads(c.text), dict)
    unconstrained = engines[0].generate(PROMPTS, SamplingParams(max_tokens=48, temperature=temperature, seed=7, n=3))
    assert any(feed(START, c.text) is None for o in unconstrained for c in o.outputs)  # the constraint did work
    drafted = sum(sum(c.spec.drafted.values()) for o in drafting for c in o.outputs)
    assert drafted > 0
    for e in engines:
        assert_no_leaks(e.engine)


def test_the_sampler_takes_the_first_allowed_token_in_its_own_order():
    import torch

    from engine import SamplingParams
    from engine.sampler import Sampler, SamplingRow

    texts = ["{", "}", '"a"', ":", "1", "x", None]  # 6: the end of text
    sampler = Sampler((6,), json_tokens=JsonTokens(texts, frozenset({6})))
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0, 5.0, 0.0],    # x likeliest: { is the first allowed
                           [0.0, 3.0, 0.0, 0.0, 0.0, 5.0, 1.0],    # after {}: only the end, whatever is likelier
                           [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])   # the likeliest is allowed: taken
    greedy = SamplingParams(temperature=0.0, json_object=True)
    rows = [SamplingRow(0, greedy, 1, 0, json=START), SamplingRow(1, greedy, 1, 2, json=feed(START, "{}")),
            SamplingRow(2, greedy, 1, 1, json=feed(START, "{"))]
    assert sampler(logits, rows).tokens == [0, 6, 2]
    sampled = SamplingParams(temperature=1.0, seed=1, json_object=True)
    for key in range(50):  # sampled rows: the race's own winner where allowed, else the next in its order
        row = SamplingRow(0, sampled, key, 0, json=feed(START, "{"))
        free = sampler(logits[2:3].clone(), [row._replace(json=None)]).tokens[0]
        chosen = sampler(logits[2:3].clone(), [row]).tokens[0]
        order = [t for t in sampler.preferred(logits[2].clone(), row) if t in (1, 2)]
        assert chosen == (free if free in (1, 2) else order[0])


@pytest.mark.parametrize("use_kernels", [True, False], ids=["c-sampler", "torch-sampler"])
def test_rows_held_to_json_are_checked_once_read_back_and_launch_waits_for_nothing(use_kernels):
    """A step queued ahead launches its sampling while the step before it runs: rows held to
    JSON make it read nothing back (their check waits for the read-back); what comes back is each
    row's first allowed token in its own order, with that token's logprob, as the rows give alone,
    and the rows whose own choice was refused are `changed` (a step fed it is to drop them)."""
    import torch

    from engine import SamplingParams
    from engine.sampler import CANDIDATE_ROWS, Sampler, SamplingRow
    from tests.engine.helpers import read_backs

    texts = ["{", "}", '"a"', ":", "1", "x", None] + [f"y{i}" for i in range(57)]  # 6: the end of text
    json_tokens = JsonTokens(texts, frozenset({6}))
    sampler = Sampler((6,), use_kernels=use_kernels, json_tokens=json_tokens, redraw_at_launch=True)
    torch.manual_seed(2)
    logits = torch.randn(CANDIDATE_ROWS, len(texts)) * 3  # rows enough for the candidates' race
    greedy = SamplingParams(temperature=0.0, json_object=True, logprobs=1)
    sampled = SamplingParams(temperature=1.0, seed=1, json_object=True, logprobs=1)
    free = SamplingParams(temperature=0.9, seed=4, logprobs=1)
    states = [START, feed(START, "{"), feed(START, "{}"), feed(START, '{"a"')]
    rows = [SamplingRow(i, (greedy, sampled, free)[i % 3], 5 + i, i, json=None if i % 3 == 2 else states[i % 4])
            for i in range(CANDIDATE_ROWS)]
    with read_backs() as seen:
        launched = sampler.launch(logits.clone(), rows)
    assert seen == []
    got = launched.result()
    alone = [sampler(logits[i:i + 1].clone(), [r._replace(logits_row=0)]) for i, r in enumerate(rows)]
    assert got.tokens == [a.tokens[0] for a in alone]
    assert got.logprobs == pytest.approx([a.logprobs[0] for a in alone], abs=1e-6)
    for i, r in enumerate(rows):
        if r.json is not None:
            first = next(t for t in sampler.preferred(logits[i].clone(), r) if json_tokens.allows(r.json, t))
            assert got.tokens[i] == first
    refused = [i for i in range(len(rows)) if launched.tokens[i] != got.tokens[i]]
    assert refused and launched.changed == refused  # a step queued behind that fed them fed the refused tokens


def test_a_rows_late_state_is_read_when_the_row_is_read_back():
    """In a step queued ahead a JSON row follows a token the host does not have yet: its state is
    read once the row is read back (LateState), by then after that token; a row whose sequence
    ended meanwhile (read: None) is left as it is."""
    import torch

    from engine import SamplingParams
    from engine.sampler import LateState, Sampler, SamplingRow

    texts = ["{", "}", '"a"', ":", "1", "x", None]
    sampler = Sampler((6,), json_tokens=JsonTokens(texts, frozenset({6})))
    logits = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0, 5.0, 0.0]])  # x, then "a", then }
    state = {"now": START}
    row = SamplingRow(0, SamplingParams(temperature=0.0, json_object=True), 1, 1,
                      json=LateState(lambda: state["now"] and (state["now"], 1)))
    launched = sampler.launch(logits.clone(), [row])
    state["now"] = feed(START, "{")  # the step before applied: its token was {
    assert launched.result().tokens == [2]  # after {: "a"; at the start it would have been {
    assert sampler(logits.clone(), [row._replace(json=START)]).tokens == [0]
    state["now"] = None  # ended
    assert sampler.launch(logits.clone(), [row]).result().tokens == [5]  # its own choice, unchecked


def test_json_object_refuses_ignore_eos():
    from engine import SamplingParams

    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(json_object=True, ignore_eos=True)


def test_a_thinking_models_reasoning_first_then_the_object(engines):
    """ThinkFirst on the embedded model, its newline token standing in for </think> (read by id):
    whatever comes before it is free, what follows is one JSON object; drafting changes nothing; no
    block leaks."""
    from engine import SamplingParams
    from tests.engine.helpers import assert_no_leaks

    newline = engines[0].tokenizer.encode("\n", add_bos=False)[-1]
    params = SamplingParams(max_tokens=160, temperature=0.8, seed=11, n=4, json_object=True,
                            think_first=(True, None, newline))
    plain, drafting = (e.generate(PROMPTS, params) for e in engines)
    ended = 0
    for a, b in zip(plain, drafting):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        for c in a.outputs:
            if newline not in c.token_ids:
                continue
            at = c.token_ids.index(newline)
            head = engines[0].tokenizer.decode(c.token_ids[:at])
            rest = engines[0].tokenizer.decode(c.token_ids[at + 1:])
            assert feed(START, rest) is not None, c.text
            if c.finish_reason == "stop":
                assert isinstance(json.loads(rest), dict) and head.strip(), c.text  # free text, then the object
                ended += 1
    assert ended > 0
    for e in engines:
        assert_no_leaks(e.engine)
