"""Decode and verify steps over static buffers (what CUDA graphs replay), on the CPU: bucketing,
padding, buffers reused across steps, results equal to the eager step, fallbacks."""
from __future__ import annotations

import random

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.cuda_graphs import GraphMismatch, StepGraphs, replays_match
from engine.model_runner import ModelRunner
from engine.models.registry import read_model_config
from engine.static_step import Bucket, StaticStep, bucket_for, buckets
from engine.step_batch import SeqChunk, StepBatch
from tests.engine.helpers import assert_no_leaks

BS = 4


def test_buckets_and_the_smallest_that_holds_a_step():
    all_buckets = buckets(64, 512)
    assert Bucket(1, 1) in all_buckets and Bucket(64, 512) in all_buckets and Bucket(64, 768) not in all_buckets
    assert bucket_for(all_buckets, 3, 3) == Bucket(4, 4)
    assert bucket_for(all_buckets, 3, 10) == Bucket(4, 12)
    assert bucket_for(all_buckets, 64, 64) == Bucket(64, 64)
    assert bucket_for(all_buckets, 65, 65) is None and bucket_for(all_buckets, 1, 1000) is None


def test_graphs_are_captured_on_first_use_unless_a_config_says_at_start_up():
    assert EngineConfig().cuda_graph_capture == "first-use"
    assert EngineConfig(cuda_graph_capture="start-up").cuda_graph_capture == "start-up"
    with pytest.raises(ValueError, match="cuda_graph_capture must be start-up or first-use"):
        EngineConfig(cuda_graph_capture="later")


def _runner(model_dir: str) -> ModelRunner:
    config = EngineConfig(model=model_dir, num_kv_blocks=64, block_size=BS, attention_backend="torch")
    return ModelRunner(config, read_model_config(model_dir))


def _static(runner: ModelRunner, max_seqs: int = 8, max_rows: int = 64, meta_in_graph: bool = True) -> StepGraphs:
    static = StaticStep(max_seqs, max_rows, 16, BS, runner.num_blocks, runner.model_config.vocab_size, runner.device)
    return StepGraphs(runner.model, runner.kv_caches, runner.backend, static, capture=False,
                      meta_in_graph=meta_in_graph)


def _decode_verify_chunks(rng: random.Random) -> list[SeqChunk]:
    """Two siblings sharing prompt blocks (a decode and a 1 + 3 verify), a lone decode at a block
    boundary, a 1 + 5 verify."""
    prompt = (3, 4)
    specs = [(9, 1, prompt + (10,)), (10, 4, prompt + (11, 12)), (16, 1, (20, 21, 22, 23)),
             (5, 6, (30, 31, 32))]
    return [SeqChunk(tuple(rng.randrange(1, 300) for _ in range(n)), ctx - n, table, 0) for ctx, n, table in specs]


@pytest.mark.parametrize("meta_in_graph", [True, False])
def test_the_static_step_equals_the_eager_step_and_reuses_its_buffers(tiny_model_dir, meta_in_graph):
    runner = _runner(tiny_model_dir)
    graphs = _static(runner, meta_in_graph=meta_in_graph)
    rng = random.Random(0)
    torch.manual_seed(0)
    start = torch.randn_like(runner.kv_caches)
    start[:, :, runner.num_blocks] = float("nan")  # whatever the scratch block holds is never read
    pointers = None
    for step in range(3):
        chunks = _decode_verify_chunks(rng)
        runner.kv_caches.copy_(start)
        batch = StepBatch.build(chunks, BS, runner.device)
        eager = runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend))
        eager_cache = runner.kv_caches[:, :, :runner.num_blocks].clone()
        runner.kv_caches.copy_(start)
        static = graphs.run(chunks)
        assert static is not None and static.shape == eager.shape
        torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(runner.kv_caches[:, :, :runner.num_blocks], eager_cache)
        now = [t.data_ptr() for t in (graphs.static.input_ids, graphs.static.block_tables, graphs.static.slot_mapping)]
        assert pointers in (None, now)  # the same buffers every step
        pointers = now
    assert graphs.replays == 3


def test_padding_rows_and_sequences_touch_only_the_scratch_block(tiny_model_dir):
    runner = _runner(tiny_model_dir)
    graphs = _static(runner)
    scratch = runner.num_blocks
    chunks = [SeqChunk((5,), 6, (1, 2), 0), SeqChunk((6, 7), 3, (3, 4), 0)]
    bucket = graphs.static.bucket(chunks)
    assert bucket == Bucket(2, 4)  # one padding row
    batch = graphs.static.fill(chunks, bucket)
    assert batch.slot_mapping.tolist() == [2 * BS + 2, 3 * BS + 3, 4 * BS, scratch * BS]
    assert batch.cu_seqlens_q.tolist() == [0, 1, 3] and batch.context_lens_t.tolist() == [7, 5]
    three = chunks + [SeqChunk((9,), 1, (5,), 0)]
    bucket = graphs.static.bucket(three)
    assert bucket == Bucket(4, 4)  # one padding sequence
    batch = graphs.static.fill(three, bucket)
    assert batch.cu_seqlens_q.tolist() == [0, 1, 3, 4, 4] and batch.context_lens_t.tolist() == [7, 5, 2, 0]
    assert batch.block_tables[3].tolist() == [0] * batch.block_tables.shape[1]
    for step in (chunks, three):
        before = runner.kv_caches.clone()
        graphs.run(step)
        changed = (runner.kv_caches != before).any(dim=(0, 1, 3, 4, 5)).nonzero().flatten().tolist()
        assert set(changed) <= {2, 3, 4, 5, scratch}


