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


def test_fim_tokens_found(spm_tokenizer_dir):
    tok = Tokenizer(spm_tokenizer_dir)
    assert tok.fim is not None
    assert len({tok.fim.prefix, tok.fim.suffix, tok.fim.middle, tok.fim.eot}) == 4
