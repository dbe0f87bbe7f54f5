"""Appends a sequence's new tokens: its text (incremental detokenization), and where it ends
(an EOS or stop token, a stop string, max_tokens, the model's context)."""
from __future__ import annotations

from typing import Sequence as Seq

from engine.sequence import Sequence


class StopChecker:
    def __init__(self, eos_ids: Seq[int], max_model_len: int) -> None:
        self.eos_ids = frozenset(eos_ids)
        self.max_model_len = max_model_len

    def append(self, seq: Sequence, tokens: Seq[int], logprobs: Seq[float] | None) -> None:
        """Appends tokens one at a time until the sequence ends (the rest are dropped)."""
        for j, token in enumerate(tokens):
            self._append(seq, token, logprobs[j] if logprobs else None)
            if seq.is_finished:
                return

    def _append(self, seq: Sequence, token: int, logprob: float | None) -> None:
        p = seq.params
        seq.output_token_ids.append(token)
        seq.mark_first_token()
        if logprob is not None:
            seq.logprobs.append(logprob)
        if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            seq.text += seq.detokenizer.flush()
            seq.finish("stop", token)
            return
        piece = seq.detokenizer.add(token)
        if piece:
            seq.text += piece
            if p.stop and _stop_string(seq, len(piece)):
                return
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.text += seq.detokenizer.flush()
            seq.finish("length")


def _stop_string(seq: Sequence, piece_len: int) -> bool:
    """Ends the sequence at the first stop string the new piece completes (the text stops before it)."""
    longest = max(len(s) for s in seq.params.stop)
    start = max(0, len(seq.text) - piece_len - longest + 1)
    hits = [(idx, s) for s in seq.params.stop if (idx := seq.text.find(s, start)) >= 0]
    if not hits:
        return False
    idx, stop = min(hits)
    seq.text = seq.text[:idx]
    seq.finish("stop", stop)
    return True
