"""AlphaCode-style selection of a few samples of one task from their behaviour.

Given each sample's outputs on the task's inputs (the prompt's examples first, then mutated inputs):
1. filter: keep the samples that give the expected output on the most examples (on all of them
   whenever any sample does; the most rather than all so that one wrong example in a prompt
   does not discard every sample); with no examples, or none passed by any sample, keep all;
2. cluster the kept samples by their outputs on every input (values compared after rounding
   floats; an exception type or a timeout is an output of its own);
3. rank clusters: those with some value other than None before degenerate ones (only errors,
   timeouts or None), then larger first, then by the best log-probability a member has (when
   the samples carry one), then by the earliest member;
4. submit the best member (highest log-probability, else earliest) of each cluster in rank order;
   when there are fewer clusters than submissions, go round the clusters again for more members.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastcodellama.evaluation.examples import Example, outputs_match

MODES = ("full", "filter", "cluster", "none")  # what selection does: both steps, one, or neither


@dataclass(frozen=True)
class TaskSelection:
    task_id: str
    num_samples: int
    num_examples: int
    passed_examples: tuple[int, ...]  # per sample: how many examples it passed
    kept: tuple[int, ...]  # samples that survived the filter
    clusters: tuple[tuple[int, ...], ...]  # ranked; members in submission order
    submitted: tuple[int, ...]  # sample indices, best first

    @property
    def passed_all(self) -> int:
        return sum(1 for p in self.passed_examples if p == self.num_examples) if self.num_examples else 0


def select_task(task_id: str, examples: Sequence[Example], outputs: Sequence[Sequence[str]], submit: int,
                logprobs: Sequence[float | None] | None = None, mode: str = "full") -> TaskSelection:
    """Ranks the samples of one task; `outputs[i][j]` is sample i's output on input j, the first
    len(examples) inputs being the examples' own."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    passed = tuple(examples_passed(examples, o) for o in outputs)
    kept = filter_samples(passed) if mode in ("full", "filter") else tuple(range(len(outputs)))
    if mode in ("full", "cluster"):
        clusters = cluster_samples(kept, outputs)
    else:
        clusters = [[i] for i in kept]
    ranked = rank_clusters(clusters, outputs, logprobs)
    return TaskSelection(task_id, len(outputs), len(examples), passed, kept, ranked,
                         submission(ranked, submit))


def examples_passed(examples: Sequence[Example], outputs: Sequence[str]) -> int:
    return sum(1 for example, output in zip(examples, outputs) if output_matches(example.expected, output))


def output_matches(expected: object, output: str) -> bool:
    if not output.startswith("="):
        return False
    ok, value = _literal(output[1:])
    return ok and outputs_match(expected, value)


def filter_samples(passed: Sequence[int]) -> tuple[int, ...]:
    best = max(passed, default=0)
    if best == 0:
        return tuple(range(len(passed)))
    return tuple(i for i, p in enumerate(passed) if p == best)


def cluster_samples(members: Sequence[int], outputs: Sequence[Sequence[str]]) -> list[list[int]]:
    """Groups `members` by identical (normalised) outputs on all inputs, in order of first member."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in members:
        groups.setdefault(tuple(normalise(o) for o in outputs[i]), []).append(i)
    return list(groups.values())


def rank_clusters(clusters: Sequence[Sequence[int]], outputs: Sequence[Sequence[str]],
                  logprobs: Sequence[float | None] | None) -> tuple[tuple[int, ...], ...]:
    def best_first(members: Sequence[int]) -> list[int]:
        return sorted(members, key=lambda i: (-_logprob(logprobs, i), i))

    def rank(members: list[int]) -> tuple:
        return (is_degenerate(outputs[members[0]]), -len(members), -_logprob(logprobs, members[0]), members[0])

    return tuple(tuple(m) for m in sorted((best_first(c) for c in clusters if c), key=rank))


def submission(ranked: Sequence[Sequence[int]], submit: int) -> tuple[int, ...]:
    """One member per cluster in rank order, then second members, and so on, up to `submit`."""
    chosen: list[int] = []
    depth = 0
    while len(chosen) < submit and any(len(c) > depth for c in ranked):
        chosen += [c[depth] for c in ranked if len(c) > depth][:submit - len(chosen)]
        depth += 1
    return tuple(chosen)


def is_degenerate(outputs: Sequence[str]) -> bool:
    """No input gave a value other than None (a body that does nothing, or crashes everywhere)."""
    return all(o == "=None" or not o.startswith("=") for o in outputs)


def normalise(output: str) -> str:
    """The output as clustering compares it: floats to 9 significant digits, integral floats as
    ints, memory addresses dropped."""
    if not output.startswith("="):
        return output
    ok, value = _literal(output[1:])
    if not ok:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", output)
    return "=" + repr(_round_floats(value))


def _round_floats(value: object) -> object:
    if isinstance(value, float):
        rounded = float(f"{value:.9g}")
        return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded
    if isinstance(value, (list, tuple)):
        return type(value)(_round_floats(v) for v in value)
    if isinstance(value, dict):
        return dict(_sorted([(k, _round_floats(v)) for k, v in value.items()]))
    if isinstance(value, (set, frozenset)):
        return ("<set>", *_sorted([_round_floats(v) for v in value]))
    return value


def _sorted(items: list) -> list:
    """Sorted when comparable (dicts and sets print in an order that equal values need not share)."""
    try:
        return sorted(items)
    except TypeError:
        return items


def _literal(text: str) -> tuple[bool, object]:
    try:
        return True, ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _logprob(logprobs: Sequence[float | None] | None, i: int) -> float:
    if not logprobs or logprobs[i] is None:
        return float("-inf")
    return float(logprobs[i])
