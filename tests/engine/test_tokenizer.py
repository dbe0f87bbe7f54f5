from __future__ import annotations

import json
import random

import pytest

from engine.tokenizer import IncrementalDetokenizer, Tokenizer
from tests.conftest import BPE_SAMPLES, make_byte_bpe_tokenizer, make_spm_tokenizer, spm_without_dummy_prefix

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
    """Random id streams (byte pieces, ASCII ones such as newline and tab too, control and
    unknown pieces included): the plain-piece fast path releases exactly what the window decode
    releases, piece by piece."""
    from engine import DEFAULT_MODEL

    for path in (spm_tokenizer_dir, DEFAULT_MODEL):
        tok = Tokenizer(path)
        assert tok.plain_texts is not None and sum(t is None for t in tok.plain_texts) > 3
        ascii_bytes = [tok.token_id(f"<0x{b:02X}>") for b in (0x09, 0x0A, 0x20, 0x41, 0x7E)]
        assert all(tok.plain_texts[i] for i in ascii_bytes)  # the newline byte piece is on the fast path
        assert tok.plain_texts[tok.token_id("<0xC3>")] is None  # half a character never is
        special = [0, 1, 2, 7, 40, 200, *ascii_bytes]
        rng = random.Random(0)
        for _ in range(300):
            prompt = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 6))]
            ids = [rng.randrange(tok.vocab_size) if rng.random() < 0.6 else rng.choice(special)
                   for _ in range(rng.randint(1, 40))]
            fast, slow = IncrementalDetokenizer(tok, prompt), IncrementalDetokenizer(tok, prompt, fast=False)
            assert [fast.add(t) for t in ids] + [fast.flush()] == [slow.add(t) for t in ids] + [slow.flush()]


def test_kept_special_tokens_are_written_where_they_come(bpe_dir):
    """A special token kept (the chat server's tool-call markers) is written as its given text, in
    its place, after the text before it; the text around it as without it."""
    from engine import DEFAULT_MODEL

    for path in (DEFAULT_MODEL, bpe_dir[1]):
        tok = Tokenizer(path)
        marker = tok.eos_ids[0]
        before, after = tok.encode("x = 'é", add_bos=False), tok.encode(" [1, 2]", add_bos=False)
        for fast in (True, False):
            detok = IncrementalDetokenizer(tok, tok.encode("# a\n"), fast=fast, kept={marker: "[TOOL_CALLS]"})
            text = "".join(detok.add(t) for t in [*before, marker, *after]) + detok.flush()
            assert text == "x = 'é[TOOL_CALLS] [1, 2]"
            plain = IncrementalDetokenizer(tok, tok.encode("# a\n"), fast=fast)
            assert "".join(plain.add(t) for t in [*before, marker, *after]) + plain.flush() == "x = 'é [1, 2]"


def test_fim_tokens_found(spm_tokenizer_dir):
    tok = Tokenizer(spm_tokenizer_dir)
    assert tok.fim is not None
    assert len({tok.fim.prefix, tok.fim.suffix, tok.fim.middle, tok.fim.eot}) == 4


# ---------------------------------------------------------------- byte-level BPE (tokenizer.json only)

STYLES = ("qwen", "deepseek", "starcoder", "gpt2")
_MODEL_TYPES = {"qwen": ("Qwen2ForCausalLM", "qwen2"), "deepseek": ("LlamaForCausalLM", "llama"),
                "starcoder": ("Starcoder2ForCausalLM", "starcoder2"), "gpt2": ("CodeGenForCausalLM", "codegen")}
TEXTS = SNIPPETS + [BPE_SAMPLES, "x = 1234567890\r\n\ty = [ 'ﬁ', 'Å', '\\u00e9' ]\n", "  \n\n   trailing   ",
                    "literal <|fim_prefix|> and <fim_suffix> in text"]


@pytest.fixture(scope="module", params=STYLES)
def bpe_dir(request, tmp_path_factory) -> tuple[str, str]:
    """A folder like the family's: tokenizer.json, tokenizer_config.json and a config.json."""
    style = request.param
    path = make_byte_bpe_tokenizer(str(tmp_path_factory.mktemp(f"bpe_{style}")), style)
    arch, model_type = _MODEL_TYPES[style]
    with open(f"{path}/config.json", "w") as f:
        json.dump({"architectures": [arch], "model_type": model_type}, f)
    return style, path


