"""Which indentation ends a completion (SamplingParams.stop_at_dedent), from what a client sends:
`n_indent` (llama.cpp's name, any endpoint) or Copilot's `extra.trim_by_indentation`."""
from __future__ import annotations

from api.schemas import CompletionRequest


def cursor_block_indent(prompt: str, next_indent: int | None = None) -> int:
    """The indentation of the block the cursor is in: that of the cursor's line (the prompt's last
    line, a tab counting one column); on an empty line, the next line's (`next_indent`, which
    Copilot sends), else 0."""
    line = prompt[prompt.rfind("\n") + 1:]
    if not line:
        return next_indent or 0
    return len(line) - len(line.lstrip(" \t"))


def dedent_limits(req: CompletionRequest, prompts: list[str | list[int]]) -> tuple[int | None, ...]:
    """Per prompt, the indentation below which a new line ends the completion (None: no such stop)."""
    if req.n_indent is not None:
        return (req.n_indent or None,) * len(prompts)
    extra = req.extra
    if extra is None or not extra.trim_by_indentation:
        return (None,) * len(prompts)
    return tuple(cursor_block_indent(p, extra.next_indent) or None if isinstance(p, str) else None for p in prompts)
