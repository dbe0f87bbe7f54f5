"""The model equals transformers' LlamaForCausalLM; paged attention equals dense attention."""
from __future__ import annotations

import pytest
import torch

from engine.attention import get_backend
from engine.config import EngineConfig
from engine.models.registry import read_model_config
from engine.kernels import cpu as kernels
from engine.model_runner import ModelRunner
from engine.step_batch import SeqChunk, StepBatch
from tests.conftest import make_tiny_llama
from tests.engine.helpers import _hf_model


def _runner(model_dir: str, num_blocks: int = 64, block_size: int = 4) -> ModelRunner:
    cfg = EngineConfig(model=model_dir, num_kv_blocks=num_blocks, block_size=block_size, device="cpu")
    return ModelRunner(cfg, read_model_config(model_dir))


def _forward(runner: ModelRunner, chunks: list[SeqChunk]) -> torch.Tensor:
    batch = StepBatch.build(chunks, runner.config.block_size, runner.device)
    return runner.model.compute_logits(runner.model(batch, runner.kv_caches, runner.backend))


def test_prefill_and_decode_logits_match_transformers(tiny_model_dir):
    runner = _runner(tiny_model_dir)
    if kernels.available():  # decode rows go through the bf16 linear kernel, prefill through F.linear
        assert runner.model.lm_head.packed is not None
    hf = _hf_model(tiny_model_dir)
    ids = torch.randint(3, 512, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    table = tuple(range(8))  # 8 blocks of 4 tokens
    # Prefill the first 15 tokens (all rows), then feed the rest one token at a time.
    got = [_forward(runner, [SeqChunk(tuple(ids[:15]), 0, table, 0)])]
    for pos in range(15, len(ids)):
        got.append(_forward(runner, [SeqChunk((ids[pos],), pos, table, 0)]))
    got = torch.cat(got)
    assert (got - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("overrides", [
    dict(tie_word_embeddings=True),
    dict(num_key_value_heads=4, rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=1e6),
])
def test_variants_match_transformers(tmp_path, spm_tokenizer_dir, overrides):
    make_tiny_llama(str(tmp_path), vocab_size=512, seed=3, **overrides)
    runner = _runner(str(tmp_path))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = list(range(5, 40))
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    got = _forward(runner, [SeqChunk(tuple(ids), 0, tuple(range(9)), 0)])
    assert (got - ref).abs().max().item() < 1e-4


def test_packed_varlen_batch_equals_separate_runs(tiny_model_dir):
    """Prefill chunks, decode tokens and multi-token verify chunks in one packed batch."""
    runner = _runner(tiny_model_dir, num_blocks=80)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (70, 9, 13, 30)]
    tables = [tuple(range(i * 20, i * 20 + 20)) for i in range(4)]
    # Step 1: prefill different prefixes; step 2: a mix of the remaining lengths.
    split = [66, 8, 5, 29]
    _forward(runner, [SeqChunk(tuple(s[:k]), 0, t, k) for s, t, k in zip(seqs, tables, split)])
    mixed = _forward(runner, [SeqChunk(tuple(s[k:]), k, t, 0) for s, t, k in zip(seqs, tables, split)])
    hf = _hf_model(tiny_model_dir)
    rows = []
    with torch.no_grad():
        for s, k in zip(seqs, split):
            rows.append(hf(torch.tensor([s])).logits[0, k:])
    assert (mixed - torch.cat(rows)).abs().max().item() < 1e-4


@pytest.mark.parametrize("backend_name", ["torch", "cpu"])
def test_paged_attention_equals_dense_attention(backend_name):
    torch.manual_seed(0)
    heads, kv_heads, d, bs = 4, 2, 16, 4
    num_blocks = 40
    k_cache = torch.zeros(num_blocks, kv_heads, bs, d)
    v_cache = torch.zeros_like(k_cache)
    ctx = [7, 1, 12, 30]
    new = [3, 1, 12, 1]  # verify-like, decode, prefill, decode
    perm = torch.randperm(num_blocks).tolist()  # scattered, non-contiguous blocks
    chunks, full_k, full_v = [], [], []
    for i, (c, n) in enumerate(zip(ctx, new)):
        nb = (c + bs - 1) // bs
        table = tuple(perm[:nb]); perm = perm[nb:]
        keys, values = torch.randn(c, kv_heads, d), torch.randn(c, kv_heads, d)
        for p in range(c - n):  # earlier tokens already in the cache
            k_cache[table[p // bs], :, p % bs] = keys[p]
            v_cache[table[p // bs], :, p % bs] = values[p]
        full_k.append(keys); full_v.append(values)
        chunks.append(SeqChunk(tuple([0] * n), c - n, table, 0))
    batch = StepBatch.build(chunks, bs, torch.device("cpu"))
    q = torch.randn(batch.num_tokens, heads, d)
    k_new = torch.cat([k[c - n:] for k, c, n in zip(full_k, ctx, new)])
    v_new = torch.cat([v[c - n:] for v, c, n in zip(full_v, ctx, new)])
    backend = get_backend(backend_name, "cpu")
    assert backend.name == backend_name
    out = backend.forward(q, k_new, v_new, k_cache, v_cache, batch, backend.prepare(batch))
    start = 0
    for keys, values, c, n in zip(full_k, full_v, ctx, new):
        qs = q[start:start + n]
        kk = keys.repeat_interleave(heads // kv_heads, dim=1)
        vv = values.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qs, kk) / d ** 0.5
        q_pos = torch.arange(c - n, c)[:, None]
        scores = scores.masked_fill(torch.arange(c)[None, :] > q_pos, float("-inf"))
        dense = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)
        assert torch.allclose(out[start:start + n], dense, atol=1e-5)
        start += n


def test_loader_rejects_a_wrong_checkpoint(tmp_path):
    make_tiny_llama(str(tmp_path / "a"), vocab_size=512)
    import json
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["hidden_size"] = 128
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape mismatch"):
        _runner(str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError):
        read_model_config(str(tmp_path / "missing"))
