"""What every part of the GPU suite shares: the model shapes, random weights made on the device,
the device's copy bandwidth, engines over a given model, and a proposer that always drafts."""
from __future__ import annotations

import gc
import time

import torch

from engine import DEFAULT_MODEL, EngineConfig
from engine.config import ModelConfig
from engine.llm_engine import LLMEngine
from engine.models.registry import model_class, model_config
from engine.proposer import Draft
from engine.tokenizer import Tokenizer

SHAPES = {  # Hugging Face config.json fields
    "7b": dict(vocab_size=32016, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=16384,
               rms_norm_eps=1e-5, rope_theta=1_000_000.0, tie_word_embeddings=False),
    "tiny": dict(vocab_size=32016, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=1_000_000.0, tie_word_embeddings=False),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy, counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    seconds = time.perf_counter() - start
    return 2 * nbytes * repeats / seconds


def shape_config(shape: str) -> ModelConfig:
    return model_config(dict(SHAPES[shape], architectures=["LlamaForCausalLM"], model_type="llama"))


def random_model(shape: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The engine's Llama in `shape` with random weights, made and filled on the device (filling
    7B weights on the host takes minutes)."""
    cfg = shape_config(shape)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype: no float32 copy of the weights
    try:
        with torch.device(device):
            model = model_class(cfg.family)(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.rebuild_after_meta()
    randomize(model, device)
    return model


def randomize(model: torch.nn.Module, device: torch.device, seed: int = 0) -> None:
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32).mul_(0.02))
            else:
                p.fill_(1.0)  # norms


def engine_for(model: torch.nn.Module, device: str, dtype: str, max_seqs: int, batched_tokens: int,
               max_model_len: int, kv_cache_gb: float, proposer=None, **options) -> LLMEngine:
    """An engine over `model`; the embedded model's tokenizer only turns ids into text. Its CUDA
    graphs are all captured at start-up unless `options` say otherwise: no timed step captures."""
    options = {"cuda_graph_capture": "start-up", **options}
    config = EngineConfig(model=DEFAULT_MODEL, dtype=dtype, device=device, max_num_seqs=max_seqs,
                          max_num_batched_tokens=max(batched_tokens, max_seqs), kv_cache_memory_gb=kv_cache_gb,
                          max_model_len=max_model_len, **options)
    return LLMEngine(config, proposer=proposer, model=model, tokenizer=Tokenizer(DEFAULT_MODEL))


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, min(vocab, 8000), (n, length), generator=gen).tolist()


class AlwaysDrafts:
    """Drafts k tokens for every sequence every step (the engine's Proposer protocol): what a
    verify step costs, not how often drafts are accepted."""

    def __init__(self, k: int, token: int = 13) -> None:
        self.k, self.token = k, token

    def add_sequence(self, seq_id, group_id, prompt_token_ids, prediction=(), output=None) -> None:
        pass

    def extend(self, seq_id, token_ids) -> None:
        pass

    def record(self, seq_id, draft, num_accepted) -> None:
        pass

    def finish(self, seq_id, aborted=False) -> None:
        pass

    def propose(self, queries, budget, cost) -> list[Draft]:
        drafts = []
        for q in queries:
            n = max(0, min(self.k, q.max_len, budget))
            budget -= n
            drafts.append(Draft((self.token,) * n))
        return drafts
