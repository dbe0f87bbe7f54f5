"""Builds cpu_kernels.c once per machine (cached by source and compiler flags) and calls it
through ctypes on tensor pointers. Without a C compiler `load()` returns None and the
engine uses the PyTorch references instead."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.kernels.build import compile_once, compiler

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
_P = ctypes.c_void_p
_I = ctypes.c_int64
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")
# Without AVX2/FMA: the portable C paths, built by the tests on this machine too.
PORTABLE_FLAGS = ("-O3", "-march=x86-64", "-mno-avx2", "-mno-fma", "-ffast-math", "-fopenmp", "-shared", "-fPIC")


_F = ctypes.c_float


class AttentionArgs(ctypes.Structure):
    """cpu_kernels.c AttentionArgs, field for field."""

    _fields_ = [("q", _P), ("k_cache", _P), ("v_cache", _P), ("block_tables", _P), ("table_stride", _I),
                ("members", _P), ("group_offsets", _P), ("shared_len", _P), ("num_groups", _I),
                ("cu_seqlens", _P), ("context_lens", _P), ("num_heads", _I), ("num_kv_heads", _I),
                ("head_dim", _I), ("block_size", _I), ("scale", _F), ("out", _P)]


class StackArgs(ctypes.Structure):
    """cpu_kernels.c StackArgs, field for field."""

    _fields_ = [("x", _P), ("tokens", _I), ("hidden", _I), ("intermediate", _I), ("num_layers", _I),
                ("weights", _P), ("eps", _F), ("cos", _P), ("sin", _P), ("kv_caches", _P), ("num_blocks", _I),
                ("slot_mapping", _P), ("block_tables", _P), ("table_stride", _I), ("members", _P),
                ("group_offsets", _P), ("shared_len", _P), ("num_groups", _I), ("cu_seqlens", _P),
                ("context_lens", _P), ("num_heads", _I), ("num_kv_heads", _I), ("head_dim", _I), ("block_size", _I),
                ("scale", _F)]


@functools.cache
def load() -> ctypes.CDLL | None:
    cc = compiler()
    if cc is None:
        if not os.environ.get("FASTCODELLAMA_NO_CPU_KERNELS"):
            log.warning("no C compiler found: CPU kernels disabled, using the PyTorch reference paths")
        return None
    try:
        return build(cc, FLAGS)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building the CPU kernels failed (%s): using the PyTorch reference paths", detail)
        return None


def build(cc: str, flags: tuple[str, ...]) -> ctypes.CDLL:
    """cpu_kernels.c built with these flags (cached), its functions typed for ctypes."""
    lib = ctypes.CDLL(str(compile_once(cc, SOURCE, flags, "cpu_kernels", libs=("-lm",))))
    lib.paged_attention_args.argtypes = [ctypes.POINTER(AttentionArgs)]
    lib.decoder_stack_args.argtypes = [ctypes.POINTER(StackArgs)]
    lib.sample_rows.argtypes = [_P, _I, _I, _P, _P, _P, _P, _P]
    lib.linear_bf16.argtypes = [_P, _I, _I, _P, _I, _P]
    lib.rms_norm.argtypes = [_P, _I, _I, _P, ctypes.c_float, _P]
    for fn in (lib.paged_attention_args, lib.sample_rows, lib.linear_bf16, lib.rms_norm, lib.decoder_stack_args):
        fn.restype = None
    return lib


def available() -> bool:
    return load() is not None


@functools.cache
def build_id() -> str:
    """What the kernels' speed depends on: their source and flags."""
    return "cpu-c-" + hashlib.sha1(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]


def _ptr(t: torch.Tensor, dtype: torch.dtype) -> int:
    if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"CPU kernel wants a contiguous {dtype} CPU tensor, got {t.dtype} {tuple(t.shape)}")
    return t.data_ptr()


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    groups: "SharedGroups", cu_seqlens: torch.Tensor, context_lens: torch.Tensor,
                    out: torch.Tensor) -> None:
    """out[rows of the grouped sequences] = attention of q over each sequence's paged keys, causal
    in its new tokens; the shared prefix of a group is read once for all its members."""
    _, heads, head_dim = q.shape
    _, kv_heads, block_size, _ = k_cache.shape
    f32, i64 = torch.float32, torch.int64
    args = AttentionArgs(
        q=_ptr(q, f32), k_cache=_ptr(k_cache, f32), v_cache=_ptr(v_cache, f32),
        block_tables=_ptr(block_tables, i64), table_stride=block_tables.shape[1], members=_ptr(groups.members, i64),
        group_offsets=_ptr(groups.offsets, i64), shared_len=_ptr(groups.shared_len, i64),
        num_groups=groups.shared_len.shape[0], cu_seqlens=_ptr(cu_seqlens, torch.int32),
        context_lens=_ptr(context_lens, torch.int32), num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        block_size=block_size, scale=head_dim ** -0.5, out=_ptr(out, f32))
    load().paged_attention_args(ctypes.byref(args))


