"""What the engine hands back: snapshots that later steps never change."""
from __future__ import annotations

import pickle

import pytest

from engine import EngineConfig, SamplingParams
from engine.llm_engine import LLMEngine
from engine.outputs import Prefix


def test_a_prefix_reads_as_the_list_it_was_and_stays_so_as_the_list_grows() -> None:
    items = [5, 6, 7]
    view = Prefix(items)
    items += [8, 9]
    assert len(view) == 3 and list(view) == [5, 6, 7] and view == [5, 6, 7] and view != [5, 6, 7, 8]
    assert view[0] == 5 and view[-1] == 7 and view[1:] == [6, 7] and view[::-1] == [7, 6, 5] and view[-5:] == [5, 6, 7]
    assert view.index(7) == 2 and 8 not in view and repr(view) == "[5, 6, 7]"
    with pytest.raises(IndexError):
        view[3]
    with pytest.raises(IndexError):
        view[-4]
    assert view == Prefix(items, 3) and view != Prefix(items) and view != (5, 6, 7)
    copied = pickle.loads(pickle.dumps(view))
    assert type(copied) is list and copied == [5, 6, 7]


def test_a_streamed_output_is_never_changed_by_later_steps(tiny_model_dir) -> None:
    """Every output of a stream, kept, still reads what it read when handed out (its tokens and
    their logprobs), each one a prefix of the next."""
    engine = LLMEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=64, block_size=4))
    engine.add_request("r", "def f(x):\n", SamplingParams(max_tokens=12, temperature=0.0, logprobs=True))
    kept = []
    while engine.has_unfinished():
        for out in engine.step(collect="all"):
            c = out.outputs[0]
            kept.append((c, list(c.token_ids), list(c.logprobs)))
    assert len(kept) >= 10 and len(kept[-1][1]) == 12
    for c, tokens, logprobs in kept:
        assert list(c.token_ids) == tokens and list(c.logprobs) == logprobs and len(c.logprobs) == len(tokens)
    assert all(later[1][:len(earlier[1])] == earlier[1] for earlier, later in zip(kept, kept[1:]))
