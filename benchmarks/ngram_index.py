"""The copy-draft indexes on the C tables against the Python dicts, side by side, on real samples.

The pass@10 traces (CodeLlama-7B-Instruct, shared/data/real_traces, tokenized with the served
model's tokenizer) are written into a GroupIndex per problem, the 10 samples one token each per
step, as the engine feeds them; every `--sync-every` steps each sample looks up its longest self
and sibling match (which indexes what came since). Finished samples go to the other-requests pool,
which is looked up too. Both table kinds run alternately, `--repeats` times; the fastest of each
is reported, with the lookups' answers checked equal.

    python benchmarks/ngram_index.py --problems 40 --sync-every 1,8
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import trace_replay  # noqa: E402

from engine import DEFAULT_MODEL, LLM  # noqa: E402
from fastcodellama.drafting.ngram_index import GroupIndex, OtherPool  # noqa: E402
from fastcodellama.drafting.ngram_tables import table_factory  # noqa: E402


def run(problems: list[tuple[list[int], trace_replay.Request]], tables, sync_every: int) -> tuple[float, int, list]:
    """Seconds (the loop that feeds the tokens included), tokens indexed, and every lookup's answer."""
    pool = OtherPool(1, 4, 100_000, tables)
    answers = []
    tokens = 0
    start = time.perf_counter()
    for prompt, r in problems:
        group = GroupIndex(prompt, 1, 4, True, tables)
        for member in range(len(r.continuations)):
            group.add_member(member, prompt)
        longest = max(len(c) for c in r.continuations)
        for step in range(longest):
            for member, cont in enumerate(r.continuations):
                if step < len(cont):
                    group.extend(member, cont[step:step + 1])
                    tokens += 1
            if step % sync_every == 0:
                for member in range(len(r.continuations)):
                    text = group.texts[member]
                    answers.append((group.longest_self(member), _where(group.longest_sibling(member)),
                                    _where(pool.longest(text, len(text)))))
        for member, cont in enumerate(r.continuations):
            pool.add(cont, r.task_id)
    return time.perf_counter() - start, tokens, answers


def _where(hit):
    return None if hit is None else (hit[0], hit[-2] if len(hit) == 4 else hit[2], len(hit[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--sync-every", default="1,8", help="steps between lookups (comma list)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tokenizer = LLM(DEFAULT_MODEL).tokenizer
    requests = trace_replay.load_workload("passk", tokenizer, trace_replay.TRACES, 0)[:args.problems]
    problems = [(tokenizer.encode(r.prompt, add_bos=False), r) for r in requests]
    kinds = {"dict": table_factory("dict"), "c": table_factory("c")}
    print(f"{len(requests)} problems x 10 samples (CodeLlama-7B-Instruct pass@10 traces)")
    for every in (int(x) for x in args.sync_every.split(",")):
        best = {k: float("inf") for k in kinds}
        answers = {}
        for _ in range(args.repeats):
            for kind, tables in kinds.items():
                seconds, tokens, answers[kind] = run(problems, tables, every)
                best[kind] = min(best[kind], seconds)
        if answers["dict"] != answers["c"]:
            raise SystemExit("the C tables answered differently from the dicts")
        print(f"lookups every {every} step(s): {tokens} tokens, {len(answers['c'])} lookups of 3 sources; "
              f"dict {best['dict']:.3f} s ({1e6 * best['dict'] / tokens:.2f} us/token), "
              f"C {best['c']:.3f} s ({1e6 * best['c'] / tokens:.2f} us/token): "
              f"{best['dict'] / best['c']:.1f}x; answers equal")


if __name__ == "__main__":
    main()
