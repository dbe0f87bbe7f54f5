"""Helpers shared by engine tests."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.proposer import Draft, DraftQuery


def hf_greedy(model_dir: str, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    hf = _hf_model(model_dir)
    out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                      do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


_HF_CACHE: dict = {}


def _hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    if model_dir not in _HF_CACHE:
        _HF_CACHE[model_dir] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _HF_CACHE[model_dir]


def assert_no_leaks(engine) -> None:
    bm = engine.block_manager
    assert not engine.requests, f"unfinished requests: {list(engine.requests)}"
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert bm.num_free == bm.num_blocks, f"{bm.num_blocks - bm.num_free} blocks leaked"
    assert all(r == 0 for r in bm.refcounts)


class ScriptedProposer:
    """Test proposer: drafts from a given continuation per sequence, optionally corrupted."""

    def __init__(self, continuations: dict[int, list[int]] | None = None, corrupt_every: int = 0,
                 max_draft: int = 8, random_drafts: bool = False, vocab: int = 0) -> None:
        self.continuations = continuations or {}
        self.corrupt_every = corrupt_every
        self.max_draft = max_draft
        self.random_drafts = random_drafts
        self.vocab = vocab
        self.generated: dict[int, list[int]] = {}
        self.finished: set[int] = set()
        self.max_budget_seen = 0
        self.rng = torch.Generator().manual_seed(0)

    def add_sequence(self, seq_id: int, group_id: str, prompt_token_ids: Sequence[int],
                     prediction: Sequence[int] = (), output: list[int] | None = None) -> None:
        self.generated[seq_id] = [] if output is None else output

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> None:
        self.generated[seq_id].extend(token_ids)

    def propose(self, queries: Sequence[DraftQuery], budget: int, cost=None) -> list[Draft]:
        drafts = []
        for q in queries:
            n = min(self.max_draft, q.max_len, budget)
            if self.random_drafts:
                tokens = torch.randint(0, self.vocab, (n,), generator=self.rng).tolist()
            else:
                done = len(self.generated[q.seq_id])
                tokens = list(self.continuations.get(q.seq_id % 1000, [])[done:done + n])
                if self.corrupt_every and tokens:
                    for i in range(self.corrupt_every - 1, len(tokens), self.corrupt_every):
                        tokens[i] = (tokens[i] + 1) % 50
            budget -= len(tokens)
            drafts.append(Draft(tuple(tokens), "self"))
        return drafts

    def record(self, seq_id: int, draft: Draft, num_accepted: int) -> None:
        assert 0 <= num_accepted <= len(draft)

    def finish(self, seq_id: int, aborted: bool = False) -> None:
        self.finished.add(seq_id)


# Ops whose result the host must wait for on a GPU: a scalar read (item, bool), a shape that
# depends on the data (nonzero, unique, bincount, masked indexing).
_WAITING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
            "aten::unique_consecutive", "aten::bincount", "aten::masked_select", "aten::repeat_interleave"}


class _ReadBacks(TorchDispatchMode):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in _WAITING or (name in ("aten::index", "aten::index_put_", "aten::index_put") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def read_backs() -> Iterator[list[str]]:
    """The read-backs made inside the block, as a GPU host would wait for them: scalar reads
    (item, bool, int), ops of data-dependent shapes, tolist(). On a CPU nothing waits, so this is
    how a test sees that code meant to run while the device works (or inside a CUDA graph) does
    not make the host wait for it; a list index or a copy from pageable memory, which wait on a
    GPU too, it cannot see."""
    seen: list[str] = []
    real = torch.Tensor.tolist

    def tolist(self):
        seen.append("tolist")
        return real(self)

    torch.Tensor.tolist = tolist
    try:
        with _ReadBacks(seen):
            yield seen
    finally:
        torch.Tensor.tolist = real
