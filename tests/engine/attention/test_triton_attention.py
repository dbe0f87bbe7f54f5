"""The Triton attention backend against the PyTorch reference. Without a GPU the kernels run
under the Triton interpreter on the CPU (slow: small shapes); the `gpu` tests repeat the
checks at model-like shapes on CUDA."""
from __future__ import annotations

import dataclasses
import os
import random
import re
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import below
pytest.importorskip("triton", reason="triton is not installed")

from engine.attention import triton_meta
from engine.attention.torch_ref import TorchRefBackend
from engine.attention.triton_attention import LaunchConfig, TritonBackend, write_kv
from engine.kernels.cpu import SharedGroups
from engine.step_batch import SeqChunk, StepBatch
from tests.engine.helpers import read_backs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# A family: (prompt blocks, members); a member: (context, new tokens, prompt blocks it shares).
Family = tuple[int, list[tuple[int, int, int]]]

# block_size 8. Siblings decode one past and exactly at a block boundary, verify drafts, start
# right after the prompt; one sibling shares fewer prompt blocks than the others; beside them a
# prefill chunk in mid-prompt, a whole prompt, a long decode and a padding sequence.
MIXED: list[Family] = [
    (3, [(25, 1, 3), (32, 1, 3), (37, 5, 3), (30, 6, 3)]),
    (5, [(41, 1, 5), (48, 1, 5), (60, 3, 4)]),
    (0, [(45, 17, 0)]),
    (0, [(20, 20, 0)]),
    (0, [(96, 1, 0)]),
    (0, [(0, 0, 0)]),
]


def _step(families: list[Family], block_size: int, seed: int, pad_rows: int = 0) -> tuple[StepBatch, StepBatch]:
    """(batch, the same batch with `pad_rows` extra rows of slot -1), sequences shuffled so
    that siblings are not neighbours; every block id is used by one family only."""
    rng = random.Random(seed)
    free = list(range(1, 4096))
    rng.shuffle(free)
    chunks = []
    for prompt_blocks, members in families:
        prompt = [free.pop() for _ in range(prompt_blocks)]
        for ctx, q_len, shares in members:
            own = -(-ctx // block_size) - shares
            table = tuple(prompt[:shares]) + tuple(free.pop() for _ in range(own))
            chunks.append(SeqChunk(tuple(range(q_len)), ctx - q_len, table, 0))
    rng.shuffle(chunks)
    batch = StepBatch.build(chunks, block_size, DEVICE)
    if not pad_rows:
        return batch, batch
    pad = torch.zeros(pad_rows, dtype=torch.long, device=DEVICE)
    padded = dataclasses.replace(batch, input_ids=torch.cat([batch.input_ids, pad]),
                                 positions=torch.cat([batch.positions, pad]),
                                 slot_mapping=torch.cat([batch.slot_mapping, pad - 1]))
    return batch, padded


def _inputs(batch: StepBatch, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int,
            num_blocks: int = 4096):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    t = batch.num_tokens
    shapes = [(t, heads, head_dim), (t, kv_heads, head_dim), (t, kv_heads, head_dim),
              (num_blocks, kv_heads, batch.block_size, head_dim), (num_blocks, kv_heads, batch.block_size, head_dim)]
    return [torch.randn(shape, generator=g, device=DEVICE).to(dtype) for shape in shapes]


def _reference(batch: StepBatch, q, k, v, k_cache, v_cache, window: int | None = None):
    """Output and caches of the torch reference, in float32."""
    ref = TorchRefBackend(window)
    kc, vc = k_cache.float().clone(), v_cache.float().clone()
    out = ref.forward(q.float(), k.float(), v.float(), kc, vc, batch, ref.prepare(batch))
    return out, kc, vc


def _check(families: list[Family], block_size: int, heads: int, kv_heads: int, head_dim: int,
           dtype: torch.dtype, backend: TritonBackend, seed: int = 0, pad_rows: int = 3, window: int | None = None,
           launch: LaunchConfig | None = None) -> triton_meta.TritonMeta:
    batch, padded = _step(families, block_size, seed, pad_rows)
    q, k, v, k_cache, v_cache = _inputs(padded, heads, kv_heads, head_dim, dtype, seed)
    rows = batch.num_tokens
    want, want_k, want_v = _reference(batch, q[:rows], k[:rows], v[:rows], k_cache, v_cache, window)
    with read_backs() as seen:  # nothing a CUDA graph could not replay, nor a step queued ahead wait for
        meta = backend.prepare(padded, launch)
        out = backend.forward(q, k, v, k_cache, v_cache, padded, meta)
    assert seen == []
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.equal(k_cache.float(), want_k) and torch.equal(v_cache.float(), want_v)  # pad rows: not written
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out[:rows].float(), want, atol=tol, rtol=tol)
    return meta


