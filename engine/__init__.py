"""fastcodellama's inference engine: paged KV cache, continuous batching, speculative verification."""
from engine.threads import configure_openmp

configure_openmp()  # before torch loads (engine.config imports it): libgomp reads its wait policy once
from engine.config import DEFAULT_MODEL, EngineConfig, ModelConfig
from engine.llm import LLM
from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import CompletionOutput, RequestOutput, SpecStats
from engine.sampling_params import SamplingParams

__all__ = [
    "DEFAULT_MODEL", "EngineConfig", "ModelConfig", "LLM", "LLMEngine", "EngineStats",
    "CompletionOutput", "RequestOutput", "SpecStats", "SamplingParams", "AsyncEngine",
]


def __getattr__(name: str):
    if name == "AsyncEngine":
        from engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