def test_byte_level_ids_equal_transformers(bpe_dir):
    from transformers import AutoTokenizer

    style, path = bpe_dir
    tok, hf = Tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert tok.plain_texts is not None  # a ByteLevel decoder: the fast path is on
    assert (tok.bos_id is not None) == (style == "deepseek")  # only DeepSeek's tokenizer adds a BOS
    for text in TEXTS:
        assert tok.encode(text) == hf(text)["input_ids"], (style, text)
        assert tok.encode(text, add_bos=False) == hf(text, add_special_tokens=False)["input_ids"]
        if "<" not in text:  # special tokens written in the text are skipped by decode
            assert tok.decode(tok.encode(text)) == text
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_a_folder_with_only_tokenizer_json(tmp_path):
    from transformers import AutoTokenizer

    path = make_byte_bpe_tokenizer(str(tmp_path), "qwen")
    (tmp_path / "tokenizer_config.json").unlink()
    tok, hf = Tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert tok.bos_id is None and tok.eos_id is None and tok.eos_ids == ()
    for text in TEXTS:
        assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.fim is not None and tok.fim.style == "qwen" and tok.fim.eot == tok.token_id("<|endoftext|>")


def _streams(tok: Tokenizer, rng: random.Random) -> list[int]:
    """Ids of text with multi-byte characters, cut into and mixed with random ids (byte pieces
    of other characters, special tokens)."""
    ids = tok.encode(rng.choice(TEXTS) + rng.choice(TEXTS), add_bos=False)
    ids = ids[rng.randrange(len(ids)):]
    for _ in range(rng.randint(0, 6)):
        ids.insert(rng.randrange(len(ids) + 1), rng.randrange(tok.vocab_size))
    return ids


def test_byte_level_stream_never_splits_a_character(bpe_dir):
    """Streamed pieces add up to the full decode, none ends in half a character, and the fast
    path releases exactly what the window decode releases."""
    style, path = bpe_dir
    tok = Tokenizer(path)
    assert any(t is None for t in tok.plain_texts[:300])  # partial-character byte pieces exist
    assert any(t is not None and len(t.encode()) > len(t) for t in tok.plain_texts)  # and whole multi-byte ones
    rng = random.Random(1)
    prompt = tok.encode("x = 1\n")
    for _ in range(300):
        ids = _streams(tok, rng)
        fast, slow = IncrementalDetokenizer(tok, prompt), IncrementalDetokenizer(tok, prompt, fast=False)
        pieces = [fast.add(t) for t in ids] + [fast.flush()]
        assert pieces == [slow.add(t) for t in ids] + [slow.flush()]
        assert "".join(pieces) == tok.decode(ids)
        full = tok.decode(ids)
        if "\ufffd" not in full:  # well-formed text: no piece holds a broken character
            assert all("\ufffd" not in p for p in pieces)


def test_fim_format_and_prompts(bpe_dir):
    from transformers import AutoTokenizer

    style, path = bpe_dir
    tok, hf = Tokenizer(path), AutoTokenizer.from_pretrained(path)
    if style == "gpt2":  # CodeGen: no infilling tokens, so suffixes are refused
        assert tok.fim is None
        with pytest.raises(ValueError, match="fill-in-the-middle"):
            tok.fim_prompt("a", "b")
        return
    fim = tok.fim
    names = {"qwen": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>"),
             "deepseek": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>"),
             "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>")}[style]
    assert (fim.style, fim.prefix, fim.suffix, fim.middle, fim.eot) == (style, *map(tok.token_id, names))
    assert fim.stop_ids[0] == fim.eot and tok.eos_id in fim.stop_ids
    pre, suf, mid = names[:3]
    files = [("a.py", "x = 'é'\n"), ("b/c.py", "def g():\n    pass")]
    # What the whole prompt string tokenizes to, with the special tokens written out.
    plain = f"{pre}def f(x):\n    {suf}\n    return y\n{mid}"
    repo_level = {
        "qwen": f"<|repo_name|>proj\n<|file_sep|>a.py\nx = 'é'\n\n<|file_sep|>b/c.py\ndef g():\n    pass\n"
                f"<|file_sep|>main.py\n{plain}",
        "starcoder": f"<repo_name>proj<file_sep>a.py\nx = 'é'\n<file_sep>b/c.py\ndef g():\n    pass<file_sep>"
                     f"{pre}main.py\ndef f(x):\n    {suf}\n    return y\n{mid}",
        "deepseek": f"{pre}#a.py\nx = 'é'\n\n#b/c.py\ndef g():\n    pass\n#main.py\ndef f(x):\n    {suf}\n"
                    f"    return y\n{mid}",
    }[style]
    assert tok.fim_prompt("def f(x):\n    ", "\n    return y\n") == hf(plain)["input_ids"]
    assert tok.fim_prompt("def f(x):\n    ", "\n    return y\n", files, path="main.py", repo="proj") == \
        hf(repo_level)["input_ids"]


