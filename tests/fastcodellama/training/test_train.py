from __future__ import annotations

import argparse
import json
import os
import random

import pytest

from fastcodellama.cli.main import build_parser, main
from fastcodellama.training import corpus, tokenizer_training, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBEDDED = os.path.join(REPO, "engine", "assets", "codemodel")

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "    indented = 1\n        deeper = [1, 2, 3]\n",
    "\tif x:\n\t\treturn {'k': 0x1F}\n",
    "class Foo(Bar):\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args)\n",
    "  leading two spaces",
    " ",
    "   ",
    "",
    "\n\n\n",
    "x = 1234567890 + 3.14159e-10\n",
    "s = 'héllo wörld — ünïcode ✓ 日本語 😀'\n",
    "# TODO: fix   the    spacing   \n",
    "print(f\"{value!r:>10}\")\r\n",
    "a\u00a0b\u2003c\x00d\x7f",
    "text with <PRE> and <s> and </s> and <EOT> inside",
    "if a<b>c: pass",
    "\"\"\"Docstring.\n\n    Args:\n        x: the thing.\n    \"\"\"\n",
    "ﬁ ﬂ Å Å",  # no normalization: compatibility forms stay as they are
]


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory) -> str:
    """A 600-piece tokenizer of the real recipe, trained on a slice of the stdlib."""
    d = str(tmp_path_factory.mktemp("tokenizer"))
    train_docs, _ = corpus.stdlib_corpus()
    tokenizer_training.train_sentencepiece(train_docs, d, vocab_size=600, sample_bytes=300_000)
    tokenizer_training.write_hf_tokenizer_files(d)
    return d


def _tokenizer_dirs(small_tokenizer_dir: str) -> list[str]:
    dirs = [small_tokenizer_dir]
    if os.path.isfile(os.path.join(EMBEDDED, "tokenizer.json")):
        dirs.append(EMBEDDED)
    return dirs


def test_sentencepiece_recipe(small_tokenizer_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(small_tokenizer_dir, "tokenizer.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3, 7)] == ["<PRE>", "<SUF>", "<MID>", "<EOT>"]
    assert all(sp.is_control(i) for i in range(3, 7))
    pieces = sp.encode("        return x\n", out_type=str)
    assert pieces[0] == "\u2581" * 8 and pieces[-1] == "<0x0A>"  # indentation is one piece; "\n" a byte
    assert sp.encode("x = 12", out_type=str)[-2:] == ["1", "2"]  # split digits
    assert sp.decode(sp.encode("  a\tb  \n")) == "  a\tb  \n"  # no dummy prefix, no whitespace folding
    assert sp.encode("<PRE>") != [sp.piece_to_id("<PRE>")]  # control symbols never come from text


def test_auto_tokenizer_gives_the_sentencepiece_ids(small_tokenizer_dir):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    train_docs, validation_docs = corpus.stdlib_corpus()
    texts = SNIPPETS + validation_docs[:3] + [d[:3000] for d in random.Random(0).sample(train_docs, 10)]
    for path in _tokenizer_dirs(small_tokenizer_dir):
        sp = spm.SentencePieceProcessor(model_file=os.path.join(path, "tokenizer.model"))
        hf = AutoTokenizer.from_pretrained(path)
        assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (1, 2, 0)
        assert hf.convert_tokens_to_ids(["<PRE>", "<SUF>", "<MID>", "<EOT>"]) == [3, 4, 5, 6]
        for text in texts:
            ids = [sp.bos_id()] + sp.encode(text)
            assert hf(text)["input_ids"] == ids, (path, text[:80])
            assert hf.encode(text, add_special_tokens=False) == ids[1:]
            assert hf.decode(ids, skip_special_tokens=True) == text == sp.decode(ids)


def test_bpe_merges_cover_every_split(small_tokenizer_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(small_tokenizer_dir, "tokenizer.model"))
    merges = tokenizer_training.bpe_merges(sp)
    assert len(set(merges)) == len(merges)
    assert all(sp.piece_to_id(a + b) != sp.unk_id() for a, b in merges)


def test_split_chunks_keep_every_character():
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(100)) + "y" * 300 + "\nlast"
    chunks = train.split_chunks(text, 120)
    assert "".join(chunks) == text
    assert all(len(c) <= 120 or c.count("\n") <= 1 for c in chunks)
    assert all(c.endswith("\n") for c in chunks[:-1])


def test_fim_example_is_psm():
    ids = train.SpecialIds(bos=1, eos=2, fim=(3, 4, 5, 6))
    encode = lambda s: [ord(c) + 100 for c in s]  # noqa: E731 - one id per character
    chunk = "def f(x):\n    return x\n"
    for seed in range(20):
        out = train.fim_example(encode, ids, chunk, random.Random(seed))
        assert out[:2] == [1, 3] and out[-1] == 6 and out.count(4) == out.count(5) == 1
        pre, rest = out[2:out.index(4)], out[out.index(4) + 1:]
        suf, mid = rest[:rest.index(5)], rest[rest.index(5) + 1:-1]
        assert "".join(chr(i - 100) for i in pre + mid + suf) == chunk


def test_document_examples_and_packing():
    ids = train.SpecialIds(bos=1, eos=2, fim=(3, 4, 5, 6))
    encode = lambda s: [ord(c) + 100 for c in s]  # noqa: E731
    text = "a = 1\nb = 2\nc = 3\n"
    plain = list(train.document_examples(encode, ids, text, 6, 0.0, random.Random(0)))
    assert sum(plain, []) == [1] + encode(text) + [2]
    rows = list(train.packed_rows(iter([list(range(10)), list(range(10, 25))]), seq_len=8))
    assert rows == [list(range(0, 9)), list(range(8, 17)), list(range(16, 25))]


def test_lr_schedule():
    assert train.lr_at(0, 0.0, 1.0, 10) == pytest.approx(0.1)
    assert train.lr_at(10, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert train.lr_at(500, 1.0, 1.0, 10) == pytest.approx(train.MIN_LR_RATIO)
    assert train.lr_at(500, 2.0, 1.0, 10) == pytest.approx(train.MIN_LR_RATIO)
    # The default warm-up ends at 100 steps or 5% of the run, whichever comes first.
    assert train.lr_at(10, 0.025, 1.0, 100, 0.05) == pytest.approx(0.5)
    assert train.lr_at(10, 0.06, 1.0, 100, 0.05) < 1.0 and train.lr_at(10, 0.06, 1.0, 100, 0.05) > 0.9  # cosine
    assert train.lr_at(99, 0.001, 1.0, 100, 0.05) == pytest.approx(1.0)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])  # the `fastcodellama train` command as installed


