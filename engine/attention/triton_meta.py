"""Per-step metadata of the Triton attention backend: work lists and shared-prefix groups as
device tensors of fixed capacity, built with a few vectorized ops and no read-back.

For CUDA graphs, what must stay static across replays of one captured bucket:
- the launch config (`LaunchConfig`: grids, tile shapes, splits, cascade on or off) and the
  backend's constants (sliding window, key tile, max rows);
- the shapes of every tensor here, which depend only on the batch's padded sizes (sequences B,
  rows T, block table width) and the launch config: pad a step to its bucket (sequences of no
  new tokens, rows with slot -1 after the last sequence's, tables to the bucket's width);
- the tensors themselves: with an explicit launch config `backend.prepare(padded_batch, launch)`
  reads nothing back (nor does the backend's automatic choice of the cascade) and only
  reads the batch's device tensors, so a graph captures it with the forward (engine/cuda_graphs.py);
  where that capture fails, each step's metadata is built outside the graph and `copy_to` the
  static metadata the graph was captured with.
The kernels read every per-step value from these tensors, so nothing else is needed.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from engine.step_batch import StepBatch


@dataclass(frozen=True)
class LaunchConfig:
    """Host-side launch parameters: fixed per captured graph (they set grids and tile shapes)."""

    query_tile: int  # new tokens of one sequence per attention program
    prefix_tile: int  # tokens of one shared-prefix group per prefix program
    num_splits: int  # programs per context (split-K); 1 disables splitting
    cascade: bool  # read each group's shared prefix once (prefix kernel + merge)

    @property
    def direct(self) -> bool:
        """One program sees all keys of its rows: it writes the output, no partials to merge."""
        return self.num_splits == 1 and not self.cascade


@dataclass(frozen=True)
class TritonMeta:
    """Device tensors (int32 unless noted) of one step; capacities in brackets."""

    launch: LaunchConfig
    slot_mapping: torch.Tensor  # [T] int64, -1: padding row, not written
    positions: torch.Tensor  # [T] position of each new token
    cu_seqlens: torch.Tensor  # [B + 1] first row of each sequence
    context_lens: torch.Tensor  # [B]
    block_tables: torch.Tensor  # [B, max_blocks] int64
    own_start: torch.Tensor  # [B] first position a sequence reads itself (after its group's prefix)
    tile_seq: torch.Tensor  # [T // query_tile + B] sequence of each attention tile, -1: unused tile
    tile_q0: torch.Tensor  # [same] first new token (within the sequence) of the tile
    prefix_leader: torch.Tensor  # [max(1, T // prefix_tile + B // 2)] sequence whose block table the tile reads
    prefix_len: torch.Tensor  # [same] shared positions of the tile's group, 0: unused tile
    prefix_start: torch.Tensor  # [same] first entry of the tile in group_tokens
    prefix_count: torch.Tensor  # [same] tokens of the tile
    group_tokens: torch.Tensor  # [T] rows of the grouped sequences, group after group

    def copy_to(self, static: TritonMeta) -> None:
        """Copies this step's metadata into `static` (same launch config and capacities)."""
        if static.launch != self.launch:
            raise ValueError(f"launch config differs: {self.launch} vs static {static.launch}")
        for f in fields(self):
            if f.name == "launch":
                continue
            src, dst = getattr(self, f.name), getattr(static, f.name)
            if src.shape != dst.shape:
                raise ValueError(f"{f.name}: shape {tuple(src.shape)} does not fit static {tuple(dst.shape)}")
            dst.copy_(src, non_blocking=True)


@dataclass(frozen=True)
class Groups:
    """Sequences grouped by their first cache block; a group of two or more shares `prefix`
    positions (identical block ids), which the prefix kernel reads once for all members."""

    group_of: torch.Tensor  # [B] int64 group id of each sequence
    leader: torch.Tensor  # [B] int64 first member of each group id (unused ids: any sequence)
    prefix: torch.Tensor  # [B] int64 shared positions per group id, 0 for groups of one


def _cdiv(a: torch.Tensor, b: int) -> torch.Tensor:
    return (a + b - 1) // b


def shared_groups(block_tables: torch.Tensor, context_lens: torch.Tensor, query_lens: torch.Tensor,
                  block_size: int) -> Groups:
    """Like kernels.cpu.SharedGroups.build, with fixed-size outputs and no read-back."""
    num_seqs = block_tables.shape[0]
    device = block_tables.device
    idx = torch.arange(num_seqs, device=device)
    active = (query_lens > 0) & (context_lens > 0)
    # Padding sequences (and their 0-padded tables) get keys of their own: groups of one.
    key = torch.where(active, block_tables[:, 0], -1 - idx)
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    new_group = torch.ones(num_seqs, dtype=torch.int64, device=device)
    new_group[1:] = (sorted_key[1:] != sorted_key[:-1]).to(torch.int64)
    gid_sorted = torch.cumsum(new_group, 0) - 1
    group_of = torch.empty_like(gid_sorted).scatter_(0, order, gid_sorted)
    first_sorted = torch.full((num_seqs,), num_seqs - 1, dtype=torch.int64, device=device)
    first_sorted = first_sorted.scatter_reduce(0, gid_sorted, idx, "amin")
    leader = order[first_sorted]
    same_block = block_tables == block_tables[leader[group_of]]
    same = torch.cumprod(same_block.to(torch.int64), dim=1).sum(dim=1) * block_size
    common = torch.minimum(same, context_lens.to(torch.int64))
    prefix = torch.full((num_seqs,), 1 << 62, dtype=torch.int64, device=device)
    prefix = prefix.scatter_reduce(0, group_of, common, "amin")
    size = torch.zeros(num_seqs, dtype=torch.int64, device=device).scatter_add_(0, group_of, torch.ones_like(idx))
    prefix = torch.where(size >= 2, prefix, torch.zeros_like(prefix))
    return Groups(group_of, leader, prefix)