def test_prefill_chunks_and_oversized_steps_run_eagerly(tiny_model_dir):
    runner = _runner(tiny_model_dir)
    graphs = _static(runner, max_seqs=2, max_rows=8)
    assert graphs.run([SeqChunk((1, 2, 3), 0, (1,), 2)]) is None  # a prefill chunk: only its last row samples
    assert graphs.run([SeqChunk((1,), 4, (1, 2), 0)] * 3) is None  # more sequences than the largest bucket
    assert graphs.run([SeqChunk((1,) * 9, 4, (1, 2, 3, 4), 0)]) is None  # more rows
    assert graphs.replays == 0


@pytest.mark.parametrize("draft,meta_in_graph,overlap", [(False, True, "off"), (True, True, "off"),
                                                          (True, False, "off"), (True, True, "on"),
                                                          (True, False, "on")])
def test_the_engine_on_static_steps_gives_the_eager_engines_tokens(tiny_model_dir, draft, meta_in_graph, overlap,
                                                                   monkeypatch):
    """Overlap on: steps queued ahead feed their ids into the static buffers, drafts found ahead
    after them (the fixed policy searches before every step it can queue), and after a drafting
    step the rows it moves by what the draft got are moved there, before the metadata is built
    from them (inside the graph or out)."""
    from engine.overlap_choice import OverlapChoice
    from fastcodellama.drafting import SpecConfig, build_proposer

    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: True)
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_tokens=20, seed=4, ignore_eos=True)
    prompts = ["def add(a, b):\n    return", "import os\n\n"]
    outs = []
    for static in (False, True):
        proposer = build_proposer(SpecConfig(policy="fixed")) if draft else None
        llm = LLM(tiny_model_dir, proposer=proposer, num_kv_blocks=128, block_size=BS, attention_backend="torch",
                  overlap_steps=overlap if static else "off")
        if static:
            llm.engine.runner.graphs = _static(llm.engine.runner, max_seqs=8, max_rows=96, meta_in_graph=meta_in_graph)
        outs.append([[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params)])
        if static:
            assert llm.engine.runner.graphs.replays > 10
            assert (llm.engine.stats().overlapped_steps > 0) == (overlap == "on")
        assert_no_leaks(llm.engine)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("meta_in_graph", [True, False])
def test_rows_moved_by_accepted_drafts_are_moved_in_the_static_buffers(tiny_model_dir, meta_in_graph, monkeypatch):
    """Static steps queued behind drafting steps whose drafts are accepted (a proposer that knows
    the greedy outputs): the rows move in the static buffers, before the metadata is built from
    them; the tokens are the eager engine's."""
    from engine.overlap_choice import OverlapChoice
    from tests.engine.test_llm_engine import _Foresight

    monkeypatch.setattr(OverlapChoice, "ahead", lambda self, seqs: True)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = ["def add(a, b):\n    return", "import os\n\n"]
    eager = LLM(tiny_model_dir, num_kv_blocks=128, block_size=BS, attention_backend="torch").generate(prompts, params)
    proposer = _Foresight({tuple(o.prompt_token_ids): o.outputs[0].token_ids for o in eager})
    llm = LLM(tiny_model_dir, proposer=proposer, num_kv_blocks=128, block_size=BS, attention_backend="torch",
              overlap_steps="on")
    llm.engine.runner.graphs = _static(llm.engine.runner, max_seqs=8, max_rows=96, meta_in_graph=meta_in_graph)
    outs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in eager]
    stats = llm.engine.stats()
    assert stats.spec.total_accepted > 0 and stats.overlapped_steps == stats.steps - 1
    assert llm.engine.runner.graphs.replays > 5
    assert_no_leaks(llm.engine)


def test_a_failed_capture_with_the_metadata_inside_captures_again_with_it_outside(tiny_model_dir, monkeypatch):
    """Whatever makes the inside capture fail (an op that cannot be captured, a replay that
    differs from the eager step), the graphs are captured again with the metadata outside; a
    failure then is the engine's to report."""
    runner = _runner(tiny_model_dir)
    graphs = _static(runner)
    graphs.capture = True
    attempts = []

    def capture_all():
        attempts.append(graphs.meta_in_graph)
        if graphs.meta_in_graph:
            raise GraphMismatch("a replay differs")
        return "outside"

    monkeypatch.setattr(graphs, "_capture_all", capture_all)
    assert graphs.capture_all() == "outside" and attempts == [True, False] and not graphs.meta_in_graph
    monkeypatch.setattr(graphs, "_capture_all", lambda: (_ for _ in ()).throw(RuntimeError("no memory")))
    with pytest.raises(RuntimeError, match="no memory"):
        graphs.capture_all()


def test_a_replay_matches_the_eager_step_up_to_rounding_only():
    """The start-up check of captured graphs (engine/cuda_graphs.py): rounding of another kernel
    passes; another step's logits (what metadata frozen at capture gives) or non-finite ones do not."""
    torch.manual_seed(0)
    eager = torch.randn(2, 300) * 40
    assert replays_match(eager.clone(), eager)
    assert replays_match(eager * (1 + 1e-3 * torch.randn_like(eager)), eager)
    assert not replays_match(torch.randn(2, 300) * 40, eager)
    stale = eager.clone()
    stale[1] = eager[1].roll(1)
    assert not replays_match(stale, eager)
    broken = eager.clone()
    broken[0, 3] = float("nan")
    assert not replays_match(broken, eager)
    assert not replays_match(eager[:1], eager)
