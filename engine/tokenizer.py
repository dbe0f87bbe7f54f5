"""Tokenizer of a model folder, and incremental detokenization for streaming.

A folder with a sentencepiece `tokenizer.model` is read with sentencepiece itself
(the ids the model was trained on); otherwise a transformers tokenizer is used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class FimTokens:
    """CodeLlama's infilling tokens: <PRE> {prefix} <SUF>{suffix} <MID> ... <EOT>."""

    prefix: int
    suffix: int
    middle: int
    eot: int


class Tokenizer:
    def __init__(self, path: str) -> None:
        self.path = path
        spm_path = os.path.join(path, "tokenizer.model")
        if os.path.isfile(spm_path):
            import sentencepiece

            self._spm = sentencepiece.SentencePieceProcessor(model_file=spm_path)
            self._hf = None
            self.vocab_size = self._spm.get_piece_size()
            self.bos_id = _or_none(self._spm.bos_id())
            self.eos_id = _or_none(self._spm.eos_id())
            sp = self._spm
            # Each plain piece's text (None for control, unknown, byte and user-defined pieces):
            # after text has been released, a plain piece adds exactly this (IncrementalDetokenizer).
            self.plain_texts: list[str | None] | None = [
                None if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)
                else sp.id_to_piece(i).replace("\u2581", " ") for i in range(self.vocab_size)]
        else:
            from transformers import AutoTokenizer

            self._spm = None
            self._hf = AutoTokenizer.from_pretrained(path)
            self.vocab_size = len(self._hf)
            self.bos_id = self._hf.bos_token_id
            self.eos_id = self._hf.eos_token_id
            self.plain_texts = None
        self.fim = self._find_fim()

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        if self._spm is not None:
            ids = self._spm.encode(text)
        else:
            ids = self._hf.encode(text, add_special_tokens=False)
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        # Models may pad their vocabulary past the tokenizer's; such ids have no text.
        ids = [int(i) for i in ids if 0 <= i < self.vocab_size]
        if self._spm is not None:
            return self._spm.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def token_id(self, piece: str) -> int | None:
        if self._spm is not None:
            i = self._spm.piece_to_id(piece)
            return None if i == self._spm.unk_id() and piece != self._spm.id_to_piece(i) else i
        i = self._hf.convert_tokens_to_ids(piece)
        return None if i is None or i == self._hf.unk_token_id else i

    def _find_fim(self) -> FimTokens | None:
        for fmt in ("<{}>", "▁<{}>"):
            ids = [self.token_id(fmt.format(name)) for name in ("PRE", "SUF", "MID", "EOT")]
            if all(i is not None for i in ids):
                return FimTokens(*ids)
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

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], fast: bool = True) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self._plain = tokenizer.plain_texts if fast else None
        self._clean = False  # text was released and nothing is held back

    def add(self, token_id: int) -> str:
        token_id = int(token_id)
        self.ids.append(token_id)
        plain = self._plain
        if plain is not None and self._clean and 0 <= token_id < len(plain) and plain[token_id]:
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
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
        if self.prefix_offset > 64:
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
