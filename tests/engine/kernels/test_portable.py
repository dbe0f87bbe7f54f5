"""The C kernels built without AVX2/FMA (the scalar paths other CPUs take) against the same
references as the native build: the tests of test_cpu.py and test_cpu_stack.py, run again with
kernels.load() returning the portable library."""
from __future__ import annotations

import pytest

from engine.kernels import cpu as kernels
from engine.kernels.build import compiler
from tests.engine.kernels import test_cpu
from tests.engine.models import test_cpu_stack

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler: CPU kernels not built")


@pytest.fixture
def portable(monkeypatch):
    lib = kernels.build(compiler(), kernels.PORTABLE_FLAGS)
    assert lib._name != kernels.load()._name  # another build, not the native one
    monkeypatch.setattr(kernels, "load", lambda: lib)
    return lib


@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", [(4, 2, 64, 16), (8, 1, 16, 32)])
def test_portable_paged_attention(portable, heads, kv_heads, head_dim, block_size):
    test_cpu.test_paged_attention_kernel_equals_reference(heads, kv_heads, head_dim, block_size)


def test_portable_sampling(portable):
    test_cpu.test_sampling_kernel_equals_reference()


@pytest.mark.parametrize("rows,n,k", [(1, 512, 256), (7, 33, 20), (17, 1536, 256), (13, 16, 4)])
def test_portable_linear(portable, rows, n, k):
    test_cpu.test_linear_bf16_kernel_equals_reference(rows, n, k)


def test_portable_rms_norm(portable):
    test_cpu.test_rms_norm_kernel_equals_reference(3, 64)


def test_portable_decoder_stack(portable, tmp_path):
    test_cpu_stack.test_stack_equals_the_modules(tmp_path, {})
