"""How many bytes the paged KV cache gets. Given (`kv_cache_memory_gb`), that many. On a GPU
otherwise, what is left of the engine's share of the device's memory (`gpu_memory_utilization` of
it) once the weights are on it, less room for a step's activations, the sampler and the CUDA
graphs' pools: a 7B model on an 80 GB card then holds tens of thousands of tokens, where a fixed
few gigabytes would hold a dozen sequences of a pass@10 job and preempt the rest. On the CPU,
CPU_DEFAULT_GB (the cache is host memory, shared with the machine's other work)."""
from __future__ import annotations

from engine.config import EngineConfig, ModelConfig

CPU_DEFAULT_GB = 2.0
# Held back on a GPU beside a step's activations: the graphs' memory pools, the allocator's
# fragmentation, the CUDA context's own growth.
MARGIN_BYTES = 1 << 30


def kv_cache_bytes(config: EngineConfig, mc: ModelConfig, dtype_bytes: int,
                   gpu_memory: tuple[int, int] | None) -> int:
    """`gpu_memory`: the GPU's (free, total) bytes with the weights on it; None on the CPU."""
    if config.kv_cache_memory_gb is not None:
        return int(config.kv_cache_memory_gb * 2**30)
    if gpu_memory is None:
        return int(CPU_DEFAULT_GB * 2**30)
    free, total = gpu_memory
    reserve = activation_bytes(mc, config.max_num_batched_tokens, dtype_bytes) + MARGIN_BYTES
    budget = int(config.gpu_memory_utilization * total) - (total - free) - reserve
    if budget <= 0:
        gib = 2.0**30
        raise ValueError(
            f"no GPU memory is left for the KV cache: {config.gpu_memory_utilization:.2f} of {total / gib:.1f} GiB "
            f"less {(total - free) / gib:.1f} GiB in use (the weights, other processes) and {reserve / gib:.1f} GiB "
            "for a step's activations; raise --gpu-memory-utilization, lower --max-num-batched-tokens, or give "
            "--kv-cache-memory-gb")
    return budget


def activation_bytes(mc: ModelConfig, rows: int, dtype_bytes: int) -> int:
    """A step's transient memory at `rows` rows, counted generously: a layer's hidden states,
    attention projections and widest MLP product, and the logits in float32 with a copy of them
    for the sampler."""
    mlp = max(mc.intermediate_size, mc.moe_intermediate_size * max(1, mc.experts_per_token))
    attention = (mc.num_heads + 2 * mc.num_kv_heads) * mc.head_dim
    per_row = dtype_bytes * (4 * mc.hidden_size + attention + 3 * mlp) + 2 * 4 * mc.vocab_size
    return rows * per_row
