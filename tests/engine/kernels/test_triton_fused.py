"""The Triton kernels against their PyTorch references (RMSNorm.forward, apply_rotary, GatedMLP's
silu(gate) * up, DecoderLayer's residual add before its RMSNorm). Without a GPU they run under the
Triton interpreter on the CPU."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    cos_sin = Rotary(dim, 1024, 10_000.0).to(DEVICE).tables(positions, dtype)
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


def _silu_mul_rounded_as_pytorch(gate_up: torch.Tensor, exp) -> torch.Tensor:
    """F.silu(gate) * up as PyTorch computes it in a 16-bit dtype (silu in float32, rounded; the
    product in float32, rounded), with the given float32 exp."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    act = (gate / (1 + exp(-gate))).to(gate_up.dtype)
    return (act.float() * up).to(gate_up.dtype)


def _numpy_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.exp(x.numpy()))  # the interpreter's tl.exp


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,width", [(1, 344), (5, 1376), (37, 96)])
def test_silu_mul_rounds_where_pytorch_rounds(dtype: torch.dtype, rows: int, width: int) -> None:
    """1376 = 11008 / 8: two column blocks, the second partial; the input a strided column slice."""
    gen = torch.Generator().manual_seed(rows * width)
    wide = (3 * torch.randn((rows, 2 * width + 8), generator=gen)).to(DEVICE, dtype)
    gate_up = wide[:, :2 * width]
    got = triton_fused.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    want = F.silu(gate) * up  # GatedMLP's reference
    assert got.shape == (rows, width) and got.dtype == dtype
    if DEVICE.type == "cuda":  # libdevice's expf is CUDA's, which PyTorch's silu calls
        assert torch.equal(got, want)
        return
    if dtype == torch.float16:  # exact but for the exp: numpy's (the interpreter's) is not PyTorch's
        assert torch.equal(got, _silu_mul_rounded_as_pytorch(gate_up, _numpy_exp))
    # One step of silu, carried through the product; a few in bf16, for the interpreter's rounding.
    tol = 2 * steps(dtype)
    assert torch.allclose(got.float(), want.float(), rtol=tol, atol=tol), (got.float() - want.float()).abs().max()


def test_silu_mul_keeps_leading_dims_and_takes_zero_rows() -> None:
    gate_up = torch.randn((2, 3, 2 * 64)).to(DEVICE, torch.bfloat16)
    assert triton_fused.silu_mul(gate_up).shape == (2, 3, 64)
    assert triton_fused.silu_mul(gate_up[0, :0]).shape == (0, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,width", [(1, 64), (5, 96), (37, 64)])
def test_add_rms_norm_is_the_sum_then_rms_norm(dtype: torch.dtype, rows: int, width: int) -> None:
    """The sum rounded as PyTorch adds; the norm of that sum exactly what rms_norm gives; both
    inputs strided column slices, as a fused projection's views would be."""
    gen = torch.Generator().manual_seed(rows + width)
    x = (3 * torch.randn((rows, width + 32), generator=gen)).to(DEVICE, dtype)[:, 32:]
    residual = torch.randn((rows, 2 * width), generator=gen).to(DEVICE, dtype)[:, :width]
    norm = RMSNorm(width, 1e-5).to(DEVICE, dtype)
    norm.weight.data = (torch.rand(width, generator=gen) + 0.5).to(DEVICE, dtype)
    total, normed = triton_fused.add_rms_norm(x, residual, norm.weight, norm.eps)
    if dtype == torch.float16 or DEVICE.type == "cuda":
        assert torch.equal(total, x + residual)
    else:  # the interpreter's bf16 conversion
        assert torch.allclose(total, x + residual, rtol=steps(dtype), atol=0)
    assert torch.equal(normed, triton_fused.rms_norm(total, norm.weight, norm.eps))
    want = norm(x + residual).float()  # the module's reference
    assert torch.allclose(normed.float(), want, rtol=2 * steps(dtype), atol=2 * steps(dtype))


def test_add_rms_norm_keeps_leading_dims_and_takes_zero_rows() -> None:
    x, residual = torch.randn((2, 3, 64)).to(DEVICE, torch.float16), torch.randn((2, 3, 64)).to(DEVICE, torch.float16)
    w = torch.ones(64, device=DEVICE, dtype=torch.float16)
    total, normed = triton_fused.add_rms_norm(x, residual, w, 1e-6)
    assert total.shape == normed.shape == x.shape
    assert torch.equal(total, x + residual)
    total, normed = triton_fused.add_rms_norm(x[0, :0], residual[0, :0], w, 1e-6)
    assert total.shape == normed.shape == (0, 64)


def _tiny_model(family: dict, dtype: torch.dtype):
    """A random two-layer model of `family`'s config keys on DEVICE, its KV cache, and a mixed step
    (a prefill chunk and a decode token)."""
    from engine.models.registry import model_class, model_config
    from engine.step_batch import SeqChunk, StepBatch

    cfg = model_config(dict(vocab_size=128, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                            rms_norm_eps=1e-5, **family))
    torch.manual_seed(0)
    model = model_class(cfg.family)(cfg).to(DEVICE, dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p, dtype=torch.float32).mul_(0.2) if p.dim() == 2 else 1.0 + 0.1 * torch.rand_like(p))
    kv = torch.zeros((2, 2, 8, 2, 8, 16), dtype=dtype, device=DEVICE)
    batch = StepBatch.build([SeqChunk(tuple(range(5, 17)), 0, (0, 1), 0), SeqChunk((7,), 20, (2, 3, 4), 0)], 8, DEVICE)
    return model, kv, batch


