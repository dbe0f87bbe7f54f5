"""The real traces (shared/data/real_traces) as replay requests: each request's recorded
continuations, tokenized with the served model's tokenizer, become
SamplingParams.replay_token_ids, so the engine takes the recorded token wherever it would pick one.

Workloads:
  greedy  CodeLlama-7B greedy, 164 problems (file 1)
  passk   CodeLlama-7B-Instruct, 10 samples per problem as n=10 requests (file 2)
  pass100 CodeGen-16B-mono, 100 samples per problem as n=100 requests (file 3)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from engine import SamplingParams
from fastcodellama.job.tasks import load_tasks

# Beside the checkout; FASTCODELLAMA_TRACES names another copy (a GPU machine gets only the checkout).
TRACES = os.environ.get("FASTCODELLAMA_TRACES") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "real_traces")
WORKLOADS = ("greedy", "passk", "pass100")


@dataclass(frozen=True)
class Request:
    task_id: str
    prompt: str
    continuations: tuple[tuple[int, ...], ...]


def load_workload(name: str, tokenizer, traces: str = TRACES, pass100_tasks: int = 164) -> list[Request]:
    tasks = load_tasks(None, None)
    encode = lambda text: tuple(tokenizer.encode(text, add_bos=False))  # noqa: E731
    if name == "greedy":
        with open(os.path.join(traces, "codellama7b_humaneval_greedy.json")) as f:
            texts = json.load(f)
        out = []
        for task, (text,) in zip(tasks, texts):
            prompt = task["prompt"].strip()  # what the harness fed the model
            if not text.startswith(prompt):
                raise ValueError(f"{task['task_id']}: trace does not start with its prompt")
            out.append(Request(task["task_id"], prompt, (encode(text[len(prompt):]),)))
        return out
    if name == "passk":
        by_task: dict[str, list[str]] = {}
        with open(os.path.join(traces, "codellama7b-instruct_humaneval_n10_sampled.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                by_task.setdefault(rec["task_id"], []).append(rec["completion"])
        return [Request(t["task_id"], t["prompt"], tuple(encode(c) for c in by_task[t["task_id"]])) for t in tasks]
    if name == "pass100":
        ids = sorted(f"HumanEval/{i}" for i in range(164))  # the file's line order
        out = []
        with open(os.path.join(traces, "codegen16b-mono_humaneval_n100_t0.8.jsonl")) as f:
            for task_id, line in zip(ids, f):
                rec = json.loads(line)
                out.append(Request(task_id, rec["prompt"], tuple(encode(s) for s in rec["samples"])))
        order = {t["task_id"]: i for i, t in enumerate(tasks)}
        return sorted(out, key=lambda r: order[r.task_id])[:pass100_tasks]
    raise ValueError(f"unknown workload {name!r}")


def replay_params(name: str, request: Request) -> SamplingParams:
    """The request's sampling settings with its recorded continuations to replay."""
    longest = max(len(c) for c in request.continuations)
    sampling = {"temperature": 0.0} if name == "greedy" else {"temperature": 0.8, "top_p": 0.95}
    return SamplingParams(n=len(request.continuations), max_tokens=longest + 1, seed=0,
                          replay_token_ids=request.continuations, **sampling)
