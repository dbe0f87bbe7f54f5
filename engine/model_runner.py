"""Owns the model weights and the paged KV cache; runs one packed forward per step."""
from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
import platform

import torch

from engine import fast_paths
from engine.attention import get_backend
from engine.config import EngineConfig, ModelConfig
from engine.kernels import cpu as cpu_kernels
from engine.kv_budget import kv_cache_bytes
from engine.loader import iter_checkpoint_tensors
from engine.models.llama import LlamaForCausalLM
from engine.models.registry import model_class
from engine.scheduler import SchedulerOutput
from engine.cuda_graphs import StepGraphs
from engine.static_step import StaticStep
from engine.step_batch import Feed, SeqChunk, Shift, StepBatch
from engine.step_cost import CostKey


log = logging.getLogger("engine")


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, model: LlamaForCausalLM | None = None) -> None:
        self.config = config
        self.model_config = model_config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.device = config.torch_device()
        self.dtype = config.torch_dtype()
        if model is None:
            model = load_model(config.model, model_config, self.dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.paths = fast_paths.choose(config, self.device, self.dtype, model_config.sliding_window,
                                       routed=model_config.num_experts > 0, head_dim=model_config.head_dim,
                                       heads=(model_config.num_heads, model_config.num_kv_heads))
        packed = self.model.pack_for_cpu() if self.paths.cpu_kernels else 0
        if self.paths.triton_norm_rope:
            self.model.use_triton_kernels()
        fast_paths.report(self.paths, packed, self.model.cpu_stack is not None)
        self.backend = get_backend(self.paths.attention, self.device.type, model_config.backend_window,
                                   model_config.head_dim)
        self.num_blocks = config.num_kv_blocks or self._blocks_for_memory()
        mc = model_config
        # One block more than the scheduler hands out: padding rows of static steps write there.
        shape = (mc.num_layers, self._planes(), self.num_blocks + 1, mc.num_kv_heads, config.block_size, mc.head_dim)
        self.kv_planes = zeroed(shape, self.dtype, self.device)
        # [layers, 2 (keys, values), ...] whatever the planes: one plane is seen as both.
        self.kv_caches = self.kv_planes.expand(shape[0], 2, *shape[2:])
        self.graphs = self._graphs() if self.paths.cuda_graphs else None

    def _graphs(self) -> StepGraphs | None:
        """The captured graphs; None, with the reason in the fast paths and the log, where capture
        fails: every step then runs eagerly, as without graphs."""
        try:
            return self._capture()
        except Exception as e:  # noqa: BLE001 - a model whose step cannot be captured still runs
            problem = f"CUDA graphs off (capture failed: {type(e).__name__}: {e})"
            log.warning("%s", problem)
            self.paths = dataclasses.replace(self.paths, cuda_graphs=False, notes=(*self.paths.notes, problem))
            return None

    def _capture(self) -> StepGraphs:
        config, mc = self.config, self.model_config
        max_len = config.max_model_len or mc.max_position_embeddings
        static = StaticStep(config.max_num_seqs, min(config.max_num_batched_tokens, config.cuda_graph_max_rows),
                            -(-max_len // config.block_size), config.block_size, self.num_blocks, mc.vocab_size,
                            self.device)
        graphs = StepGraphs(self.model, self.kv_caches, self.backend, static, capture=True,
                            first_use=config.cuda_graph_capture == "first-use")
        graphs.capture_all()
        return graphs

    @property
    def step_captured(self) -> bool:
        """Whether the last step captured a graph first (its time is no step's cost)."""
        return self.graphs is not None and self.graphs.captured_now

    def cost_key(self) -> CostKey:
        """What this runner's step costs depend on besides a step's shape (engine/step_cost.py)."""
        kernels = cpu_kernels.build_id() if self.device.type == "cpu" and cpu_kernels.available() else "none"
        model = f"{type(self.model).__name__}:{os.path.realpath(self.config.model)}"
        return CostKey(model, device_name(self.device), str(self.dtype), torch.get_num_threads(), self.backend.name,
                       kernels, self.paths.overlap)

    def _planes(self) -> int:
        """Cache planes: keys and values, or one for latent attention, whose cached row is both
        the key and the value of every head (engine/models/mla.py)."""
        return 1 if self.model_config.latent_attention is not None else 2

    def _blocks_for_memory(self) -> int:
        """The blocks engine/kv_budget.py's bytes hold; said in the log (a GPU's share is measured)."""
        mc = self.model_config
        element = torch.tensor([], dtype=self.dtype).element_size()
        per_block = self._planes() * mc.num_layers * self.config.block_size * mc.num_kv_heads * mc.head_dim * element
        gpu = torch.cuda.mem_get_info(self.device) if self.device.type == "cuda" else None
        blocks = max(1, kv_cache_bytes(self.config, mc, element, gpu) // per_block)
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB)%s", blocks, self.config.block_size,
                 blocks * per_block / 2**30, "" if self.config.kv_cache_memory_gb is not None or gpu is None else
                 f", what {self.config.gpu_memory_utilization:.2f} of the GPU's memory leaves")
        return blocks

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, feed: Feed | None = None, shift: Shift | None = None) -> torch.Tensor:
        """Runs the step's forward; returns float32 logits of the rows that need them, in order.
        `feed`: token ids on the device in place of some scheduled ones, `shift`: sequences whose
        rows the device moves (a step queued behind the one that samples those tokens and accepts
        its drafts: engine/llm_engine.py's overlap)."""
        for src, dst in out.block_copies:
            self.kv_planes[:, :, dst].copy_(self.kv_planes[:, :, src])
        chunks = self.chunks(out)
        if self.graphs is not None:
            logits = self.graphs.run(chunks, feed, shift)
            if logits is not None:
                return logits
        batch = StepBatch.build(chunks, self.config.block_size, self.device)
        if feed is not None:  # the sequences fed the previous step's tokens
            feed.into(batch.input_ids)
        if shift is not None:
            batch = shift.apply(batch, self.backend.host_lengths)
        hidden = self.model(batch, self.kv_caches, self.backend)
        return self.model.compute_logits(hidden)

    @staticmethod
    def chunks(out: SchedulerOutput) -> list[SeqChunk]:
        """What each scheduled sequence feeds, and from which of its rows logits are needed (the
        sequences' own lists, not copies: nothing changes them while the step is built)."""
        # tuple.__new__ skips the NamedTuple's own __new__ (a Python function): a chunk per sequence per step.
        return [_new_tuple(SeqChunk, (s.token_ids, s.start, s.seq.block_table,
                                      s.num_real - 1 if s.samples else len(s.token_ids))) for s in out.scheduled]