def _small(**overrides) -> TritonBackend:
    """Tiles small enough that the test shapes need several of each (query, prefix and key tiles)."""
    return TritonBackend(**{"query_tile": 4, "prefix_tile": 8, "key_tile": 16, **overrides})


def test_cache_write_skips_padding_rows():
    k_cache = torch.zeros(6, 2, 4, 16, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k = torch.randn(5, 2, 16, device=DEVICE)
    v = torch.randn(5, 4, 16, device=DEVICE)[:, ::2]  # a strided view, like a slice of the qkv output
    slots = torch.tensor([9, -1, 0, 23, -1], device=DEVICE)
    write_kv(k, v, k_cache, v_cache, slots)
    want_k, want_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    for row, slot in ((0, 9), (2, 0), (3, 23)):
        want_k[slot // 4, :, slot % 4] = k[row]
        want_v[slot // 4, :, slot % 4] = v[row]
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


def test_mixed_step_gqa_split_and_shared_prefix_fp32():
    meta = _check(MIXED, 8, heads=4, kv_heads=2, head_dim=16, dtype=torch.float32,
                  backend=_small(num_splits=2, cascade=True))
    assert meta.launch == LaunchConfig(4, 8, 2, True)
    assert (meta.own_start > 0).sum() == 7 and (meta.prefix_count > 0).sum() >= 3  # sharing is exercised


def test_mixed_step_mha_bf16_one_pass():
    meta = _check(MIXED, 8, heads=2, kv_heads=2, head_dim=32, dtype=torch.bfloat16,
                  backend=_small(num_splits=1, cascade=False))
    assert meta.launch.direct


@pytest.mark.parametrize("num_splits,cascade", [(4, False), (1, True)])
def test_split_only_and_prefix_only(num_splits, cascade):
    """block_size 4: a key tile spans eight blocks; 16 heads on one kv head: a query tile
    is cut into head chunks (max_rows)."""
    families = [(5, [(21, 1, 5), (24, 4, 5), (33, 2, 5)]), (0, [(50, 1, 0)]), (0, [(19, 7, 0)])]
    _check(families, 4, heads=16, kv_heads=1, head_dim=16, dtype=torch.float32,
           backend=_small(num_splits=num_splits, cascade=cascade, max_rows=32, key_tile=32), seed=1)


def test_sliding_window_reference_against_dense_attention():
    """The reference's window (added for StarCoder2), checked row by row."""
    window = 6
    batch, _ = _step(MIXED, 8, seed=2)
    q, k, v, k_cache, v_cache = _inputs(batch, 4, 2, 16, torch.float32, seed=2)
    out, kc, vc = _reference(batch, q, k, v, k_cache, v_cache, window)
    cu = batch.cu_seqlens_q.tolist()
    for i, (ctx, q_len) in enumerate(zip(batch.context_lens, batch.query_lens)):
        pos = torch.arange(ctx, device=DEVICE)
        slots = batch.block_tables[i, pos // 8]
        keys = kc[slots, :, pos % 8].repeat_interleave(2, dim=1)  # [ctx, heads, d]
        values = vc[slots, :, pos % 8].repeat_interleave(2, dim=1)
        for j in range(q_len):
            p = ctx - q_len + j
            seen = (pos <= p) & (pos > p - window)
            scores = torch.einsum("hd,khd->hk", q[cu[i] + j], keys[seen]) * 16 ** -0.5
            want = torch.einsum("hk,khd->hd", scores.softmax(-1), values[seen])
            torch.testing.assert_close(out[cu[i] + j], want, atol=1e-5, rtol=1e-5)


def test_sliding_window_with_splits_and_shared_prefix():
    """Window 11: some rows see part of the shared prefix, some none of it; whole splits fall out."""
    families = [(3, [(25, 1, 3), (37, 5, 3), (30, 6, 3)]), (0, [(45, 17, 0)]), (0, [(60, 1, 0)])]
    _check(families, 8, heads=4, kv_heads=2, head_dim=16, dtype=torch.float32,
           backend=_small(sliding_window=11, num_splits=2, cascade=True, key_tile=32), seed=3, window=11)


def _random_families(rng: random.Random, count: int) -> list[Family]:
    families = []
    for _ in range(count):
        prompt = rng.randint(0, 4)
        members = []
        for _ in range(rng.choice([1, 2, 4])):
            ctx = rng.randint(prompt * 8 + 1, prompt * 8 + 40)
            members.append((ctx, min(ctx - prompt * 8, rng.choice([1, 2, 5, 13])), prompt))
        families.append((prompt, members))
    return families


def test_shared_groups_match_the_cpu_kernel_grouping():
    for seed in range(5):
        batch, _ = _step(_random_families(random.Random(seed), 6), 8, seed)
        cpu = SharedGroups.build(None, batch.block_tables.cpu(), batch.context_lens_t.cpu(), 8)
        want = torch.zeros(batch.num_seqs, dtype=torch.int64)
        for g in range(cpu.shared_len.shape[0]):
            members = cpu.members[cpu.offsets[g]:cpu.offsets[g + 1]]
            if len(members) > 1:
                want[members] = cpu.shared_len[g]
        groups = triton_meta.shared_groups(batch.block_tables, batch.context_lens_t, batch.cu_seqlens_q.diff(), 8)
        assert torch.equal(groups.prefix[groups.group_of].cpu(), want)


def test_random_steps_auto_launch():
    """The backend's own launch choice on random sibling families (auto cascade on)."""
    families = _random_families(random.Random(7), 3)
    meta = _check(families, 8, heads=4, kv_heads=2, head_dim=16, dtype=torch.float32, backend=_small(), seed=7)
    assert meta.launch.cascade


def test_the_automatic_cascade_is_decided_from_the_hosts_tables():
    """Left to the backend, the shared-prefix pass is on where two sequences with new tokens begin
    with one block (the host's first blocks, not the groups read back: _check), off where none
    do; where the host has no tables (a graph bucket's view), wherever two sequences could."""
    lone = [(0, [(30, 1, 0)]), (0, [(12, 4, 0)]), (0, [(50, 1, 0)]), (0, [(0, 0, 0)])]
    meta = _check(lone, 8, heads=4, kv_heads=2, head_dim=16, dtype=torch.float32, backend=_small(num_splits=1))
    assert meta.launch.direct
    meta = _check(MIXED, 8, heads=4, kv_heads=2, head_dim=16, dtype=torch.float32, backend=_small(num_splits=1))
    assert meta.launch.cascade
    batch, _ = _step(lone, 8, seed=0)
    groups = triton_meta.shared_groups(batch.block_tables, batch.context_lens_t, batch.cu_seqlens_q.diff(), 8)
    assert _small(num_splits=1).launch_for(dataclasses.replace(batch, first_blocks=None), groups).cascade


def test_static_metadata_has_fixed_shapes_and_copies():
    """Two steps of one bucket (as many sequences and rows, other lengths and groups) give
    metadata of the same shapes under one launch config, and copy_to fills a static copy."""
    launch = LaunchConfig(4, 8, 2, True)
    backend = _small()
    first, _ = _step(MIXED, 8, seed=4)
    other = [(2, [(17, 1, 2), (30, 1, 2), (40, 13, 2), (18, 1, 2)]), (0, [(50, 1, 0)]), (0, [(80, 5, 0)]),
             (4, [(33, 1, 4), (90, 20, 4)]), (0, [(9, 1, 0)]), (0, [(12, 12, 0)]), (0, [(0, 0, 0)])]
    second, _ = _step(other, 8, seed=5)
    assert (first.num_seqs, first.num_tokens) == (second.num_seqs, second.num_tokens)
    static, step = backend.prepare(first, launch), backend.prepare(second, launch)
    assert not torch.equal(static.own_start, step.own_start)
    step.copy_to(static)
    for f in dataclasses.fields(step):
        a, b = getattr(static, f.name), getattr(step, f.name)
        assert a == b if f.name == "launch" else torch.equal(a, b)
    with pytest.raises(ValueError):
        backend.prepare(second, LaunchConfig(4, 8, 1, True)).copy_to(static)


# ---------------------------------------------------------------- GPU, model-like shapes

def _gpu_families(rng: random.Random) -> list[Family]:
    """pass@10-like: prompts of up to 1000 tokens with 10 siblings each, plus lone sequences."""
    families = []
    for _ in range(4):
        prompt = rng.randint(1, 64)
        own = [rng.randint(1, 300) for _ in range(10)]  # new tokens go to own blocks: at most `own` of them
        families.append((prompt, [(prompt * 16 + n, min(n, rng.choice([1, 5])), prompt) for n in own]))
    lone = [rng.randint(1, 2000) for _ in range(6)]
    return families + [(0, [(ctx, min(ctx, rng.choice([1, 5, 300])), 0)]) for ctx in lone]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("launch", [None, LaunchConfig(16, 32, 1, False), LaunchConfig(16, 32, 8, False),
                                    LaunchConfig(16, 32, 4, True)])
@pytest.mark.gpu
@requires_cuda
def test_gpu_model_shapes(dtype, launch):
    for seed in range(2):
        families = _gpu_families(random.Random(seed))
        _check(families, 16, heads=32, kv_heads=8, head_dim=128, dtype=dtype, backend=TritonBackend(), seed=seed,
               launch=launch)


@pytest.mark.gpu
@requires_cuda
def test_gpu_sliding_window():
    _check(_gpu_families(random.Random(9)), 16, heads=24, kv_heads=2, head_dim=128, dtype=torch.bfloat16,
           backend=TritonBackend(sliding_window=256), seed=9, window=256)


def test_the_start_up_self_check_passes_and_catches_a_broken_kernel(monkeypatch):
    from engine.attention import self_check, triton_attention

    assert self_check.compare_with_reference(DEVICE, torch.float32) < 1e-4
    real = triton_attention.TritonBackend.forward
    monkeypatch.setattr(triton_attention.TritonBackend, "forward",
                        lambda self, q, *args: real(self, q, *args) * 1.01)  # a kernel that is slightly off
    assert self_check.compare_with_reference(DEVICE, torch.float32) > 1e-3


def test_heads_wider_than_the_default_tiles_take_tiles_of_sixteen():
    """A 576-wide latent row pads to a 1024-wide tile: every tile at 16 rows (registers and shared
    memory); heads up to 256 keep the default tiles."""
    wide = TritonBackend(head_dim=576)
    assert (wide.query_tile, wide.prefix_tile, wide.key_tile, wide.max_rows) == (16, 16, 16, 16)
    default = TritonBackend(head_dim=256)
    assert (default.query_tile, default.prefix_tile, default.key_tile, default.max_rows) == (16, 32, 64, 128)


@pytest.mark.parametrize("launch", [None, LaunchConfig(16, 16, 2, True)])
def test_latent_rows_one_cache_for_keys_and_values(launch):
    """DeepSeek-V2's latent attention: 16 query heads over one 576-wide cached row per token that is
    both key and value, one cache tensor seen as both (engine/model_runner.py): the Triton backend
    at its wide tiles equals the reference, prefill chunks, decodes and verifies of siblings alike."""
    batch, padded = _step(MIXED, 8, seed=3, pad_rows=2)
    q, k, _, cache, _ = _inputs(padded, 16, 1, 576, torch.float32, seed=3)
    rows = batch.num_tokens
    ref_cache = cache.clone()
    ref = TorchRefBackend()
    want = ref.forward(q[:rows], k[:rows], k[:rows], ref_cache, ref_cache, batch, ref.prepare(batch))
    backend = TritonBackend(head_dim=576)
    with read_backs() as seen:
        meta = backend.prepare(padded, launch)
        out = backend.forward(q, k, k, cache, cache, padded, meta)
    assert seen == []
    assert torch.equal(cache, ref_cache)
    torch.testing.assert_close(out[:rows], want, atol=1e-5, rtol=1e-5)


def test_heads_narrower_than_a_dot_tile():
    """Heads of 8 dims: the tiles are 16 wide (tl.dot's least on a GPU), the lanes past the head masked."""
    _check(MIXED, 8, heads=4, kv_heads=2, head_dim=8, dtype=torch.float32, backend=_small(num_splits=2, cascade=True))


@pytest.mark.parametrize("block", [8, 32])
def test_the_start_up_check_runs_at_the_models_heads_and_block_size(monkeypatch, block):
    """fast_paths checks the Triton backend at the model's own heads, width and cache block size
    too (its kernels compile for those): a kernel off only there is caught, and named."""
    from engine import fast_paths
    from engine.attention import self_check, triton_attention

    assert self_check.compare_with_reference(DEVICE, torch.float32, heads=28, kv_heads=4, head_dim=32,
                                             block=block) < 1e-4
    real = triton_attention.TritonBackend.forward
    monkeypatch.setattr(triton_attention.TritonBackend, "forward",
                        lambda self, q, *args: real(self, q, *args) * (1.01 if q.shape[1] == 28 else 1.0))
    assert fast_paths.triton_problem(DEVICE, torch.float32, None, 32) is None
    assert fast_paths.triton_problem(DEVICE, torch.float32, None, 32, heads=(32, 8), block_size=block) is None
    problem = fast_paths.triton_problem(DEVICE, torch.float32, None, 32, heads=(28, 4), block_size=block)
    assert "at heads of 32" in problem


def test_the_start_up_check_of_wide_heads_runs_at_their_width(monkeypatch):
    """fast_paths checks wide heads at the model's width as well: a kernel that is only off there
    is caught."""
    from engine import fast_paths
    from engine.attention import triton_attention

    assert fast_paths.triton_problem(DEVICE, torch.float32, None, 576) is None
    real = triton_attention.TritonBackend.forward
    monkeypatch.setattr(triton_attention.TritonBackend, "forward",
                        lambda self, q, *args: real(self, q, *args) * (1.01 if q.shape[-1] > 256 else 1.0))
    assert fast_paths.triton_problem(DEVICE, torch.float32, None, 128) is None
    assert "at heads of 576" in fast_paths.triton_problem(DEVICE, torch.float32, None, 576)


@pytest.mark.parametrize("meta_in_graph", [True, False])
def test_static_steps_with_triton_metadata_equal_the_eager_reference(tiny_model_dir, meta_in_graph):
    """What a CUDA graph replays (engine/static_step.py with each bucket's fixed launch; the
    metadata built by the step function, or outside it into static metadata), run directly: the
    logits equal the torch reference's eager step, step after step."""
    from engine.config import EngineConfig
    from engine.cuda_graphs import StepGraphs
    from engine.model_runner import ModelRunner
    from engine.models.registry import read_model_config
    from engine.static_step import StaticStep

    config = EngineConfig(model=tiny_model_dir, num_kv_blocks=64, block_size=4, attention_backend="torch")
    runner = ModelRunner(config, read_model_config(tiny_model_dir))
    static = StaticStep(8, 32, 16, 4, runner.num_blocks, runner.model_config.vocab_size, runner.device)
    graphs = StepGraphs(runner.model, runner.kv_caches, TritonBackend(), static, capture=False,
                        meta_in_graph=meta_in_graph)
    torch.manual_seed(0)
    start = torch.randn_like(runner.kv_caches)
    prompt = (3, 4)
    steps = [[SeqChunk((7,), 8, prompt + (10, 11), 0), SeqChunk((8, 9, 10), 9, prompt + (12, 13), 0),
              SeqChunk((9,), 15, (20, 21, 22, 23), 0)],
             [SeqChunk((7, 1), 9, prompt + (10, 11), 0), SeqChunk((8,), 12, prompt + (12, 13), 0)]]
    for chunks in steps + steps[:1]:  # the first bucket again: its static metadata is copied over
        runner.kv_caches.copy_(start)
        batch = StepBatch.build(chunks, 4, runner.device)
        eager = runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend))
        runner.kv_caches.copy_(start)
        torch.testing.assert_close(graphs.run(chunks), eager, rtol=1e-4, atol=1e-4)
    assert len(static.metas) == (0 if meta_in_graph else 2) and graphs.replays == 3


class _RecordedCapture:
    """Stands for engine.cuda_graphs.CudaCapture on the CPU: a capture records the step function,
    and its graph's replay runs it (what a CUDA graph replays: the same static buffers, and the
    metadata built from them inside the step). `fail`: the captures, counted from 1, that raise."""

    def __init__(self, fail: tuple[int, ...] = ()) -> None:
        self.captures, self.fail = 0, fail

    def free_bytes(self) -> int:
        return 0

    def __call__(self, step):
        self.captures += 1
        if self.captures in self.fail:
            raise RuntimeError("CUDA out of memory")
        return SimpleNamespace(replay=step)

    def synchronize(self) -> None:
        pass


def _graphed_runner(model_dir: str, first_use: bool, capture: _RecordedCapture):
    from engine.config import EngineConfig
    from engine.cuda_graphs import StepGraphs
    from engine.model_runner import ModelRunner
    from engine.models.registry import read_model_config
    from engine.static_step import StaticStep

    config = EngineConfig(model=model_dir, num_kv_blocks=64, block_size=4, attention_backend="torch")
    runner = ModelRunner(config, read_model_config(model_dir))
    static = StaticStep(8, 32, 16, 4, runner.num_blocks, runner.model_config.vocab_size, runner.device)
    runner.graphs = StepGraphs(runner.model, runner.kv_caches, TritonBackend(), static, capture=True,
                               first_use=first_use, capturer=lambda device: capture)
    return runner


def test_graphs_captured_on_first_use_replay_the_eager_steps(tiny_model_dir, caplog):
    """With first_use, start-up captures the largest and the smallest bucket only (both checked
    against eager steps); a step in another bucket captures it first, then replays it, and the
    bucket's later steps only replay; a bucket whose capture fails runs eagerly and is not tried
    again, the others replaying as before. Every replayed step equals the eager reference."""
    capture = _RecordedCapture(fail=(4,))
    runner = _graphed_runner(tiny_model_dir, True, capture)
    graphs = runner.graphs
    report = graphs.capture_all()
    assert (report.graphs, report.deferred, capture.captures) == (2, len(graphs.static.buckets) - 2, 2)
    assert "23 more when first used" in report.describe()
    torch.manual_seed(0)
    start = torch.randn_like(runner.kv_caches)
    prompt = (3, 4)
    three = [SeqChunk((7,), 8, prompt + (10, 11), 0), SeqChunk((8, 9, 10), 9, prompt + (12, 13), 0),
             SeqChunk((9,), 15, (20, 21, 22, 23), 0)]
    three_again = [SeqChunk((5,), 9, prompt + (10, 11), 0), SeqChunk((6, 7, 8), 10, prompt + (12, 13), 0),
                   SeqChunk((1,), 16, (20, 21, 22, 23, 24), 0)]
    one = [SeqChunk((2,), 6, prompt + (10,), 0)]
    for chunks, captured in ((three, True), (three_again, False), (one, False)):
        runner.kv_caches.copy_(start)
        batch = StepBatch.build(chunks, 4, runner.device)
        eager = runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend))
        runner.kv_caches.copy_(start)
        torch.testing.assert_close(graphs.run(chunks), eager, rtol=1e-4, atol=1e-4)
        assert graphs.captured_now == captured
    assert (capture.captures, graphs.late_captures, graphs.replays) == (3, 1, 3)
    two = [SeqChunk((7,), 8, prompt + (10, 11), 0), SeqChunk((8, 9), 9, prompt + (12, 13), 0)]
    with caplog.at_level("WARNING", logger="engine"):
        assert graphs.run(two) is None and not graphs.captured_now  # the fourth capture fails
    assert "2 sequences, 4 rows not captured (RuntimeError: CUDA out of memory)" in caplog.text
    assert graphs.run(two) is None and capture.captures == 4  # not tried again
    assert graphs.run(three) is not None and graphs.replays == 4
    assert re.fullmatch(r"2 at start-up in [0-9.]+ s, 1 on first use in [0-9.]+ s, 1 failed \(run eagerly\)",
                        graphs.summary())


