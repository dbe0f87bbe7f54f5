"""The C kernels against their PyTorch references, on random inputs of many shapes."""
from __future__ import annotations

import math
import random

import pytest
import torch

from engine.attention.cpu import CpuBackend
from engine.attention.torch_ref import TorchRefBackend
from engine.kernels import cpu as kernels
from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams
from engine.step_batch import SeqChunk, StepBatch

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler: CPU kernels not built")


def _random_batch(rng: random.Random, num_blocks: int, block_size: int, families: int) -> StepBatch:
    """Families of sequences whose block tables start with the same blocks (siblings of one
    prompt, sharing its cache), with their own tails, contexts and query lengths."""
    free = list(range(num_blocks))
    rng.shuffle(free)
    chunks = []
    for _ in range(families):
        prompt_blocks = [free.pop() for _ in range(rng.randint(0, 6))]
        for _ in range(rng.choice([1, 1, 3, 10])):
            shared = len(prompt_blocks) * block_size  # new tokens go to own blocks (copy-on-write)
            ctx = rng.randint(shared + 1, shared + 90)
            q_len = min(ctx - shared, rng.choice([1, 1, 2, 5, 17, 64, 65, ctx]))
            own = (ctx + block_size - 1) // block_size - len(prompt_blocks)
            table = tuple(prompt_blocks) + tuple(free.pop() for _ in range(own))
            chunks.append(SeqChunk(tuple([0] * q_len), ctx - q_len, table, 0))
    rng.shuffle(chunks)
    return StepBatch.build(chunks, block_size, torch.device("cpu"))


@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", [(4, 2, 64, 16), (8, 8, 32, 8), (8, 1, 16, 32),
                                                                 (6, 2, 128, 16)])
def test_paged_attention_kernel_equals_reference(heads, kv_heads, head_dim, block_size):
    rng = random.Random(heads * 100 + head_dim)
    torch.manual_seed(heads + block_size)
    batch = _random_batch(rng, 2000, block_size, 12)
    k_cache = torch.randn(2000, kv_heads, block_size, head_dim)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch.num_tokens, heads, head_dim)
    k, v = torch.randn(batch.num_tokens, kv_heads, head_dim), torch.randn(batch.num_tokens, kv_heads, head_dim)
    groups = CpuBackend().prepare(batch).groups
    assert (groups.offsets.diff() > 1).any() and (groups.shared_len > block_size).any()  # sharing is exercised
    outs, caches = [], []
    for backend in (TorchRefBackend(), CpuBackend()):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(backend.forward(q, k, v, kc, vc, batch, backend.prepare(batch)))
        caches.append((kc, vc))
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    assert torch.isfinite(outs[1]).all()
    assert (outs[0] - outs[1]).abs().max().item() < 1e-5


def test_cpu_backend_sends_chunks_past_the_kernel_limit_to_sdpa():
    from engine.attention.cpu import KERNEL_QUERY

    torch.manual_seed(7)
    long_len, block_size = KERNEL_QUERY + 9, 16
    chunks = [SeqChunk(tuple([0] * long_len), 20, tuple(range(40)), 0),   # prefill chunk after 20 cached
              SeqChunk((0, 0, 0), 50, tuple(range(40, 44)), 0)]          # a verify chunk beside it
    batch = StepBatch.build(chunks, block_size, torch.device("cpu"))
    meta = CpuBackend().prepare(batch)
    assert len(meta.reference.long) == 1 and meta.groups.members.tolist() == [1]
    k_cache = torch.randn(50, 2, block_size, 32)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch.num_tokens, 4, 32)
    k, v = torch.randn(batch.num_tokens, 2, 32), torch.randn(batch.num_tokens, 2, 32)
    outs = [backend.forward(q, k, v, k_cache.clone(), v_cache.clone(), batch, backend.prepare(batch))
            for backend in (TorchRefBackend(), CpuBackend())]
    assert (outs[0] - outs[1]).abs().max().item() < 1e-5


def _rows(count: int) -> list[SamplingRow]:
    temps, top_ps, top_ks = [0.2, 0.8, 1.0, 1.7], [1.0, 0.95, 0.5, 0.1, 0.999], [0, 0, 3, 100, 0, 1]
    return [SamplingRow(i, SamplingParams(temperature=temps[i % 4], top_p=top_ps[i % 5], top_k=top_ks[i % 6]),
                        noise_key=977 * i + 5, position=i % 13) for i in range(count)]


def test_sampling_kernel_equals_reference():
    torch.manual_seed(0)
    x = torch.randn(240, 3000) * torch.rand(240, 1) * 8
    x[3, :200] = 2.5  # ties at the top
    x[4, 40:] = float("-inf")  # few live tokens
    x[5] = torch.randint(0, 4, (3000,)).float()  # large tie groups across the nucleus cut
    rows = _rows(240)
    fast = Sampler((), use_kernels=True)._sample(x.clone(), rows)
    reference = Sampler((), use_kernels=False)._sample(x.clone(), rows)
    assert torch.equal(fast, reference)