def _tiles(counts: torch.Tensor, tile: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits `counts[i]` items of owner i into tiles of `tile`: per tile slot of `capacity`,
    (owner or len(counts) when unused, first item within the owner, items)."""
    per_owner = _cdiv(counts, tile)
    ends = torch.cumsum(per_owner, 0)
    u = torch.arange(capacity, device=counts.device)
    owner = torch.searchsorted(ends, u, right=True)
    safe = owner.clamp(max=counts.shape[0] - 1)
    first = (u - (ends[safe] - per_owner[safe])) * tile
    used = owner < counts.shape[0]
    items = torch.where(used, torch.minimum(counts[safe] - first, torch.full_like(first, tile)), 0)
    return owner, first, items


@dataclass(frozen=True)
class _PrefixWork:
    own_start: torch.Tensor
    leader: torch.Tensor
    prefix_len: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor
    group_tokens: torch.Tensor


def _prefix_work(cu: torch.Tensor, groups: Groups, num_tokens: int, tile: int, capacity: int) -> _PrefixWork:
    """Rows of the sequences of each sharing group, gathered group after group, and the prefix
    kernel's tiles over them (a tile never spans two groups)."""
    num_seqs = cu.shape[0] - 1
    device = cu.device
    seq_of_row = torch.searchsorted(cu[1:], torch.arange(num_tokens, device=device), right=True)
    row_group = groups.group_of[seq_of_row.clamp(max=num_seqs - 1)]
    shared_row = (seq_of_row < num_seqs) & (groups.prefix[row_group] > 0)  # padding rows: past every sequence
    row_key = torch.where(shared_row, row_group, num_seqs)
    group_tokens = torch.argsort(row_key, stable=True)  # stable: rows of a group stay in order
    counts = torch.zeros(num_seqs + 1, dtype=torch.int64, device=device).scatter_add_(
        0, row_key, torch.ones_like(row_key))[:num_seqs]
    starts = torch.cumsum(counts, 0) - counts
    g, first, items = _tiles(counts, tile, capacity)
    used = g < num_seqs
    g = g.clamp(max=num_seqs - 1)
    return _PrefixWork(own_start=groups.prefix[groups.group_of], leader=torch.where(used, groups.leader[g], 0),
                       prefix_len=torch.where(used, groups.prefix[g], 0), start=torch.where(used, starts[g] + first, 0),
                       count=items, group_tokens=group_tokens)


def _no_prefix_work(num_seqs: int, num_tokens: int, capacity: int, device: torch.device) -> _PrefixWork:
    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.int64, device=device)

    return _PrefixWork(zeros(num_seqs), zeros(capacity), zeros(capacity), zeros(capacity), zeros(capacity),
                       zeros(num_tokens))


def build(batch: StepBatch, launch: LaunchConfig, groups: Groups | None = None) -> TritonMeta:
    """The step's metadata; `groups` (from shared_groups) is needed when launch.cascade."""
    num_seqs, num_tokens = batch.num_seqs, batch.num_tokens
    cu = batch.cu_seqlens_q.to(torch.int64)
    owner, q0, _ = _tiles(cu[1:] - cu[:-1], launch.query_tile, num_tokens // launch.query_tile + num_seqs)
    # Sharing groups have two members or more: at most num_seqs // 2 of them.
    capacity = max(1, num_tokens // launch.prefix_tile + num_seqs // 2)
    if launch.cascade:
        if groups is None:
            raise ValueError("a cascade launch needs the step's shared groups")
        work = _prefix_work(cu, groups, num_tokens, launch.prefix_tile, capacity)
    else:
        work = _no_prefix_work(num_seqs, num_tokens, capacity, cu.device)
    i32 = torch.int32
    return TritonMeta(
        launch=launch,
        slot_mapping=batch.slot_mapping,
        positions=batch.positions.to(i32),
        cu_seqlens=batch.cu_seqlens_q.to(i32),
        context_lens=batch.context_lens_t.to(i32),
        block_tables=batch.block_tables,
        own_start=work.own_start.to(i32),
        tile_seq=torch.where(owner < num_seqs, owner, -1).to(i32),
        tile_q0=q0.to(i32),
        prefix_leader=work.leader.to(i32),
        prefix_len=work.prefix_len.to(i32),
        prefix_start=work.start.to(i32),
        prefix_count=work.count.to(i32),
        group_tokens=work.group_tokens.to(i32),
    )