def test_graphs_captured_at_start_up_take_every_bucket(tiny_model_dir):
    capture = _RecordedCapture()
    runner = _graphed_runner(tiny_model_dir, False, capture)
    report = runner.graphs.capture_all()
    assert report.graphs == capture.captures == len(runner.graphs.static.buckets) and report.deferred == 0
    assert runner.graphs.run([SeqChunk((7,), 8, (3, 4, 10, 11), 0)] * 3) is not None
    assert not runner.graphs.captured_now and capture.captures == report.graphs


def test_a_step_that_captures_a_graph_teaches_the_step_cost_nothing(tiny_model_dir):
    """The engine on graphs captured on first use: the tokens of eager steps, and a step that
    captured its bucket first is no observation of a step's cost (it took a capture's time too)."""
    from engine import LLM, SamplingParams

    params = SamplingParams(n=2, temperature=0.0, max_tokens=5, ignore_eos=True)
    prompts = ["def add(a, b):\n    return", "import os\n"]
    eager = LLM(tiny_model_dir, num_kv_blocks=64, block_size=4, attention_backend="torch")
    want = [[c.token_ids for c in o.outputs] for o in eager.generate(prompts, params, use_tqdm=False)]
    llm = LLM(tiny_model_dir, num_kv_blocks=64, block_size=4, attention_backend="torch")
    engine = llm.engine
    engine.runner.graphs = _graphed_runner(tiny_model_dir, True, _RecordedCapture()).graphs
    engine.runner.graphs.kv_caches = engine.runner.kv_caches
    engine.runner.graphs.model = engine.runner.model
    engine.runner.graphs.capture_all()
    observed, captured = [], []
    real = engine.step_cost.observe
    engine.step_cost.observe = lambda *a: (observed.append(engine._steps), real(*a))
    step = engine.step

    def stepped(*a, **k):
        out = step(*a, **k)
        if engine.runner.step_captured:
            captured.append(engine._steps)
        return out

    engine.step = stepped
    got = [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == want and captured and engine.runner.graphs.replays > len(captured)
    assert not set(captured) & set(observed) and observed
    assert f", {len(captured)} on first use in " in engine.stats().cuda_graphs


@pytest.mark.parametrize("family,overrides,prefix_tile", [
    ("deepseek_v2", {"kv_lora_rank": 280}, 16),  # latent rows of 288: the wide tiles
    ("gemma3", {}, 32),  # a window on one layer of two
])
def test_static_steps_of_other_families_equal_the_eager_reference(tmp_path, family, overrides, prefix_tile):
    """What a CUDA graph replays (the bucket's fixed launch at the backend's tiles) equals the torch
    reference's eager step: DeepSeek-V2 with latent rows wider than the default tiles take, over the
    one-plane cache; Gemma 3, contexts past its window, whose windowed layers take the Triton
    backend's windowed twin on the step's one metadata."""
    from engine.config import EngineConfig
    from engine.cuda_graphs import StepGraphs
    from engine.model_runner import ModelRunner
    from engine.models.registry import read_model_config
    from engine.static_step import StaticStep
    from tests.conftest import make_tiny_family

    path = make_tiny_family(str(tmp_path), family, **overrides)
    config = EngineConfig(model=path, num_kv_blocks=64, block_size=4, attention_backend="torch")
    runner = ModelRunner(config, read_model_config(path))
    mc = runner.model_config
    static = StaticStep(8, 32, 16, 4, runner.num_blocks, mc.vocab_size, runner.device)
    graphs = StepGraphs(runner.model, runner.kv_caches, TritonBackend(head_dim=mc.head_dim), static, capture=False)
    torch.manual_seed(0)
    start = torch.randn_like(runner.kv_planes)
    prompt = (3, 4)
    chunks = [SeqChunk((7,), 8, prompt + (10, 11), 0), SeqChunk((8, 9, 10), 9, prompt + (12, 13), 0),
              SeqChunk((9,), 15, (20, 21, 22, 23), 0)]
    runner.kv_planes.copy_(start)
    batch = StepBatch.build(chunks, 4, runner.device)
    eager = runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend))
    runner.kv_planes.copy_(start)
    torch.testing.assert_close(graphs.run(chunks), eager, rtol=1e-4, atol=1e-4)
    assert graphs._launch_of(static.bucket(chunks)).prefix_tile == prefix_tile
    if family == "gemma3":  # the window matters here: windowed layers without it differ
        runner.kv_planes.copy_(start)
        runner.model._twin = lambda backend: backend
        assert (graphs.run(chunks) - eager).abs().max() > 1e-3


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("when", ["start-up", "first-use"])
def test_captured_graphs_hold_the_metadata_and_replay_the_eager_steps(tiny_model_dir, when):
    """On CUDA: the buckets are captured with their attention metadata inside (the start-up check
    replays a step the graph was not captured with), at start-up or when first used, and replays
    equal eager steps."""
    from engine.config import EngineConfig
    from engine.cuda_graphs import META_INSIDE
    from engine.model_runner import ModelRunner
    from engine.models.registry import read_model_config

    config = EngineConfig(model=tiny_model_dir, num_kv_blocks=64, block_size=4, device="cuda", dtype="float32",
                          attention_backend="triton", cuda_graphs=True, max_num_seqs=8, cuda_graph_max_rows=32,
                          cuda_graph_capture=when)
    runner = ModelRunner(config, read_model_config(tiny_model_dir))
    assert runner.graphs is not None and runner.graphs.report.metadata == META_INSIDE
    assert runner.graphs.report.graphs == (2 if when == "first-use" else len(runner.graphs.static.buckets))
    prompt = (3, 4)
    for chunks in ([SeqChunk((7,), 8, prompt + (10, 11), 0), SeqChunk((8, 9, 10), 9, prompt + (12, 13), 0)],
                   [SeqChunk((9,), 15, (20, 21, 22, 23), 0)]):
        start = runner.kv_caches.clone()
        batch = StepBatch.build(chunks, 4, runner.device)
        eager = runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend))
        runner.kv_caches.copy_(start)
        torch.testing.assert_close(runner.graphs.run(chunks), eager, rtol=1e-4, atol=1e-4)
