"""One sample being generated: its tokens, KV blocks, text and finish state."""
from __future__ import annotations

import enum
import time
from array import array

from engine.outputs import SpecStats
from engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, seq_id: int, request_id: str, sample_index: int, prompt_token_ids: list[int],
                 params: SamplingParams, noise_key: int, client: str | None = None) -> None:
        self.seq_id = seq_id  # also its place in line: a smaller id arrived earlier
        self.request_id = request_id
        self.client = client
        self.sample_index = sample_index
        self.prompt_token_ids = prompt_token_ids
        self.output_token_ids: list[int] = []
        self.params = params
        self.noise_key = noise_key
        self.status = SequenceStatus.WAITING
        # status is FINISHED, kept by finish() (the only place that sets it): read several times per
        # token, and a property over the enum was measurably slower at large batches.
        self.is_finished = False
        # int64s in an array, not a list: a step joins the tables of its sequences as bytes
        # (engine/step_batch.py) instead of converting them an int at a time.
        self.block_table: array = array("q")
        self.block_chain: list[tuple[int, int]] = []  # prefix-cache identity of each full block (BlockManager)
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.cached_prompt_tokens: int | None = None  # of its prompt, what the prefix cache held when it first started
        self.text = ""
        self.logprobs: list[float] = []
        self.top_logprobs: list[tuple[tuple[int, float], ...]] = []  # per token, when params.top_logprobs
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.spec = SpecStats()
        self.first_token_time: float | None = None
        self.detokenizer = None  # set by the engine
        self.json_state = None  # params.json_object: its output's state as a JSON object (engine/json_object.py)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_prefilling(self) -> bool:
        return self.num_tokens - self.num_computed_tokens > 1

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens at positions [start, end) of prompt + output, without concatenating all."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def last_token(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.is_finished = True
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def mark_first_token(self) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
