"""The grouped mixture-of-experts kernels (engine/kernels/triton_moe.py) against the reference
SparseMoE.forward (engine/models/moe.py). Without a GPU they run under the Triton interpreter."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import below
pytest.importorskip("triton", reason="triton is not installed")

from engine.config import ModelConfig
from engine.kernels import triton_moe
from engine.models.moe import SparseMoE

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _moe(experts: int, top_k: int, hidden: int, width: int, renormalize: bool, seed: int) -> SparseMoE:
    cfg = ModelConfig(vocab_size=8, hidden_size=hidden, intermediate_size=width, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=hidden, max_position_embeddings=8, norm_eps=1e-6, rope_theta=1e4,
                      num_experts=experts, experts_per_token=top_k, moe_intermediate_size=width,
                      norm_topk_prob=renormalize)
    torch.manual_seed(seed)
    moe = SparseMoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return moe.to(DEVICE)


@pytest.mark.parametrize("tokens,experts,top_k,renormalize", [(1, 4, 2, True), (5, 4, 2, False), (19, 8, 3, True),
                                                              (40, 3, 1, True)])
def test_grouped_kernels_equal_the_reference(tokens, experts, top_k, renormalize):
    """Decode-sized and prefill-sized batches, experts with no token, one expert per token; fp32."""
    moe = _moe(experts, top_k, 32, 16, renormalize, seed=tokens)
    x = torch.randn(tokens, 32, device=DEVICE)
    weights, chosen = moe.route(x)
    with torch.no_grad():
        got = triton_moe.moe(x, weights, chosen, moe.experts_gate_up.view(experts, 32, 32),
                             moe.experts_down.view(experts, 32, 16))
        expected = moe(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())


def test_experts_narrower_than_a_dot_tile():
    """Widths of 8: the tiles are 16 wide (tl.dot's least on a GPU), the lanes past them masked."""
    moe = _moe(4, 2, 8, 8, True, seed=2)
    x = torch.randn(5, 8, device=DEVICE)
    weights, chosen = moe.route(x)
    with torch.no_grad():
        got = triton_moe.moe(x, weights, chosen, moe.experts_gate_up.view(4, 16, 8), moe.experts_down.view(4, 8, 8))
        expected = moe(x)
    assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())


def test_alignment_groups_rows_by_expert_in_whole_tiles():
    chosen = torch.tensor([[2, 0], [2, 1], [0, 2], [2, 0]], device=DEVICE)
    aligned = triton_moe.align(chosen, num_experts=4)
    rows, tiles = aligned.rows.tolist(), aligned.tile_expert.tolist()
    size, block = triton_moe.capacity(8, 4), triton_moe.BLOCK_M
    assert len(rows) == size and len(tiles) == size // block
    # expert 0: rows 1, 4, 7; expert 1: row 3; expert 2: rows 0, 2, 5, 6; expert 3: none
    assert rows[:3] == [1, 4, 7] and rows[block:block + 1] == [3] and rows[2 * block:2 * block + 4] == [0, 2, 5, 6]
    assert all(r == 8 for t in range(3) for r in rows[t * block:(t + 1) * block][[3, 1, 4][t]:])
    assert tiles[:3] == [0, 1, 2] and all(t == 4 for t in tiles[3:])  # no tile for expert 3: past the last


def test_no_tokens():
    moe = _moe(4, 2, 32, 16, True, seed=0)
    x = torch.zeros(0, 32, device=DEVICE)
    weights, chosen = moe.route(x)
    out = triton_moe.moe(x, weights, chosen, moe.experts_gate_up.view(4, 32, 32), moe.experts_down.view(4, 32, 16))
    assert out.shape == (0, 32)


def test_a_mixture_of_experts_model_runs_its_experts_through_the_kernels(tmp_path):
    """use_triton_kernels puts the grouped kernels in every mixture; with only them on, the tiny
    Qwen3-MoE in bf16 (one mixture, then a dense layer) gives the reference's logits within bf16
    rounding. (With the other kernels on too, their own rounding can flip a near-tied routing.)"""
    from engine.attention.torch_ref import TorchRefBackend
    from engine.model_runner import load_model
    from engine.models.registry import read_model_config
    from engine.step_batch import SeqChunk, StepBatch
    from tests.conftest import make_tiny_family

    path = make_tiny_family(str(tmp_path), "qwen3_moe")
    mc = read_model_config(path)
    assert mc.dense_layers == (1,)
    models = [load_model(path, mc, torch.bfloat16, DEVICE).eval().requires_grad_(False) for _ in range(3)]
    models[2].use_triton_kernels()
    assert models[2].layers[0].mlp.fused is triton_moe.moe
    models[1].layers[0].mlp.fused = triton_moe.moe
    ids = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    caches = torch.zeros(mc.num_layers, 2, 4, mc.num_kv_heads, 4, mc.head_dim, dtype=torch.bfloat16, device=DEVICE)
    batch = StepBatch.build([SeqChunk(tuple(ids), 0, (0, 1, 2), 0)], 4, DEVICE)
    ref, fused = (m.compute_logits(m(batch, caches.clone(), TorchRefBackend())) for m in models[:2])
    assert 0 < (fused - ref).abs().max().item() < 0.05 * ref.abs().max().item()  # rounding apart, not equal


def test_random_routings_including_one_expert_for_all_and_every_expert_per_token():
    """Twelve random shapes, plus the two extremes: every token on one expert (its group spans
    several tiles) and k equal to the number of experts."""
    gen = torch.Generator().manual_seed(5)
    cases = [(int(torch.randint(1, 40, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen)))
             for _ in range(12)]
    for i, (tokens, experts) in enumerate(cases + [(37, 1), (6, 5)]):
        top_k = experts if (tokens, experts) == (6, 5) else int(torch.randint(1, experts + 1, (1,), generator=gen))
        moe = _moe(experts, top_k, 32, 16, renormalize=bool(i % 2), seed=i)
        x = torch.randn(tokens, 32, generator=gen).to(DEVICE)
        weights, chosen = moe.route(x)
        with torch.no_grad():
            got = triton_moe.moe(x, weights, chosen, moe.experts_gate_up.view(experts, 32, 32),
                                 moe.experts_down.view(experts, 32, 16))
            expected = moe(x)
        assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item()), (tokens, experts)