@dataclass(frozen=True)
class SharedGroups:
    """Sequences grouped by a common start of their block tables (siblings sharing a prompt)."""

    members: torch.Tensor  # [S] batch indices, grouped
    offsets: torch.Tensor  # [G + 1] group g is members[offsets[g]:offsets[g + 1]]
    shared_len: torch.Tensor  # [G] positions whose cache blocks all members share

    @classmethod
    def build(cls, seqs: torch.Tensor | None, block_tables: torch.Tensor, context_lens: torch.Tensor,
              block_size: int) -> "SharedGroups":
        """Groups of the batch indices `seqs` (None: every sequence of the batch)."""
        if seqs is None:
            seqs = torch.arange(block_tables.shape[0])
            firsts = block_tables[:, 0].tolist()
            lens = context_lens
        else:
            firsts = block_tables[seqs, 0].tolist()
            lens = context_lens[seqs]
        if len(set(firsts)) == len(firsts):  # no shared first block: groups of one (most steps; cheap)
            return cls(seqs.contiguous(), torch.arange(len(firsts) + 1), lens.to(torch.int64))
        tables = block_tables[seqs]
        first = tables[:, 0]
        order = torch.argsort(first, stable=True)
        seqs, tables, first = seqs[order], tables[order], first[order]
        _, counts = torch.unique_consecutive(first, return_counts=True)
        offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        group_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
        leader = tables[offsets[:-1]][group_of]  # each member's group leader's table
        common = torch.cumprod((tables == leader).to(torch.int64), dim=1).sum(dim=1) * block_size
        common = torch.minimum(common, context_lens[seqs].to(torch.int64))
        shared = torch.full((len(counts),), 1 << 62, dtype=torch.int64).scatter_reduce(0, group_of, common, "amin")
        return cls(seqs.contiguous(), offsets, shared)


def sample_rows(x: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                seeds: torch.Tensor) -> torch.Tensor:
    """Temperature, top-k, top-p and the hashed exponential race, per row of x [R, V]."""
    x = x.float().contiguous()
    tokens = torch.empty(x.shape[0], dtype=torch.int64)
    load().sample_rows(_ptr(x, torch.float32), x.shape[0], x.shape[1], _ptr(temperature, torch.float32),
                       _ptr(top_k, torch.int64), _ptr(top_p, torch.float64), _ptr(seeds, torch.int64),
                       tokens.data_ptr())
    return tokens


LIN_NR = 16  # columns per packed tile (cpu_kernels.c)


# Slot order within a tile's 16 values of one k: columns 0, 8, 1, 9, ... (cpu_kernels.c lin_slot).
_TILE_ORDER = [j for pair in zip(range(8), range(8, 16)) for j in pair]


def pack_bf16(weight: torch.Tensor) -> torch.Tensor:
    """W [N, K] as linear_bf16 reads it: bf16 column tiles of 16, k-major, [ceil(N / 16), K, 16],
    zero padded, columns j and j + 8 interleaved within a tile."""
    n, k = weight.shape
    if k % 4:
        raise ValueError(f"linear_bf16 wants K a multiple of 4, got {tuple(weight.shape)}")
    tiles = -(-n // LIN_NR)
    padded = torch.zeros((tiles * LIN_NR, k), dtype=torch.bfloat16)
    padded[:n] = weight
    tiled = padded.view(tiles, LIN_NR, k)[:, _TILE_ORDER]
    return tiled.transpose(1, 2).contiguous()


def linear_bf16(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    """x [M, K] float32 @ W.T in float32, W [n, K] given as pack_bf16(W); meant for few rows."""
    m, k = x.shape
    if packed.shape != (-(-n // LIN_NR), k, LIN_NR):
        raise ValueError(f"linear_bf16: x {tuple(x.shape)} does not fit packed weights {tuple(packed.shape)} "
                         f"of {n} rows")
    out = torch.empty((m, n), dtype=torch.float32)
    load().linear_bf16(_ptr(x, torch.float32), m, k, _ptr(packed, torch.bfloat16), n, out.data_ptr())
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """torch.nn.functional.rms_norm over the last dimension of a float32 [rows, dim] tensor."""
    x = x.contiguous()
    out = torch.empty_like(x)
    load().rms_norm(_ptr(x, torch.float32), x.shape[0], x.shape[1], _ptr(weight, torch.float32), eps, out.data_ptr())
    return out


def decoder_stack(x: torch.Tensor, intermediate: int, weights: torch.Tensor, eps: float, cos: torch.Tensor,
                  sin: torch.Tensor, kv_caches: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                  groups: SharedGroups, cu_seqlens: torch.Tensor, context_lens: torch.Tensor,
                  num_heads: int) -> None:
    """Runs every decoder layer on x [T, H] in place (see decoder_stack in cpu_kernels.c): `weights`
    holds six data pointers per layer, kv_caches is [L, 2, blocks, kv_heads, block_size, head_dim]."""
    tokens, hidden = x.shape
    layers, _, num_blocks, kv_heads, block_size, head_dim = kv_caches.shape
    f32, i64 = torch.float32, torch.int64
    args = StackArgs(
        x=_ptr(x, f32), tokens=tokens, hidden=hidden, intermediate=intermediate, num_layers=layers,
        weights=_ptr(weights, i64), eps=eps, cos=_ptr(cos, f32), sin=_ptr(sin, f32), kv_caches=_ptr(kv_caches, f32),
        num_blocks=num_blocks, slot_mapping=_ptr(slot_mapping, i64), block_tables=_ptr(block_tables, i64),
        table_stride=block_tables.shape[1], members=_ptr(groups.members, i64), group_offsets=_ptr(groups.offsets, i64),
        shared_len=_ptr(groups.shared_len, i64), num_groups=groups.shared_len.shape[0],
        cu_seqlens=_ptr(cu_seqlens, torch.int32), context_lens=_ptr(context_lens, torch.int32), num_heads=num_heads,
        num_kv_heads=kv_heads, head_dim=head_dim, block_size=block_size, scale=head_dim ** -0.5)
    load().decoder_stack_args(ctypes.byref(args))