def _counted_kernels(monkeypatch) -> dict[str, int]:
    """The calls of each fused kernel from now on, counted."""
    calls = {"rope_": 0, "rms_norm": 0, "silu_mul": 0, "add_rms_norm": 0}

    def counted(name):
        fn = getattr(triton_fused, name)

        def call(*args):
            calls[name] += 1
            return fn(*args)
        return call

    for name in calls:
        monkeypatch.setattr(triton_fused, name, counted(name))
    return calls


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_with_the_kernels_computes_what_it_computes_without_them(monkeypatch, dtype: torch.dtype) -> None:
    """The wiring: use_triton_kernels swaps every RMSNorm, rotary embedding, SiLU-and-mul and
    post-attention residual add of a Llama; the hidden states of a mixed step stay within a few
    rounding steps of the reference modules' (a few more in bf16 under the interpreter, whose
    conversions truncate); use_reference_kernels swaps them back."""
    from engine.attention.torch_ref import TorchRefBackend

    model, kv, batch = _tiny_model(dict(architectures=["LlamaForCausalLM"], model_type="llama"), dtype)
    calls = _counted_kernels(monkeypatch)
    with torch.no_grad():
        want = model(batch, kv.clone(), TorchRefBackend()).float()
        # per layer: two norms, the attention, the MLP, the residual add; and the final norm
        assert model.use_triton_kernels() == 2 * 5 + 1
        got = model(batch, kv.clone(), TorchRefBackend()).float()
    many = 4 if dtype == torch.float16 or DEVICE.type == "cuda" else 8
    assert (got - want).abs().max() <= many * torch.finfo(dtype).eps * want.abs().max()
    # q and k per layer; the input norms and the final one (the post-attention norms run fused with the add)
    assert calls == {"rope_": 2 * 2, "rms_norm": 2 + 1, "silu_mul": 2, "add_rms_norm": 2}
    model.use_reference_kernels()  # and back: the reference's hidden states exactly, no kernel called
    with torch.no_grad():
        assert torch.equal(model(batch, kv.clone(), TorchRefBackend()).float(), want)
    assert calls == {"rope_": 2 * 2, "rms_norm": 2 + 1, "silu_mul": 2, "add_rms_norm": 2}


def test_the_device_check_passes_for_correct_kernels() -> None:
    """bf16 on a GPU; float16 under the interpreter, whose bf16 conversions truncate: two truncations
    in SiLU-and-mul can reach the check's bound of two rounding steps."""
    from engine.fast_paths import norm_rope_problem

    assert norm_rope_problem(DEVICE, torch.bfloat16 if DEVICE.type == "cuda" else torch.float16, routed=True) is None


