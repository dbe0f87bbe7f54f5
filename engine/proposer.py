"""The seam between the engine and a draft proposer.

The engine owns sequences and the KV cache; a proposer only sees token ids. It hands the proposer
each sequence's output list, which it only ever appends accepted tokens to (drafts that were
rolled back never reach it): the proposer reads what was appended when it needs to, so that a
step that drafts nothing costs no call per sequence. After every step the engine tells the
proposer how each draft fared, then asks it once for the next step's drafts (or, where it queues
that step before the tokens come back, asks beforehand: will_search, propose_ahead), handing it the
step cost it learns from its own steps (engine.step_cost.StepCost), so that the proposer decides in
one place whether and how much to draft. `fastcodellama` implements it.
"""
from __future__ import annotations

from collections import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol, Sequence

if TYPE_CHECKING:
    from engine.step_cost import StepCost


class DraftQuery(NamedTuple):
    """One decoding sequence that may carry a draft in the next step (a tuple: the engine makes
    one per decoding sequence in the steps whose queries the proposer reads)."""

    seq_id: int
    max_len: int  # the engine's own cap: tokens left before max_tokens / the context end


class DraftQueries(abc.Sequence):
    """A step's queries as the engine hands them over: the sequences' ids at once, each one's
    max_len computed when first read. At a large batch most sequences sit out a search (their
    back-off), and a proposer that decides not to search reads none: neither pays for them."""

    __slots__ = ("seq_ids", "_max_len", "_lens")

    def __init__(self, seq_ids: list[int], max_len: Callable[[int], int]) -> None:
        """`max_len(i)`: the i-th query's max_len."""
        self.seq_ids = seq_ids
        self._max_len = max_len
        self._lens: dict[int, int] = {}

    @classmethod
    def of(cls, queries: Sequence[DraftQuery]) -> "DraftQueries":
        """Any sequence of queries (a list of them, in tests) as DraftQueries."""
        if isinstance(queries, DraftQueries):
            return queries
        return cls([q.seq_id for q in queries], lambda i: queries[i].max_len)

    def max_len(self, i: int) -> int:
        n = self._lens.get(i)
        if n is None:
            n = self._lens[i] = self._max_len(i)
        return n

    def __len__(self) -> int:
        return len(self.seq_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return DraftQuery(self.seq_ids[i], self.max_len(i))


@dataclass(frozen=True)
class Draft:
    tokens: tuple[int, ...]
    source: str = "self"  # where it was copied from: for statistics and the policy

    def __len__(self) -> int:
        return len(self.tokens)


EMPTY_DRAFT = Draft(())


class Proposer(Protocol):
    def add_sequence(self, seq_id: int, group_id: str, prompt_token_ids: Sequence[int],
                     prediction: Sequence[int] = (), output: list[int] | None = None) -> None:
        """A new sequence; `group_id` is shared by the sibling samples of one request;
        `prediction` is what the client expects the output to be (may be empty); `output` the
        sequence's accepted tokens, a list its owner only appends to (the engine passes its own
        and never calls extend); None: the caller reports them with extend."""

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> None:
        """Tokens the sequence has accepted since the last call (never rolled back), for a
        sequence added without its output list."""

    def record(self, seq_id: int, draft: Draft, num_accepted: int) -> None:
        """Feedback: how many tokens of the draft the model accepted (a draft of propose_ahead's:
        as proposed, its first token accepted where the step before sampled it, and then what was
        verified after it; none where that step sampled another)."""

    def finish(self, seq_id: int, aborted: bool = False) -> None:
        """The sequence is done; a finished one may stay as text for others to copy from."""

    def propose(self, queries: Sequence[DraftQuery], budget: int, cost: "StepCost") -> list[Draft]:
        """One draft per query (empty ones included), each at most `query.max_len`, all together
        at most `budget`. Called once after every step whose tokens the engine waited on.
        `queries` holds every decoding sequence (max_len 0 where it may not draft): from the
        engine a DraftQueries, whose ids are known at once and whose max_len is computed when
        first read.

        A proposer may also offer `will_search(n, budget, cost) -> bool` and
        `propose_ahead(queries, budget, cost, in_flight) -> list[Draft]`. will_search: whether it
        will search for drafts at the next step of n decoding sequences, decided before the tokens
        of the step in flight are known, where the engine could queue the next step on the device
        ahead of them (overlapped steps, engine/llm_engine.py). Where it says no, that step is
        queued without drafts and no propose follows; where it says yes, propose_ahead follows,
        keeping that decision: drafts from the text without those tokens, each beginning with the
        token it expects the step in flight to give the sequence next (which is not fed: the
        engine feeds the sequence's own, then the rest), each query's max_len counting the tokens
        after it; the step is queued with them. `in_flight`, by sequence id: a draft the step in
        flight verifies, as proposed, and how many of its tokens that step covers (its fed tokens,
        and the first of a draft found ahead); the token such a sequence gets next follows the part
        of it accepted, and a draft for it begins with the token expected after all of them. A
        proposer without them is asked propose() after every step's tokens, and no step is queued
        ahead where it could draft."""
