"""The job's closing table: what ran, where its files are, where the time went, what drafting did."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fastcodellama.job.types import JobStats


@dataclass(frozen=True)
class RunSummary:
    """What the table says besides the job's counters."""

    model: str
    kind: str  # "fastcodellama" or "base"
    samples_path: str
    results_path: str | None = None  # None: not evaluated
    times: Mapping[str, float] = field(default_factory=dict)  # seconds by part of the command, in order


def report(stats: JobStats, evaluation: dict | None, summary: RunSummary,
           extra: Sequence[tuple[str, object]] = ()) -> str:
    spec = stats.spec
    steps = max(1, spec.decode_steps)
    rows = [("model", f"{os.path.basename(os.path.normpath(summary.model))} ({summary.model})"),
            ("type", summary.kind), ("samples", _samples(stats)),
            ("samples file", os.path.abspath(summary.samples_path))]
    if summary.results_path:
        rows.append(("results file", os.path.abspath(summary.results_path)))
    rows += [("wall time (s)", _times(summary.times)), ("generated tokens", stats.tokens),
             ("generation time (s)", f"{stats.wall:.1f}"),
             ("tokens/s (generation)", f"{stats.tokens / max(stats.wall, 1e-9):.1f}"),
             ("tokens per forward per sequence", f"{stats.tokens / steps:.3f}"),
             ("drafted / accepted tokens", _drafts(spec.drafted, spec.accepted)),
             ("mean accepted length (per verify)", f"{spec.total_accepted / max(1, spec.verify_steps):.3f}"),
             *extra]
    if evaluation:
        rows += [(k, f"{v:.4f}") for k, v in evaluation["pass_at_k"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def _samples(stats: JobStats) -> str:
    if not stats.resumed:
        return str(stats.samples)
    return f"{stats.samples + stats.resumed} ({stats.resumed} from before, {stats.samples} new)"


def _times(times: Mapping[str, float]) -> str:
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in times.items())
    return f"{sum(times.values()):.1f}" + (f" ({parts})" if parts else "")


def _drafts(drafted: Mapping[str, int], accepted: Mapping[str, int]) -> str:
    total = f"{sum(drafted.values())} / {sum(accepted.values())}"
    by_source = ", ".join(f"{source} {n} / {accepted.get(source, 0)}" for source, n in sorted(drafted.items()))
    return total + (f" ({by_source})" if by_source else "")
