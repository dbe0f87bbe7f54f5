"""Per-request sampling settings: one small frozen dataclass, validated on creation."""
from __future__ import annotations

from dataclasses import dataclass, field


MAX_TOP_LOGPROBS = 20

@dataclass(frozen=True)
class SamplingParams:
    """How to sample one prompt. Temperature 0 means greedy.

    `seed` makes sampling reproducible whatever else is in the batch: the noise of
    sample i at output position t is a hash of (seed, i, t), never a shared stream.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    # Min-p: after temperature, a token stays only if its probability is at least min_p times the
    # likeliest token's (llama.cpp's, vLLM's and Ollama's min_p). 0: off.
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 16
    min_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    # A new line indented by fewer columns (spaces and tabs, one each) ends the output before that
    # line: the completion stays inside the block the cursor is in. The first line (the rest of the
    # cursor's own line) never counts, nor do blank lines. None or 0: off.
    stop_at_dedent: int | None = None
    ignore_eos: bool = False
    logprobs: bool = False
    # With logprobs: this many likeliest tokens at each position, with their log probabilities.
    top_logprobs: int = 0
    # Speculation per request: None follows the engine; False turns drafting off.
    speculate: bool | None = None
    # The output is one JSON object (OpenAI's response_format json_object): engine/json_object.py.
    json_object: bool = False
    # With json_object: what this machine accepts instead: JSON a compiled schema does (engine/json_schema.py
    # compile_schema), a whole answer a pattern matches (engine/json_pattern.py), a Qwen3-Coder call
    # (engine/xml_call.py).
    json_schema: object | None = field(default=None, repr=False)
    # (token id, bias) pairs added to those tokens' logits before any filter (OpenAI's logit_bias):
    # -100 bans a token in practice, +100 all but forces it.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # With json_object, a thinking model's reasoning first: (inside, open id or None, close id): the
    # constraint starts after the close token (engine/json_object.py ThinkFirst); `inside` where the
    # prompt leaves the block open.
    think_first: tuple[bool, int | None, int] | None = None
    # Special tokens written into the output text as the given text (which the detokenizer otherwise
    # leaves out): the chat server's tool-call markers, e.g. Mistral's [TOOL_CALLS].
    special_texts: tuple[tuple[int, str], ...] = ()
    # Benchmarks only (trace replay): one recorded continuation per sample, taken wherever the
    # engine would pick a token; EOS after its end. Not reachable from the HTTP API.
    replay_token_ids: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        _check(isinstance(self.n, int) and self.n >= 1, "n must be an integer >= 1, got %r" % (self.n,))
        _check(self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        _check(isinstance(self.top_k, int) and 0 <= self.top_k < 2**31, f"top_k must be an integer in [0, 2**31), got {self.top_k}")
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        _check(self.repetition_penalty > 0.0, f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        _check(-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        _check(-2.0 <= self.frequency_penalty <= 2.0, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, f"max_tokens must be an integer >= 1, got {self.max_tokens}")
        _check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens <= self.max_tokens,
               f"min_tokens must be an integer in [0, max_tokens], got {self.min_tokens}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        _check(self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _check(self.stop_at_dedent is None or (type(self.stop_at_dedent) is int and self.stop_at_dedent >= 0),
               f"stop_at_dedent must be an integer >= 0, got {self.stop_at_dedent!r}")
        _check(type(self.top_logprobs) is int and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
               f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        _check(self.logprobs or not self.top_logprobs, "top_logprobs needs logprobs")
        _check(self.json_schema is None or (self.json_object and hasattr(self.json_schema, "start")),
               "json_schema needs json_object and a schema compiled by engine.json_schema.compile_schema")
        _check(not (self.json_object and self.ignore_eos), "json_object ends the output where the object closes: "
               "not with ignore_eos")
        _check(self.think_first is None or (self.json_object and len(self.think_first) == 3),
               "think_first needs json_object and (inside, open id or None, close id)")
        # One bias a token, the last given (JSON keys "5" and "05" name one token).
        object.__setattr__(self, "logit_bias", tuple(dict((int(i), float(b)) for i, b in self.logit_bias).items()))
        _check(all(i >= 0 and -100.0 <= b <= 100.0 for i, b in self.logit_bias),
               "logit_bias: (token id >= 0, bias in [-100, 100]) pairs")
        object.__setattr__(self, "special_texts", tuple((int(i), str(t)) for i, t in self.special_texts))
        _check(all(i >= 0 and t for i, t in self.special_texts), "special_texts: (token id >= 0, non-empty text) pairs")
        # Read for every row of every step (engine/llm_engine.py): whether this request's rows are
        # built one by one (penalties read the history, json_object the text's state), kept once.
        object.__setattr__(self, "row_by_row", self.needs_penalties or self.json_object)
        if self.replay_token_ids is not None:
            object.__setattr__(self, "replay_token_ids", tuple(tuple(int(t) for t in r) for r in self.replay_token_ids))
            _check(len(self.replay_token_ids) == self.n, "replay_token_ids needs one continuation per sample")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
