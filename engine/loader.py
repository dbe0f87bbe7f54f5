"""Reads a Hugging Face checkpoint folder: its tensors shard by shard, and its small JSON files."""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator

import torch


def iter_checkpoint_tensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) from *.safetensors (sharded or not) or pytorch_model*.bin."""
    files = _checkpoint_files(path)
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin in {path!r}")
    for file in files:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            yield from state.items()
            del state


def _checkpoint_files(path: str) -> list[str]:
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(path, s) for s in shards]
        files = sorted(glob.glob(os.path.join(path, pattern)))
        if files:
            return files
    return []


def read_folder_json(path: str, name: str) -> dict | None:
    """The folder's JSON file `name` (config.json, generation_config.json, ...), None if absent."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def hf_token_ids(value: object) -> tuple[int, ...]:
    """A config's token id field (an id, a list of ids, or null) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)