def test_a_batch_with_min_p_rows_takes_the_reference_path_whole():
    """The C kernel has no min-p: a batch with a min-p row is sampled by the reference, every row
    as the reference samples it."""
    torch.manual_seed(2)
    x = torch.randn(24, 3000) * 4
    rows = _rows(24)
    rows[5] = rows[5]._replace(params=SamplingParams(temperature=1.0, min_p=0.2))
    fast = Sampler((), use_kernels=True)._sample(x.clone(), rows)
    assert torch.equal(fast, Sampler((), use_kernels=False)._sample(x.clone(), rows))
    alone = Sampler((), use_kernels=False)._sample(x[5:6].clone(), [rows[5]._replace(logits_row=0)])
    assert fast[5] == alone[0] and x[5, fast[5]] >= x[5].max() + math.log(0.2)


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    torch.manual_seed(1)
    x = torch.randn(64, 500) * 3
    rows = _rows(64)
    tokens = Sampler((), use_kernels=True)._sample(x.clone(), rows)
    allowed = torch.isfinite(Sampler(()).process(x.clone(), rows))
    assert allowed[torch.arange(64), tokens].all()


def test_the_engine_falls_back_to_the_references_without_kernels(monkeypatch):
    from engine import fast_paths
    from engine.config import EngineConfig

    cpu = torch.device("cpu")
    monkeypatch.setenv("FASTCODELLAMA_NO_CPU_KERNELS", "1")
    kernels.load.cache_clear()
    try:
        paths = fast_paths.choose(EngineConfig(), cpu, torch.float32)
        assert paths.attention == "torch" and not paths.cpu_kernels and not paths.cpu_sampler and paths.notes
        with pytest.raises(ValueError, match="C kernels"):
            fast_paths.choose(EngineConfig(attention_backend="cpu"), cpu, torch.float32)
    finally:
        monkeypatch.delenv("FASTCODELLAMA_NO_CPU_KERNELS")
        kernels.load.cache_clear()
    paths = fast_paths.choose(EngineConfig(), cpu, torch.float32)
    assert paths.attention == "cpu" and paths.cpu_kernels and paths.cpu_sampler and not paths.cuda_graphs
    assert fast_paths.choose(EngineConfig(attention_backend="torch"), cpu, torch.float32).attention == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        fast_paths.choose(EngineConfig(attention_backend="triton"), cpu, torch.float32)


@pytest.mark.parametrize("rows,n,k", [(1, 512, 256), (2, 8192, 256), (3, 7, 64), (4, 13, 768), (5, 256, 8),
                                      (6, 48, 12), (7, 33, 20), (17, 1536, 256), (64, 130, 128), (1, 13, 64),
                                      (2, 6, 24), (13, 16, 4)])
def test_linear_bf16_kernel_equals_reference(rows, n, k):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    weight = torch.randn(n, k, generator=g).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=g)
    got = kernels.linear_bf16(x, kernels.pack_bf16(weight), n)
    ref = torch.nn.functional.linear(x.double(), weight.double()).float()
    assert got.shape == (rows, n)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4), (got - ref).abs().max()


def test_linear_packs_only_exact_bf16_weights_and_uses_the_kernel_for_few_rows():
    from engine.models.linear import SMALL_ROWS, Linear

    layer = Linear(64, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 64).bfloat16().float())
    assert layer.pack_for_cpu()
    x = torch.randn(SMALL_ROWS + 1, 64)
    reference = torch.nn.functional.linear(x, layer.weight)
    assert torch.allclose(layer(x[:3]), reference[:3], rtol=1e-5, atol=1e-5)  # kernel
    assert torch.equal(layer(x), reference)                                     # F.linear
    layer.weight.data[0, 0] += 1e-3  # no longer a bf16 value: no copy, F.linear only
    assert not layer.pack_for_cpu() and layer.packed is None
    assert torch.equal(layer(x[:3]), torch.nn.functional.linear(x[:3], layer.weight))
    assert not Linear(10, 4).pack_for_cpu()  # K not a multiple of 4


def test_linear_bf16_rejects_weights_packed_for_another_shape():
    packed = kernels.pack_bf16(torch.randn(20, 8).bfloat16())
    assert packed.shape == (2, 8, 16) and int((packed[1] != 0).sum()) == 8 * 4  # 4 real columns, 12 padded
    with pytest.raises(ValueError, match="does not fit"):
        kernels.linear_bf16(torch.randn(2, 8), packed, 40)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.linear_bf16(torch.randn(2, 16), packed, 20)
    with pytest.raises(ValueError, match="multiple of 4"):
        kernels.pack_bf16(torch.randn(4, 6))


@pytest.mark.parametrize("rows,dim", [(1, 256), (3, 64), (700, 4096), (2, 5)])
def test_rms_norm_kernel_equals_reference(rows, dim):
    g = torch.Generator().manual_seed(rows + dim)
    x, weight = torch.randn(rows, dim, generator=g) * 3, torch.randn(dim, generator=g)
    ref = torch.nn.functional.rms_norm(x.double(), (dim,), weight.double(), 1e-5).float()
    assert torch.allclose(kernels.rms_norm(x, weight, 1e-5), ref, rtol=1e-5, atol=1e-5)
