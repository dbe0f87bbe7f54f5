"""How an /infill prompt is cut to fit: other files first (oldest first), then the suffix to a
quarter and the prefix from its start, at line boundaries."""
from __future__ import annotations

import pytest

from api.infill_prompt import InfillParts, fit_infill, infill_ids
from engine.config import DEFAULT_MODEL
from engine.tokenizer import Tokenizer

PREFIX = "".join(f"line_{i} = {i}\n" for i in range(200))
SUFFIX = "".join(f"after_{i} = {i}\n" for i in range(200))
FILES = tuple((f"f{k}.py", "".join(f"def f{k}_{i}(): pass\n" for i in range(40))) for k in range(6))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(DEFAULT_MODEL)


def test_what_fits_is_untouched(tok):
    parts = InfillParts("a = 1\n", "b = 2\n", FILES[:1], "    ")
    built = fit_infill(tok, parts, 4096, 64)
    assert built.ids == infill_ids(tok, parts) and not built.truncated


def test_other_files_go_first_oldest_first(tok):
    parts = InfillParts("a = 1\n", "b = 2\n", FILES, "")
    whole = len(infill_ids(tok, parts))
    built = fit_infill(tok, parts, whole - 10, 64)
    kept = FILES[1:]  # one file less is enough, and it is the oldest that goes
    assert built.truncated and built.ids == infill_ids(tok, InfillParts("a = 1\n", "b = 2\n", kept, ""))


def test_then_the_suffix_to_a_quarter_and_the_prefix_from_its_start(tok):
    parts = InfillParts(PREFIX, SUFFIX, FILES, "x = ")
    budget = 600
    built = fit_infill(tok, parts, budget, 64)
    assert built.truncated and len(built.ids) <= budget
    text = tok.decode(built.ids)
    assert "def f" not in text  # every other file is gone before the current file is cut
    assert "line_199 = 199\n" in text and "line_0 = 0\n" not in text  # the prefix keeps its end
    assert "after_0 = 0\n" in text and "after_199" not in text  # the suffix keeps its start
    suffix_kept = text[text.index("after_0"):]
    assert len(tok.encode(suffix_kept, add_bos=False)) <= budget // 4 + 8
    assert built.ids[-len(tok.encode("x = ", add_bos=False)):] == tok.encode("x = ", add_bos=False)
