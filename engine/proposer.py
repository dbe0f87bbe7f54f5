"""The seam between the engine and a draft proposer.

The engine owns sequences and the KV cache; a proposer only sees token ids. Each
step the engine tells the proposer which tokens each sequence gained (accepted
tokens only: drafts that were rolled back never reach it), asks whether it will
draft at all this step, and if so asks for drafts for the running sequences
within a token budget. `fastcodellama` implements it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence


class DraftQuery(NamedTuple):
    """One running sequence that may carry a draft in the next step (a tuple: the engine makes
    one per running sequence per step)."""

    seq_id: int
    max_len: int  # the engine's own cap: tokens left before max_tokens / the context end


@dataclass(frozen=True)
class Draft:
    tokens: tuple[int, ...]
    source: str = "self"  # "self", "sibling" or "other": for statistics and the policy

    def __len__(self) -> int:
        return len(self.tokens)


EMPTY_DRAFT = Draft(())


class Proposer(Protocol):
    def add_sequence(self, seq_id: int, group_id: str, prompt_token_ids: Sequence[int]) -> None:
        """A new sequence; `group_id` is shared by the sibling samples of one request."""

    def extend(self, seq_id: int, token_ids: Sequence[int]) -> None:
        """Tokens the sequence has accepted since the last call (never rolled back)."""

    def active(self, num_running: int, budget: int) -> bool:
        """Asked after every engine step, before the step's queries are built: False when the
        next step takes no drafts whatever they hold; `propose` is then not called. Optional:
        an engine treats a proposer without it as always active."""

    def propose(self, queries: Sequence[DraftQuery], budget: int) -> list[Draft]:
        """One draft per query, each at most `query.max_len`, all together at most `budget`.
        Called after every engine step for which `active` said yes, with no queries when no
        sequence can take a draft."""

    def record(self, seq_id: int, draft: Draft, num_accepted: int) -> None:
        """Feedback: how many tokens of the draft the model accepted."""

    def finish(self, seq_id: int, aborted: bool = False) -> None:
        """The sequence is done; a finished one may stay as text for others to copy from."""
