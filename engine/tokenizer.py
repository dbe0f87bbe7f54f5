"""Tokenizer of a model folder, its fill-in-the-middle format, and incremental detokenization.

What reads the folder: a sentencepiece `tokenizer.model` (CodeLlama) is read with sentencepiece
itself (the ids the model was trained on); a `tokenizer.json` with the `tokenizers` library,
exactly as the file says (transformers 5 rebuilds some tokenizer classes' pre-tokenizers from its
own defaults); anything else (vocab.json + merges.txt) with transformers' AutoTokenizer.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from engine.loader import hf_token_ids, read_folder_json


@dataclass(frozen=True)
class FimFormat:
    """A model's fill-in-the-middle tokens, found among its tokenizer's own special tokens.

    Prompts are prefix-suffix-middle: [BOS] prefix-token prefix suffix-token suffix middle-token,
    except Mistral's (Codestral's), which is suffix first with no middle token: [BOS] suffix-token
    suffix prefix-token prefix. The model then writes the middle and ends it with one of
    `stop_ids`. Repo-level prompts put other files first: with `file_sep` (Qwen2.5-Coder,
    StarCoder2) in the model's own layout (`style`), else as `#name` headed text before the prefix
    (DeepSeek-Coder's convention).
    """

    style: str  # "codellama", "mistral", "qwen", "starcoder" or "deepseek"
    prefix: int
    suffix: int
    middle: int | None  # None: the format has none (Mistral's)
    eot: int | None  # the token that ends a middle: CodeLlama's <EOT>, else the end-of-text token
    stop_ids: tuple[int, ...]  # every id that ends a middle: eot, the EOS ids, file_sep, pad, CodeGemma's file end
    repo_name: int | None = None
    file_sep: int | None = None
    pad: int | None = None


# style, prefix, suffix, middle, end of middle, repo name, file separator, pad
_FIM_TOKENS = (
    ("codellama", "<PRE>", "<SUF>", "<MID>", "<EOT>", None, None, None),
    ("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", None, None, None),
    ("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>", "<|repo_name|>", "<|file_sep|>",
     "<|fim_pad|>"),
    ("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", "<repo_name>", "<file_sep>",
     "<fim_pad>"),
    ("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>", None, None, None),
    ("mistral", "[PREFIX]", "[SUFFIX]", None, None, None, None, None),
)
# Tokens that end a file, so a middle too, besides a format's own (CodeGemma's, whose FIM tokens
# are named as Qwen's).
_FILE_ENDS = ("<|file_separator|>",)
# A character to start a text with so that what follows it is tokenized as running text: see
# Tokenizer.encode_continuation.
_LEAD = "\u00a4"


class Tokenizer:
    def __init__(self, path: str) -> None:
        self.path = path
        self._spm = self._json = self._hf = None
        # Each plain piece's text (None for control, unknown, byte and special pieces): after text has
        # been released, a plain piece adds exactly this (IncrementalDetokenizer). None: no fast path.
        self.plain_texts: list[str | None] | None = None
        if os.path.isfile(os.path.join(path, "tokenizer.model")):
            self._load_spm(os.path.join(path, "tokenizer.model"))
        elif os.path.isfile(os.path.join(path, "tokenizer.json")):
            self._load_json(os.path.join(path, "tokenizer.json"))
        else:
            self._load_hf(path)
        self.eos_ids = self._find_eos_ids()
        if self.eos_id is None and self.eos_ids:
            self.eos_id = self.eos_ids[0]
        # Whether encoding puts a space before a text's first word by itself (sentencepiece's dummy
        # prefix, as CodeLlama's and Mistral's tokenizers do): "a" then starts with the piece of a space.
        first = self.encode("a", add_bos=False)[:1]
        self.leading_space = bool(first) and self._piece(first[0]).startswith("\u2581")
        self._lead_ids = self.encode(_LEAD, add_bos=False) if self.leading_space else []
        self.fim = self._find_fim()
        self.markers = self._find_markers()
        self._marker_split = (re.compile("(" + "|".join(map(re.escape, sorted(self.markers, key=len, reverse=True)))
                                         + ")") if self.markers else None)

    def _load_spm(self, file: str) -> None:
        import sentencepiece

        sp = self._spm = sentencepiece.SentencePieceProcessor(model_file=file)
        self.vocab_size = sp.get_piece_size()
        self.bos_id = _or_none(sp.bos_id())
        self.eos_id = _or_none(sp.eos_id())
        self.plain_texts = [_spm_plain_text(sp, i) for i in range(self.vocab_size)]

    def _load_json(self, file: str) -> None:
        from tokenizers import Tokenizer as JsonTokenizer

        tk = self._json = JsonTokenizer.from_file(file)
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)
        self.bos_id = _auto_prefix(tk.encode("a").ids, tk.encode("a", add_special_tokens=False).ids)
        self.eos_id = self._configured_eos()
        with open(file, encoding="utf-8") as f:
            decoder = json.load(f).get("decoder") or {}
        if decoder.get("type") == "ByteLevel":  # each token's bytes, concatenated: text adds up piece by piece
            added = set(tk.get_added_tokens_decoder())
            texts = tk.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)
            self.plain_texts = [None if i in added or not t or "\ufffd" in t else t for i, t in enumerate(texts)]

    def _load_hf(self, path: str) -> None:
        from transformers import AutoTokenizer

        hf = self._hf = AutoTokenizer.from_pretrained(path)
        self.vocab_size = len(hf)
        self.bos_id = _auto_prefix(hf("a")["input_ids"], hf("a", add_special_tokens=False)["input_ids"])
        self.eos_id = hf.eos_token_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """The text's ids; with add_bos, preceded by the BOS the tokenizer itself adds (none for
        tokenizers that add none, like Qwen2's and StarCoder2's)."""
        if self._spm is not None:
            ids = self._spm.encode(text)
        elif self._json is not None:
            ids = self._json.encode(text, add_special_tokens=False).ids
        else:
            ids = self._hf.encode(text, add_special_tokens=False)
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + list(ids)

    def encode_prompt(self, text: str) -> list[int]:
        """A client's prompt: as encode, except that the texts of the model's infilling tokens
        ("<PRE>", "<|fim_middle|>", ...; `markers`) stand for those tokens, as llama.cpp and the
        Hugging Face tokenizers read them. A client that writes its own infilling template (Continue's
        OpenAI provider, llama-coder's raw Ollama prompts) then gives the model its infilling tokens,
        which a sentencepiece model's plain encoding never yields (they are control pieces)."""
        if self._marker_split is None or not any(m in text for m in self.markers):
            return self.encode(text)
        bos = [self.bos_id] if self.bos_id is not None else []
        return bos + self.encode_marked(text, self._marker_split, self.markers)

    def encode_marked(self, text: str, split: re.Pattern, marked: Mapping[str, int]) -> list[int]:
        """`text`'s ids (no BOS), each text `split` matches (in its one group) as its id in `marked`."""
        ids: list[int] = []
        for i, part in enumerate(split.split(text)):
            if i % 2:
                ids.append(marked[part])
            elif part:
                ids += self.encode(part, add_bos=False)
        return ids

    def encode_continuation(self, text: str) -> list[int]:
        """The ids of `text` where it continues other text (a suffix after a fill-in-the-middle
        token): without the space a tokenizer with a dummy prefix puts before a text's start, which
        the model never saw there (CodeLlama's and Mistral's infilling formats encode the suffix
        so). The text is tokenized after a lead character whose ids are then taken off."""
        if not self.leading_space or not text:
            return self.encode(text, add_bos=False)
        lead = self._lead_ids
        ids = self.encode(_LEAD + text, add_bos=False)
        if ids[:len(lead)] == lead:
            return ids[len(lead):]
        return self.encode(text, add_bos=False)  # the lead merged with the text: as at a text's start

    def decode(self, ids: Sequence[int]) -> str:
        # Models may pad their vocabulary past the tokenizer's; such ids have no text.
        ids = [int(i) for i in ids if 0 <= i < self.vocab_size]
        if self._spm is not None:
            return self._spm.decode(ids)
        if self._json is not None:
            return self._json.decode(ids, skip_special_tokens=True)
        return self._hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _piece(self, i: int) -> str:
        if self._spm is not None:
            return self._spm.id_to_piece(i)
        if self._json is not None:
            return self._json.id_to_token(i) or ""
        return self._hf.convert_ids_to_tokens(i) or ""

    def token_id(self, piece: str) -> int | None:
        if self._spm is not None:
            i = self._spm.piece_to_id(piece)
            return None if i == self._spm.unk_id() and piece != self._spm.id_to_piece(i) else i
        if self._json is not None:
            return self._json.token_to_id(piece)
        i = self._hf.convert_tokens_to_ids(piece)
        return None if i is None or i == self._hf.unk_token_id else i

    def fim_prompt(self, prefix: str, suffix: str, files: Sequence[tuple[str, str]] = (), path: str | None = None,
                   repo: str | None = None) -> list[int]:
        """Prompt ids to fill in between prefix and suffix, in the model's own format. `files`:
        other files of the repository as (name, text), put before the current one; `path`: the
        current file's name; `repo`: the repository's name (where the format has a token for it)."""
        fim = self.fim
        if fim is None:
            raise ValueError("this model has no fill-in-the-middle tokens; suffix is not supported")
        ids = [self.bos_id] if self.bos_id is not None else []
        if fim.file_sep is None:  # no repo tokens: other files as text before the prefix
            head = "".join(f"#{name}\n{body}\n" for name, body in files) + (f"#{path}\n" if path else "")
            return ids + self._fim_ids(head + prefix, suffix)
        if repo is not None:
            ids += [fim.repo_name] + self._text(repo + ("\n" if fim.style == "qwen" else ""))
        if fim.style == "qwen":  # ...<|file_sep|>path\n<|fim_prefix|>prefix<|fim_suffix|>suffix<|fim_middle|>
            for name, body in files:
                ids += [fim.file_sep] + self._text(f"{name}\n{body}\n")
            if files or path:
                ids += [fim.file_sep] + self._text(f"{path}\n" if path else "")
            return ids + self._fim_ids(prefix, suffix)
        # StarCoder2: ...<file_sep><fim_prefix>path\nprefix<fim_suffix>suffix<fim_middle>
        for name, body in files:
            ids += [fim.file_sep] + self._text(f"{name}\n{body}")
        if files or repo is not None:
            ids.append(fim.file_sep)
        return ids + self._fim_ids((f"{path}\n" if path else "") + prefix, suffix)

    def _fim_ids(self, prefix: str, suffix: str) -> list[int]:
        fim = self.fim
        if fim.middle is None:  # Mistral's: [SUFFIX]suffix[PREFIX] prefix
            return [fim.suffix] + self.encode_continuation(suffix) + [fim.prefix] + self._text(prefix)
        return [fim.prefix] + self._text(prefix) + [fim.suffix] + self.encode_continuation(suffix) + [fim.middle]

    def _text(self, text: str) -> list[int]:
        return self.encode(text, add_bos=False) if text else []

    def _configured_eos(self) -> int | None:
        """The EOS token named by tokenizer_config.json or special_tokens_map.json."""
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            eos = (read_folder_json(self.path, name) or {}).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and self.token_id(eos) is not None:
                return self.token_id(eos)
        return None

    def _find_eos_ids(self) -> tuple[int, ...]:
        """The tokenizer's EOS first, then those of generation_config.json and config.json."""
        ids = [self.eos_id] if self.eos_id is not None else []
        for name in ("generation_config.json", "config.json"):
            ids += hf_token_ids((read_folder_json(self.path, name) or {}).get("eos_token_id"))
        return tuple(dict.fromkeys(ids))

    def _find_fim(self) -> FimFormat | None:
        for style, *names in _FIM_TOKENS:
            prefix, suffix, middle, end, repo, sep, pad = (self.token_id(n) if n else None for n in names)
            if prefix is None or suffix is None or (middle is None and style != "mistral") or (
                    style == "codellama" and end is None):
                continue
            eot = end if end is not None else self.eos_id
            ends = (self.token_id(name) for name in _FILE_ENDS)
            stops = tuple(dict.fromkeys(i for i in (eot, *self.eos_ids, sep, pad, *ends) if i is not None))
            return FimFormat(style, prefix, suffix, middle, eot, stops, repo, sep, pad)
        return None


    def _find_markers(self) -> dict[str, int]:
        """The infilling tokens whose text the detokenizer leaves out, by that text (a piece's
        leading space mark dropped: CodeLlama's "▁<PRE>" is written "<PRE>")."""
        fim = self.fim
        if fim is None:
            return {}
        ids = (fim.prefix, fim.suffix, fim.middle, fim.eot, fim.repo_name, fim.file_sep, fim.pad)
        markers = {}
        for i in ids:
            text = self._piece(i).lstrip("\u2581") if i is not None else ""
            if text and not self.decode([i]):
                markers.setdefault(text, i)
        return markers


def _spm_plain_text(sp, i: int) -> str | None:
    """What piece i adds to a text it does not start: a normal piece's text, and the character of
    a byte piece that is a whole printable ASCII character or a tab or newline (a newline is a byte
    piece in Llama's vocabulary); None for the rest (control, unknown, unused, other bytes)."""
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
        return None
    piece = sp.id_to_piece(i)
    if not sp.is_byte(i):
        return piece.replace("\u2581", " ")
    value = int(piece[3:-1], 16)  # "<0x0A>"
    return chr(value) if 0x20 <= value < 0x7F or value in (0x09, 0x0A, 0x0D) else None


def _auto_prefix(with_special: list[int], without: list[int]) -> int | None:
    """The one id a tokenizer puts before the text by itself (its BOS), if any."""
    if len(with_special) == len(without) + 1 and with_special[1:] == without:
        return with_special[0]
    return None


def _or_none(i: int) -> int | None:
    return None if i < 0 else i


class IncrementalDetokenizer:
    """Turns a growing list of output ids into text, a piece at a time.

    Decoding a window that starts a few tokens back keeps sentencepiece spaces and
    multi-token UTF-8 characters right: text is only released once the window's
    decode no longer ends in a replacement character. Fast path (sentencepiece): once the
    window has released text and holds nothing back, a plain piece adds exactly its own text
    (a leading space is only ever dropped at the start of a text), with no decode at all.
    """

    CONTEXT = 5
    WINDOW = 64  # ids released before the window is cut back

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], fast: bool = True,
                 kept: Mapping[int, str] | None = None) -> None:
        """`kept`: special tokens written as the given text (decoding leaves special tokens out)."""
        self.tokenizer = tokenizer
        self.kept = kept or None
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self._plain = tokenizer.plain_texts if fast else None
        self._clean = False  # text was released and nothing is held back

    def add(self, token_id: int) -> str:
        token_id = int(token_id)
        if self.kept is not None and token_id in self.kept:
            text = self.flush() + self.kept[token_id]  # what was held back comes before it
            self.ids.append(token_id)
            self.prefix_offset = self.read_offset = len(self.ids)
            self._clean = True  # nothing held back: a plain piece next adds its own text, space included
            return text
        self.ids.append(token_id)
        plain = self._plain
        if plain is not None and self._clean and 0 <= token_id < len(plain) and plain[token_id]:
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            if self.prefix_offset > self.WINDOW:
                self._trim()
            return plain[token_id]
        prefix_text = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            self._clean = False
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        self._clean = True
        self._trim()
        return new_text[len(prefix_text):]

    def _trim(self) -> None:
        """Keeps the window short so each call costs O(1), not O(length)."""
        if self.prefix_offset > self.WINDOW:
            drop = self.prefix_offset
            self.ids = self.ids[drop:]
            self.prefix_offset -= drop
            self.read_offset -= drop

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end)."""
        prefix_text = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self.tokenizer.decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text):]
