"""Where the engine keeps what it builds and learns on a machine: $FASTCODELLAMA_CACHE, else
$XDG_CACHE_HOME/fastcodellama or ~/.cache/fastcodellama."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("FASTCODELLAMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastcodellama")
    return Path(root)


def step_cost_dir() -> str | None:
    """Where learned step costs are kept; $FASTCODELLAMA_STEP_COST_DIR overrides it, and set
    empty it turns keeping them off (the tests do, so that no test learns from another)."""
    override = os.environ.get("FASTCODELLAMA_STEP_COST_DIR")
    if override is not None:
        return override or None
    return str(cache_root() / "step_cost")
