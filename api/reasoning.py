"""A thinking model's reasoning apart from its answer. Qwen3, QwQ and DeepSeek-R1 (and their code
distills) write their reasoning between <think> and </think>, Seed-OSS between <seed:think> and
</seed:think>, then the answer; the APIs return the two apart (OpenAI's `reasoning_content` as vLLM
names it, Ollama's `thinking`, Anthropic's thinking blocks), as the clients that show reasoning
read them.

Whether a model thinks, and in which tags, is its chat template's: one that writes both tags of a
pair (to open or close the block, or to leave earlier turns' reasoning out of the prompt). Where
the answer starts is the prompt's: a generation prompt that ends inside an open block
(DeepSeek-R1's, QwQ's) makes the model's text reasoning from its first token; otherwise (Qwen3's,
which the model opens itself, or closes empty in the prompt when thinking is off) the text is
reasoning only where it opens a block.
The parts are cut as those templates cut an earlier turn: the reasoning without the newlines
around it, the answer without the newlines before it. A text cut off before </think> is all
reasoning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Tags(NamedTuple):
    """The tags a reasoning block opens and closes with."""

    open: str
    close: str


THINK = Tags("<think>", "</think>")
SEED_THINK = Tags("<seed:think>", "</seed:think>")
KNOWN = (THINK, SEED_THINK)


def tags_of(template_source: str) -> Tags | None:
    """The tags a chat template's model writes its reasoning in (None: it does not think)."""
    return next((tags for tags in KNOWN if tags.open in template_source and tags.close in template_source), None)


def thinks(template_source: str) -> bool:
    """Whether a chat template's model writes its reasoning in think blocks."""
    return tags_of(template_source) is not None


@dataclass(frozen=True)
class Thinking:
    """How one prompt's answers hold reasoning: `inside` where the prompt leaves them in an open
    block; `tags`: the block's."""

    inside: bool
    tags: Tags = THINK

    @classmethod
    def of(cls, prompt: str, tags: Tags = THINK) -> "Thinking":
        return cls(inside=prompt.rfind(tags.open) > prompt.rfind(tags.close), tags=tags)

    def split(self, text: str) -> tuple[str | None, str]:
        """(the reasoning, None where there is none; the answer) of a finished text."""
        return self.parts(text, final=True)

    def parts(self, text: str, final: bool) -> tuple[str | None, str]:
        """(reasoning, answer) as far as they can be shown: before the text ends (not `final`),
        what may still turn out a tag, or newlines the cut would trim, is held back, and nothing is
        shown while the text may still open a block."""
        body, (opening, closing) = text, self.tags
        if not self.inside:
            start = text.lstrip()
            if not start.startswith(opening):
                if not final and opening.startswith(start):
                    return None, ""
                return None, text
            body = start[len(opening):]
        end = body.find(closing)
        if end >= 0:
            return body[:end].strip("\n"), body[end + len(closing):].lstrip("\n")
        if final:
            return body.strip("\n"), ""
        return _held(body, closing).lstrip("\n"), ""


def _held(body: str, closing: str) -> str:
    """An open block's text less what may still be trimmed: a start of the closing tag, and the
    newlines before it."""
    for n in range(min(len(closing) - 1, len(body)), 0, -1):
        if closing.startswith(body[-n:]):
            body = body[:-n]
            break
    return body.rstrip("\n")


@dataclass
class ReasoningDeltas:
    """A streamed answer's new reasoning and new answer text at each piece of text."""

    thinking: Thinking
    _text: str = ""
    _reasoning_sent: int = 0
    _answer_sent: int = 0

    def add(self, text: str, finished: bool) -> tuple[str, str]:
        """(new reasoning, new answer text) once `text` is added; `finished`: the text has ended."""
        self._text += text
        reasoning, answer = self.thinking.parts(self._text, final=finished)
        reasoning = reasoning or ""
        new = reasoning[self._reasoning_sent:], answer[self._answer_sent:]
        self._reasoning_sent, self._answer_sent = max(self._reasoning_sent, len(reasoning)), \
            max(self._answer_sent, len(answer))
        return new