def _reference_kernels(monkeypatch) -> None:
    """Every Triton kernel replaced by PyTorch (fast), to test the device check's own logic."""
    def rms(x, w, eps):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    monkeypatch.setattr(triton_fused, "rms_norm", rms)
    monkeypatch.setattr(triton_fused, "rope_", lambda x, cos, sin: apply_rotary((cos, sin), x, x)[0])
    monkeypatch.setattr(triton_fused, "silu_mul", lambda gu: F.silu(gu.chunk(2, -1)[0]) * gu.chunk(2, -1)[1])
    monkeypatch.setattr(triton_fused, "add_rms_norm", lambda x, r, w, eps: (x + r, rms(x + r, w, eps)))


@pytest.mark.parametrize("kernel,broken,named", [
    ("silu_mul", lambda gu: F.silu(gu.chunk(2, -1)[1]) * gu.chunk(2, -1)[0], "SiLU-and-mul"),  # halves swapped
    ("add_rms_norm", lambda x, r, w, eps: (x + r, triton_fused.rms_norm(x, w, eps)), "add+RMSNorm"),  # normed x
    ("add_rms_norm", lambda x, r, w, eps: (x, triton_fused.rms_norm(x + r, w, eps)), "residual add"),
    ("rms_norm", lambda x, w, eps: x * w, "RMSNorm"),
])
def test_the_device_check_names_a_kernel_that_differs(monkeypatch, kernel: str, broken, named: str) -> None:
    from engine.fast_paths import norm_rope_problem

    _reference_kernels(monkeypatch)
    assert norm_rope_problem(DEVICE, torch.bfloat16) is None
    monkeypatch.setattr(triton_fused, kernel, broken)
    problem = norm_rope_problem(DEVICE, torch.bfloat16)
    assert problem is not None and problem.startswith(f"{named} differs from the reference")


def test_the_device_check_names_a_mixture_that_differs(monkeypatch) -> None:
    from engine.fast_paths import norm_rope_problem
    from engine.kernels import triton_moe

    _reference_kernels(monkeypatch)
    real = triton_moe.moe
    swapped = lambda x, weights, *rest: real(x, weights.flip(-1), *rest)  # noqa: E731 - each token's weights swapped
    monkeypatch.setattr(triton_moe, "moe", swapped)
    assert norm_rope_problem(DEVICE, torch.bfloat16) is None  # a dense model never runs the experts' check
    problem = norm_rope_problem(DEVICE, torch.bfloat16, routed=True)
    assert problem is not None and problem.startswith("mixture of experts differs from the reference")


def test_a_model_with_sandwich_norms_takes_the_norm_kernels_but_no_fused_add(monkeypatch) -> None:
    """GLM-4's layers norm each block's output before its residual add: every RMSNorm takes the
    kernel, the residual add stays unfused (the add-then-norm kernel computes another order), its
    half-head GPT-J rotary stays the reference's; the hidden states stay within a few rounding
    steps of the reference modules'."""
    from engine.attention.torch_ref import TorchRefBackend

    dtype = torch.float16
    model, kv, batch = _tiny_model(dict(head_dim=16, partial_rotary_factor=0.5, attention_bias=True,
                                        architectures=["Glm4ForCausalLM"], model_type="glm4"), dtype)
    calls = _counted_kernels(monkeypatch)
    with torch.no_grad():
        want = model(batch, kv.clone(), TorchRefBackend()).float()
        assert model.use_triton_kernels() == 2 * 4 + 1 + 2  # four norms a layer and the final one; the MLPs
        got = model(batch, kv.clone(), TorchRefBackend()).float()
    assert (got - want).abs().max() <= 4 * torch.finfo(dtype).eps * want.abs().max()
    assert calls == {"rope_": 0, "rms_norm": 2 * 4 + 1, "silu_mul": 2, "add_rms_norm": 0}
