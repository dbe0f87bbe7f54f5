"""Predicted outputs (OpenAI's `prediction`): the text becomes token ids off the event loop, the
engine drafts from it, and the usage reports what became of its tokens.

accepted_prediction_tokens: tokens copied from the prediction as drafts and accepted by the
verification, summed over the choices (they are part of the output); rejected_prediction_tokens:
those drafted from it and rejected (computed, then thrown away). Prediction tokens never drafted
count in neither.
"""
from __future__ import annotations

from typing import Iterable

from engine.outputs import RequestOutput

from api.prompts import PromptTokenizer
from api.schemas import CompletionTokensDetails, Prediction

SOURCE = "prediction"  # the proposer's name for this draft source


async def prediction_ids(prediction: Prediction | None, tokens: PromptTokenizer, max_tokens: int) -> list[int] | None:
    """The prediction's token ids, cut to what an output of `max_tokens` could use; None without one."""
    if prediction is None:
        return None
    text = prediction.text
    bound = tokens.max_token_bytes
    if bound:  # a token covers at most `bound` characters: text beyond can never be reached
        text = text[:max_tokens * bound]
    if not text:
        return []
    ids = await tokens.run(len(text), lambda: tokens.tokenizer.encode(text, add_bos=False))
    return ids[:max_tokens]


def prediction_details(outputs: Iterable[RequestOutput]) -> CompletionTokensDetails:
    accepted = drafted = 0
    for out in outputs:
        for c in out.outputs:
            accepted += c.spec.accepted.get(SOURCE, 0)
            drafted += c.spec.drafted.get(SOURCE, 0)
    return CompletionTokensDetails(accepted_prediction_tokens=accepted, rejected_prediction_tokens=drafted - accepted)
