"""The Triton RMSNorm and rotary kernels against their PyTorch references (RMSNorm.forward,
apply_rotary). Without a GPU they run under the Triton interpreter on the CPU."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import below
pytest.importorskip("triton", reason="triton is not installed")

from engine.kernels import triton_fused
from engine.models.norm import RMSNorm
from engine.models.rotary import Rotary, apply_rotary

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The interpreter does not round to bfloat16 as a GPU does (its conversions are not
# round-to-nearest-even), so bf16 results there are checked within a few rounding steps.
INTERPRETED_BF16_STEPS = 4


def steps(dtype: torch.dtype) -> float:
    """The tolerance, in rounding steps of the dtype, of a result whose only difference is the
    order of a float32 sum (one step), or the interpreter's bf16 conversions."""
    if dtype == torch.float32:
        return 1e-6
    many = INTERPRETED_BF16_STEPS if dtype == torch.bfloat16 and DEVICE.type == "cpu" else 1
    return many * torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,width", [(1, 64), (7, 96), (33, 256)])
def test_rms_norm_matches_the_reference(dtype: torch.dtype, rows: int, width: int) -> None:
    gen = torch.Generator().manual_seed(rows * width)
    x = (3 * torch.randn((rows, width), generator=gen)).to(DEVICE, dtype)
    norm = RMSNorm(width, 1e-5).to(DEVICE, dtype)
    norm.weight.data = (torch.rand(width, generator=gen) + 0.5).to(DEVICE, dtype)
    got = triton_fused.rms_norm(x, norm.weight, norm.eps).float()
    want = norm(x).float()  # the reference: the module without its fused kernel
    assert torch.allclose(got, want, rtol=steps(dtype), atol=steps(dtype)), (got - want).abs().max()
    assert torch.equal(triton_fused.rms_norm(x[:0], norm.weight, norm.eps), x[:0])


def test_rms_norm_keeps_leading_dims_and_reads_strided_rows() -> None:
    x = torch.randn((3, 4, 64)).to(DEVICE, torch.bfloat16)
    w = torch.ones(64, device=DEVICE, dtype=torch.bfloat16)
    got = triton_fused.rms_norm(x, w, 1e-6)
    assert got.shape == x.shape
    wide = torch.randn((5, 128)).to(DEVICE, torch.bfloat16)
    norm = RMSNorm(64, 1e-6).to(DEVICE, torch.bfloat16)
    assert torch.allclose(triton_fused.rms_norm(wide[:, :64], norm.weight, 1e-6).float(),
                          norm(wide[:, :64]).float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rope_is_bit_exact_in_place_on_strided_views(dtype: torch.dtype) -> None:
    """q and k as the fused qkv projection's views (row stride wider than the heads)."""
    tokens, heads, kv_heads, dim = 9, 4, 2, 32
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn((tokens, (heads + 2 * kv_heads) * dim), generator=gen).to(DEVICE, dtype)
    q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k = q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim)
    positions = torch.tensor([0, 1, 2, 15, 16, 17, 100, 511, 1000], device=DEVICE)
    cos_sin = Rotary(dim, 1024, 10_000.0, 1.0).to(DEVICE).tables(positions, dtype)
    want_q, want_k = apply_rotary(cos_sin, q, k)
    before_v = qkv[:, (heads + kv_heads) * dim:].clone()
    got_q, got_k = triton_fused.rope_(q, *cos_sin), triton_fused.rope_(k, *cos_sin)
    assert got_q.data_ptr() == q.data_ptr()  # in place
    exact = dtype == torch.float16 or (dtype == torch.bfloat16 and DEVICE.type == "cuda")
    if exact:  # each product and the sum rounded where PyTorch rounds them
        assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    else:  # float32 on a GPU may fuse a product into the sum; bf16 under the interpreter (above)
        tol = 3 * steps(dtype)
        assert torch.allclose(got_q, want_q, rtol=tol, atol=tol) and torch.allclose(got_k, want_k, rtol=tol, atol=tol)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim:], before_v)  # v untouched


def test_rope_supports_only_the_whole_head_half_split_layout() -> None:
    assert triton_fused.supports_rope(128, 128, "neox")
    assert not triton_fused.supports_rope(128, 64, "neox")  # partial rotary (CodeGen, some others)
    assert not triton_fused.supports_rope(64, 64, "gptj")
    assert not triton_fused.supports_rope(80, 80, "neox")  # not a power of two


def test_a_model_with_the_kernels_computes_what_it_computes_without_them(monkeypatch) -> None:
    """The wiring: use_triton_kernels swaps every RMSNorm and rotary embedding of a Llama; the
    hidden states of a mixed step stay within float16 rounding of the reference modules' (float16:
    the interpreter rounds it as a GPU does)."""
    from engine.attention.torch_ref import TorchRefBackend
    from engine.models.registry import model_class, model_config
    from engine.step_batch import SeqChunk, StepBatch

    cfg = model_config(dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                            rms_norm_eps=1e-5, architectures=["LlamaForCausalLM"], model_type="llama"))
    torch.manual_seed(0)
    model = model_class(cfg.family)(cfg).to(DEVICE, torch.float16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p, dtype=torch.float32).mul_(0.2) if p.dim() == 2 else 1.0 + 0.1 * torch.rand_like(p))
    kv = torch.zeros((2, 2, 8, 2, 8, 16), dtype=torch.float16, device=DEVICE)
    batch = StepBatch.build([SeqChunk(tuple(range(5, 17)), 0, (0, 1), 0), SeqChunk((7,), 20, (2, 3, 4), 0)], 8, DEVICE)
    calls = {"rope": 0, "norm": 0}

    def counted(name, fn):
        def call(*args):
            calls[name] += 1
            return fn(*args)
        return call

    monkeypatch.setattr(triton_fused, "rope_", counted("rope", triton_fused.rope_))
    monkeypatch.setattr(triton_fused, "rms_norm", counted("norm", triton_fused.rms_norm))
    with torch.no_grad():
        want = model(batch, kv.clone(), TorchRefBackend()).float()
        assert model.use_triton_kernels() == 2 * 2 + 1 + 2  # two norms per layer, the final one, two attentions
        got = model(batch, kv.clone(), TorchRefBackend()).float()
    assert (got - want).abs().max() <= 4 * torch.finfo(torch.float16).eps * want.abs().max()
    assert calls == {"rope": 2 * 2, "norm": 2 * 2 + 1}  # q and k per layer; every norm, once


def test_the_device_check_passes_for_correct_kernels() -> None:
    from engine.fast_paths import norm_rope_problem

    assert norm_rope_problem(DEVICE, torch.bfloat16) is None
