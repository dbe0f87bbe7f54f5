"""Stop strings (one search for all of a request's), and the indentation stop
(SamplingParams.stop_at_dedent): where they cut, and that a stream never shows the dedented line,
alone and next to stop strings."""
from __future__ import annotations

import random

import pytest

from engine import LLMEngine, EngineConfig, SamplingParams
from engine.stop_checker import DEDENT, dedent_cut, stop_string, undecided_line_start

BODY = "x = 1\n        if x:\n            y = 2\n\n        return y\n"
DEDENTED = "    def other(self):\n        pass\n"


@pytest.mark.parametrize("text, limit, cut", [
    (BODY + DEDENTED, 8, len(BODY)),  # the line at 4 columns ends it, before its indentation
    (BODY + DEDENTED, 4, None),  # nothing under 4 columns
    ("return 1\nprint(2)", 4, len("return 1\n")),
    ("return 1\n\n   \n\nprint(2)", 4, len("return 1\n\n   \n\n")),  # blank lines never count
    ("print(2)", 4, None),  # the first line is the rest of the cursor's line
    ("a\n\tb\n  c", 1, None),  # a tab is one column
    ("a\n\tb\n  c", 2, len("a\n")),
    ("a\r\n    b\r\nc", 4, len("a\r\n    b\r\n")),  # CRLF: the \r is no indentation, and no text
    ("a\n    ", 8, None),  # undecided until a visible character arrives
])
def test_dedent_cut(text, limit, cut):
    assert dedent_cut(text, 0, limit) == cut


def _stop_string_reference(text: str, piece_len: int, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """Each stop string looked for on its own where the new piece could complete it."""
    start = max(0, len(text) - piece_len - max(map(len, stops)) + 1)
    hits = [(idx, s) for s in stops if (idx := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def test_stop_strings_are_found_as_one_search_per_string_finds_them():
    rng = random.Random(0)
    alphabet = "ab\n.*(|)[$^?+{}"  # regex syntax must match itself
    hits = 0
    for _ in range(3000):
        stops = tuple({"".join(rng.choices(alphabet, k=rng.randrange(1, 4))) for _ in range(rng.randrange(1, 5))})
        text = "".join(rng.choices(alphabet, k=rng.randrange(0, 30)))
        piece = rng.randrange(0, len(text) + 1)
        want = _stop_string_reference(text, piece, stops)
        assert stop_string(text, piece, stops) == want, (text, piece, stops)
        hits += want is not None
    assert hits > 500  # the stop strings were found often, not only missed
    # Several starting at the same place: the least in string order (a prefix before its extensions).
    assert stop_string("x\ndef f", 6, ("\ndef", "\nd", "\n")) == (1, "\n")


def test_dedent_cut_judges_only_new_lines():
    text = "a\n  b\n    c\nd"
    # Lines decided before the new text are never judged again: "  b" was accepted earlier.
    assert dedent_cut(text, len("a\n  b\n    c\n"), 4) == len("a\n  b\n    c\n")
    assert dedent_cut(text, len("a\n  b"), 2) == len("a\n  b\n    c\n")
    assert dedent_cut("a\n   ", 4, 4) is None  # blank so far: not yet


def test_undecided_line():
    assert undecided_line_start("a\n    ") == 2
    assert undecided_line_start("a\n") == 2
    assert undecided_line_start("a\n  b") is None
    assert undecided_line_start("    ") is None  # the first line is never held


def test_params_check():
    with pytest.raises(ValueError, match="stop_at_dedent"):
        SamplingParams(stop_at_dedent=-1)
    with pytest.raises(ValueError, match="stop_at_dedent"):
        SamplingParams(stop_at_dedent=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> LLMEngine:
    return LLMEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=64, block_size=8, max_num_seqs=4,
                                  max_num_batched_tokens=128))


def _run(engine: LLMEngine, text: str, **params) -> tuple[str, list[str], object]:
    """Forces `text`'s tokens as the output; returns the final text, every text a stream saw, and
    the last output."""
    ids = tuple(engine.tokenizer.encode(text, add_bos=False))
    sp = SamplingParams(temperature=0.0, max_tokens=len(ids) + 1, replay_token_ids=(ids,), speculate=False,
                        **params)
    engine.add_request(f"r{id(sp)}", "class A:\n    def f(self):\n        ", sp)
    seen, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            seen.append(out.outputs[0].text)
            last = out
    return last.outputs[0].text, seen, last.outputs[0]


def test_engine_ends_before_the_dedented_line_and_never_streams_it(engine):
    final, seen, out = _run(engine, BODY + DEDENTED, stop_at_dedent=8)
    assert final == BODY
    assert out.finish_reason == "stop" and out.stop_reason == DEDENT
    for text in seen:
        assert final.startswith(text), f"a stream showed {text!r}"
    # The body's own blank line and indented lines went out before the end.
    assert any(t.startswith("x = 1\n        if x:") for t in seen[:-1])


def test_off_or_shallow_limit_changes_nothing(engine):
    full, _, out = _run(engine, BODY + DEDENTED)
    assert full == BODY + DEDENTED and out.stop_reason != DEDENT
    same, _, _ = _run(engine, BODY + DEDENTED, stop_at_dedent=4)
    assert same == full


def test_earliest_of_stop_string_and_dedent_wins(engine):
    text, _, out = _run(engine, BODY + DEDENTED, stop_at_dedent=8, stop=("if x",))
    assert text == "x = 1\n        " and out.stop_reason == "if x"
    text, seen, out = _run(engine, BODY + DEDENTED, stop_at_dedent=8, stop=("pass",))
    assert text == BODY and out.stop_reason == DEDENT
    assert all(BODY.startswith(t) for t in seen)
