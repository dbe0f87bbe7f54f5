"""fastcodellama's inference engine: paged KV cache, continuous batching, speculative verification."""
from engine.threads import configure_openmp

configure_openmp()  # before torch loads: libgomp reads its wait policy once
from engine.config import DEFAULT_MODEL, EngineConfig, ModelConfig  # noqa: E402
from engine.outputs import CompletionOutput, RequestOutput, SpecStats  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402

__all__ = [
    "DEFAULT_MODEL", "EngineConfig", "ModelConfig", "LLM", "LLMEngine", "EngineStats",
    "CompletionOutput", "RequestOutput", "SpecStats", "SamplingParams", "AsyncEngine",
]

# Imported when first asked for: they load torch, which the configuration, the outputs and the
# sampling parameters do not (the command line parses and shows --help without it).
_LAZY = {"LLM": ".llm", "LLMEngine": ".llm_engine", "EngineStats": ".llm_engine", "AsyncEngine": ".async_engine"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