def test_codellama_fim_prompt_is_unchanged(spm_tokenizer_dir):
    """<PRE> prefix <SUF> suffix <MID> with BOS, as api/completions.py has built it."""
    tok = Tokenizer(spm_tokenizer_dir)
    fim = tok.fim
    assert fim.style == "codellama" and fim.eot == tok.token_id("<EOT>") and fim.stop_ids[0] == fim.eot
    prefix, suffix = "def f(x):\n    ", "\n    return y\n"
    assert tok.fim_prompt(prefix, suffix) == [tok.bos_id, fim.prefix] + tok.encode(prefix, add_bos=False) + \
        [fim.suffix] + tok.encode(suffix, add_bos=False) + [fim.middle]


PREFIX, SUFFIX = "def f(x):\n    ", "\n    return y\n"


def test_codellama_fim_suffix_has_no_dummy_prefix_space(tmp_path):
    """CodeLlama's format, as Meta's reference builds it: the prefix tokenized as a text of its own
    (with sentencepiece's leading space), the suffix as running text (without it)."""
    path = make_spm_tokenizer(tmp_path, ["\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>", "\u2581<EOT>"],
                             "user_defined_symbols")
    tok, running = Tokenizer(path), spm_without_dummy_prefix(path)
    fim = tok.fim
    assert tok.leading_space and fim.style == "codellama"
    assert tok.encode(SUFFIX, add_bos=False) != running.encode(SUFFIX)  # else this test shows nothing
    ids = tok.fim_prompt(PREFIX, SUFFIX)
    assert ids == [tok.bos_id, fim.prefix] + tok.encode(PREFIX, add_bos=False) + [fim.suffix] + \
        running.encode(SUFFIX) + [fim.middle]
    # The middle's first word keeps its space: it is read after the prompt, not at a text's start.
    assert IncrementalDetokenizer(tok, ids).add(tok.encode("return", add_bos=False)[0]).startswith(" ")


