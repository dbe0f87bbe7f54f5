"""A sentencepiece BPE tokenizer for code, and its exact twin for `transformers.AutoTokenizer`.

The sentencepiece model is trained on lines (so "\\n" is never inside a piece: it is encoded
with the byte fallback <0x0A>, as in Llama), without a dummy prefix and without whitespace
normalization, so that indentation survives and runs of spaces become single pieces.

`tokenizer.json` is written by hand from the sentencepiece model rather than by transformers'
converter: the converter assumes Llama's dummy-prefix "▁" (a Prepend normalizer and a Strip
decoder), which would give different ids and eat one leading space when decoding.
"""
from __future__ import annotations

import json
import os
import random

FIM_PIECES = ("<PRE>", "<SUF>", "<MID>", "<EOT>")
SPIECE_UNDERLINE = "\u2581"


def trainer_options(vocab_size: int, threads: int = 1) -> dict:
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9999,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        # Whitespace starts a piece, but a run of spaces stays one word: indentation becomes
        # "▁▁▁▁▁▁▁▁" pieces instead of one token per space.
        split_by_whitespace=True,
        allow_whitespace_only_pieces=True,
        # Unicode scripts put "_" and "(" (Common) apart from letters (Latin): with the default
        # split, "__init__" or "self." could never be one piece.
        split_by_unicode_script=False,
        max_sentence_length=4096,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=list(FIM_PIECES),
        hard_vocab_limit=False,
        num_threads=threads,
        minloglevel=2,
    )


def sample_lines(documents: list[str], max_bytes: int, seed: int = 0) -> list[str]:
    """Non-empty lines of randomly chosen documents, about `max_bytes` in all."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    lines, size = [], 0
    for i in order:
        for line in documents[i].splitlines():
            if line.strip():
                lines.append(line)
                size += len(line) + 1
        if size >= max_bytes:
            break
    return lines


def train_sentencepiece(documents: list[str], output_dir: str, vocab_size: int,
                        sample_bytes: int = 4_000_000, threads: int = 1, seed: int = 0) -> str:
    """Trains `output_dir/tokenizer.model` on a sample of `documents`; returns its path."""
    import sentencepiece as spm

    os.makedirs(output_dir, exist_ok=True)
    lines = sample_lines(documents, sample_bytes, seed)
    model = os.path.join(output_dir, "tokenizer.model")
    with open(model, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=f,
                                       **trainer_options(vocab_size, threads))
    return model


def write_hf_tokenizer_files(output_dir: str, spm_path: str | None = None) -> None:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json next to tokenizer.model."""
    import sentencepiece as spm

    spm_path = spm_path or os.path.join(output_dir, "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=spm_path)
    special = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    with open(os.path.join(output_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizers_json(sp), f, ensure_ascii=False, indent=1)
    bos, eos, unk = sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id()), sp.id_to_piece(sp.unk_id())
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk}
    config = {
        # The generic fast tokenizer loads tokenizer.json as it is; LlamaTokenizer would rebuild
        # Llama's dummy-prefix pre-tokenizer around it.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # sentencepiece never parses control symbols out of text; neither should transformers.
        "split_special_tokens": True,
        "model_max_length": 1_000_000,
        "additional_special_tokens": [p for p in special if p in FIM_PIECES],
    }
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    with open(os.path.join(output_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({**specials, "additional_special_tokens": config["additional_special_tokens"]}, f, indent=2)


def tokenizers_json(sp) -> dict:
    """The `tokenizers` library's description of the same BPE as the sentencepiece model `sp`."""
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i in range(n) if sp.is_control(i) or sp.is_unknown(i)
        ],
        # No Prepend("▁"): the model was trained without a dummy prefix.
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": sp.id_to_piece(sp.bos_id()), "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": sp.id_to_piece(sp.bos_id()), "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": sp.id_to_piece(sp.bos_id()), "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {sp.id_to_piece(sp.bos_id()): {
                "id": sp.id_to_piece(sp.bos_id()), "ids": [sp.bos_id()], "tokens": [sp.id_to_piece(sp.bos_id())]}},
        },
        # No Strip(" ", 1, 0): there is no dummy-prefix space to take off.
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPIECE_UNDERLINE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": sp.id_to_piece(sp.unk_id()),
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(pair) for pair in bpe_merges(sp)],
        },
    }


def bpe_merges(sp) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a normal piece, ranked as sentencepiece does.

    sentencepiece's BPE encoder does not replay learned merges: at each step it joins the adjacent
    pair whose concatenation is the best-scoring piece. Listing every split of every piece, ordered
    by the score of the joined piece, makes the `tokenizers` BPE do exactly the same.
    """
    normal = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))}
    ranked = []
    for piece, piece_id in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-sp.get_score(piece_id), piece_id, normal[left], (left, right)))
    ranked.sort()
    return [pair for *_, pair in ranked]
