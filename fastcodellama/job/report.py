"""The job's closing table."""
from __future__ import annotations

from collections.abc import Sequence

from fastcodellama.job.types import JobStats


def report(stats: JobStats, evaluation: dict | None, kind: str, extra: Sequence[tuple[str, object]] = ()) -> str:
    spec = stats.spec
    steps = max(1, spec.decode_steps)
    rows = [("type", kind), ("samples", stats.samples), ("generated tokens", stats.tokens),
            ("wall time (s)", f"{stats.wall:.1f}"), ("tokens/s", f"{stats.tokens / max(stats.wall, 1e-9):.1f}"),
            ("tokens per forward per sequence", f"{stats.tokens / steps:.3f}"),
            ("drafted / accepted tokens", f"{spec.total_drafted} / {spec.total_accepted}"),
            ("mean accepted length (per verify)", f"{spec.total_accepted / max(1, spec.verify_steps):.3f}"),
            *extra]
    if evaluation:
        rows += [(k, f"{v:.4f}") for k, v in evaluation["pass_at_k"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)
