"""fastcodellama: fast sampling from code LLMs with copy-draft speculative decoding.

    from fastcodellama import complete
    print(complete("def fib(n):"))                       # greedy, up to the end of the function
    complete(["def a():", "def b():"], n=10, temperature=0.8)  # a list of 10 samples per prompt

`LLM` is engine.LLM with copy drafting on and code-completion defaults. Both load on first use, so
`import fastcodellama` (and the command line's start) stays light.
"""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("fastcodellama")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["complete", "LLM", "__version__"]


def __getattr__(name: str):
    if name in ("complete", "LLM"):
        from fastcodellama import completion  # not "complete": the module would shadow the function

        return getattr(completion, name)
    raise AttributeError(f"module 'fastcodellama' has no attribute {name!r}")