def test_rejects_missing_preset_and_budget(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "o"), "--max-steps", "1"]) == 2
    assert main(["train", "--output", str(tmp_path / "o"), "--preset", "micro"]) == 2
    assert "--max-steps" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_micro_training_end_to_end(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_docs, validation_docs = corpus.stdlib_corpus()
    data, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    corpus.write_jsonl(str(data), train_docs[:30])
    corpus.write_jsonl(str(validation), validation_docs[:2])
    out = tmp_path / "model"
    args = _parse(["--data", str(data), "--validation", str(validation), "--preset", "micro",
                   "--output", str(out), "--max-steps", "40", "--seq-len", "64", "--batch-size", "4",
                   "--lr", "3e-3", "--warmup-steps", "5", "--eval-every", "20", "--eval-rows", "8",
                   "--save-every", "20", "--tokenizer-sample-mb", "0.2", "--fim-rate", "0.5"])
    assert args.func(args) == 0

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == 40
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.5
    record = json.loads((out / "training.json").read_text())
    assert record["finished"] and record["steps"] == 40 and record["tokens_seen"] == 40 * 4 * 64
    assert record["validation_loss"] == pytest.approx(log[-1]["val_loss"], abs=1e-4)
    assert "--preset micro" in record["command"] and record["machine"]["torch_threads"] == 1
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"]
    assert sorted(os.listdir(out)) == sorted([
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "train_log.jsonl", "training.json"])

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16 and model.config.num_key_value_heads == 1
    ids = tok("def f(x):\n    return x\n", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)

    # Fine-tuning keeps the tokenizer of --init and starts from its weights.
    tuned = tmp_path / "tuned"
    args = _parse(["--data", str(data), "--validation", str(validation), "--init", str(out),
                   "--output", str(tuned), "--max-steps", "3", "--seq-len", "64", "--batch-size", "2",
                   "--eval-rows", "8"])
    assert args.func(args) == 0
    assert (tuned / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    first = json.loads((tuned / "train_log.jsonl").read_text().splitlines()[0])
    assert first["val_loss"] == pytest.approx(log[-1]["val_loss"], abs=0.05)  # bf16 round trip


@pytest.mark.skipif(not os.path.isfile(os.path.join(EMBEDDED, "config.json")), reason="no embedded model yet")
def test_embedded_model_folder_loads():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(EMBEDDED)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (8192, 256, 6)
    assert (config.num_attention_heads, config.num_key_value_heads, config.tie_word_embeddings) == (4, 2, True)
    size = sum(os.path.getsize(os.path.join(EMBEDDED, f)) for f in os.listdir(EMBEDDED))
    assert size < 16 * 2**20
    record = json.loads(open(os.path.join(EMBEDDED, "training.json")).read())
    assert record["validation_loss"] < 9.0  # better than uniform over 8192 pieces (ln 8192 = 9.01)
