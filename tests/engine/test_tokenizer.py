from __future__ import annotations

from engine.tokenizer import IncrementalDetokenizer, Tokenizer

SNIPPETS = [
    "def f(x):\n    return x  # done\n",
    "\tif a != b:\n\t\tpass",
    "s = 'héllo wörld ✓ 漢字 🐍'\n",
    "   leading spaces and 12345 digits",
]


def test_encode_decode_round_trip(spm_tokenizer_dir):
    tok = Tokenizer(spm_tokenizer_dir)
    for text in SNIPPETS:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id
        assert tok.decode(ids[1:]) == text


def test_incremental_detokenization_equals_full_decode(spm_tokenizer_dir):
    tok = Tokenizer(spm_tokenizer_dir)
    prompt = tok.encode("x = 1\n")
    for text in SNIPPETS:
        ids = tok.encode(text, add_bos=False)
        detok = IncrementalDetokenizer(tok, prompt)
        pieces = [detok.add(t) for t in ids]
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) + detok.flush() == text


def test_fast_detokenization_equals_the_window_decode(spm_tokenizer_dir):
    """Random id streams (byte, control and unknown pieces included): the plain-piece fast path
    releases exactly what the window decode releases, piece by piece."""
    import random

    from engine import DEFAULT_MODEL

    for path in (spm_tokenizer_dir, DEFAULT_MODEL):
        tok = Tokenizer(path)
        assert tok.plain_texts is not None and sum(t is None for t in tok.plain_texts) > 3
        rng = random.Random(0)
        for _ in range(200):
            prompt = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 6))]
            ids = [rng.randrange(tok.vocab_size) if rng.random() < 0.7 else rng.choice([0, 1, 2, 7, 40, 200])
                   for _ in range(rng.randint(1, 40))]
            fast, slow = IncrementalDetokenizer(tok, prompt), IncrementalDetokenizer(tok, prompt, fast=False)
            assert [fast.add(t) for t in ids] + [fast.flush()] == [slow.add(t) for t in ids] + [slow.flush()]


def test_fim_tokens_found(spm_tokenizer_dir):
    tok = Tokenizer(spm_tokenizer_dir)
    assert tok.fim is not None
    assert len({tok.fim.prefix, tok.fim.suffix, tok.fim.middle, tok.fim.eot}) == 4