_new_tuple = tuple.__new__


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of zeros (a masked key or value must hold a finite number). On the CPU it lives in
    anonymous memory that the kernel zero-fills page by page on first touch: start-up writes
    nothing, and the process grows as blocks are first handed out, not by the cache's capacity."""
    if device.type != "cpu" or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    memory = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(memory, dtype=dtype, count=math.prod(shape)).view(shape)  # the tensor keeps it alive


def load_model(path: str, model_config: ModelConfig, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model class (engine/models/registry.py) with its weights; every family's
    class is an engine.models.decoder.DecoderForCausalLM, LlamaForCausalLM's interface."""
    with torch.device("meta"):
        model = model_class(model_config.family)(model_config)
    _allocate(model, dtype)
    model.rebuild_after_meta()
    model.load_hf_weights(iter_checkpoint_tensors(path))
    return model.to(device)


def _allocate(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Uninitialized CPU storage for every parameter and buffer of a model built on the meta
    device, floating-point ones in `dtype`: what `to_empty(device="cpu").to(dtype)` gives, without
    an fp32 copy to convert, nor its trip through torch's meta decompositions, which import sympy
    (most of a second of every start). Tied weights come apart here: rebuild_after_meta re-ties them."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                data = torch.empty(p.shape, dtype=dtype if p.is_floating_point() else p.dtype)
                module._parameters[name] = torch.nn.Parameter(data, requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=dtype if b.is_floating_point() else b.dtype)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor() or platform.machine()