def test_codestral_fim_prompt_is_suffix_first(tmp_path):
    """Mistral's (Codestral's) format: [SUFFIX]suffix[PREFIX] prefix after BOS, no middle token;
    the middle ends with EOS. Other files go before the prefix as #name headed text."""
    path = make_spm_tokenizer(tmp_path, ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"], "control_symbols")
    tok, running = Tokenizer(path), spm_without_dummy_prefix(path)
    fim = tok.fim
    assert (fim.style, fim.prefix, fim.suffix, fim.middle) == ("mistral", tok.token_id("[PREFIX]"),
                                                               tok.token_id("[SUFFIX]"), None)
    assert fim.eot == tok.eos_id and fim.stop_ids == (tok.eos_id,)
    expected = [tok.bos_id, fim.suffix] + running.encode(SUFFIX) + [fim.prefix]
    assert tok.fim_prompt(PREFIX, SUFFIX) == expected + tok.encode(PREFIX, add_bos=False)
    assert tok.fim_prompt(PREFIX, SUFFIX, [("a.py", "x = 1")], path="main.py") == \
        expected + tok.encode("#a.py\nx = 1\n#main.py\n" + PREFIX, add_bos=False)


def test_codegemma_fim_ends_a_middle_at_the_file_separator_too(tmp_path):
    """CodeGemma's FIM tokens are named as Qwen's; its middles also end at <|file_separator|>."""
    path = make_spm_tokenizer(tmp_path, ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>"],
                             "user_defined_symbols", dummy_prefix=False)
    tok = Tokenizer(path)
    fim, end = tok.fim, tok.token_id("<|file_separator|>")
    assert not tok.leading_space and fim.style == "qwen" and fim.eot == tok.eos_id
    assert fim.stop_ids == (tok.eos_id, end)
    assert tok.fim_prompt(PREFIX, SUFFIX) == [tok.bos_id, fim.prefix] + tok.encode(PREFIX, add_bos=False) + \
        [fim.suffix] + tok.encode(SUFFIX, add_bos=False) + [fim.middle]


def test_tokenizers_without_dummy_prefix_encode_a_suffix_as_before(spm_tokenizer_dir, bpe_dir):
    for path in (spm_tokenizer_dir, bpe_dir[1]):
        tok = Tokenizer(path)
        assert not tok.leading_space
        assert tok.encode_continuation(SUFFIX) == tok.encode(SUFFIX, add_bos=False)


def test_eos_ids_from_generation_config(tmp_path):
    path = make_byte_bpe_tokenizer(str(tmp_path), "qwen")
    tok = Tokenizer(path)
    eos, im_end = tok.token_id("<|endoftext|>"), tok.token_id("<|im_end|>")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, eos]}))
    tok = Tokenizer(path)
    assert tok.eos_id == eos and tok.eos_ids == (eos, im_end)


def test_vocab_and_merges_folder_reads_through_transformers(tmp_path):
    """No tokenizer.json (older GPT-2 style folders, like CodeGen's): transformers' tokenizer."""
    import os

    from tokenizers import Tokenizer as JsonTokenizer

    path = make_byte_bpe_tokenizer(str(tmp_path), "gpt2")
    json_tok = JsonTokenizer.from_file(f"{path}/tokenizer.json")
    json_tok.model.save(path)  # vocab.json, merges.txt
    os.remove(f"{path}/tokenizer.json")
    tok = Tokenizer(path)
    assert tok.plain_texts is None and tok.bos_id is None and tok.eos_id == json_tok.token_to_id("<|endoftext|>")
    rng = random.Random(2)
    for text in TEXTS:
        assert tok.encode(text) == json_tok.encode(text).ids
    prompt = tok.encode("x = 1\n")
    for _ in range(50):
        ids = _streams(tok, rng)
        detok = IncrementalDetokenizer(tok, prompt)
        assert "".join(detok.add(t) for t in ids) + detok.flush() == tok.decode(ids)


def test_a_prompt_reads_infilling_token_texts_as_the_tokens(bpe_dir, spm_tokenizer_dir):
    """Client-side infilling templates: the marker texts are the model's tokens, as the Hugging
    Face tokenizer reads them (byte-level models) and where sentencepiece never yields them."""
    from transformers import AutoTokenizer

    style, path = bpe_dir
    tok = Tokenizer(path)
    if tok.fim is None:
        assert tok.markers == {}
        return
    pre, suf, mid = (tok._piece(i) for i in (tok.fim.prefix, tok.fim.suffix, tok.fim.middle))
    text = f"{pre}def f(x):\n    {suf}\n    return y\n{mid}"
    assert tok.encode_prompt(text) == AutoTokenizer.from_pretrained(path)(text)["input_ids"]
    spm = Tokenizer(spm_tokenizer_dir)
    fim = spm.fim
    ids = spm.encode_prompt("<PRE> def f(x): <SUF>\n <MID>")
    assert ids[0] == spm.bos_id and [i for i in ids if i in (fim.prefix, fim.suffix, fim.middle)] == [
        fim.prefix, fim.suffix, fim.middle]
    assert fim.prefix not in spm.encode("<PRE> def f(x):")  # plain encoding keeps the text as text
    assert spm.encode_prompt("def f(x): <PR E>") == spm.encode("def f(x): <PR E>")
