"""Training text: the Python standard library of the running interpreter, or jsonl files.

A corpus is a list of documents (one source file each). The stdlib corpus leaves out test
suites and site-packages, and splits train/validation by a hash of each file's path, so the
split is the same on every run and every machine with the same Python version.
"""
from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from typing import Iterable

VALIDATION_PER_MILLE = 20  # ~2% of files
# Any path component with one of these names drops the file (test suites, third-party code).
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# Generated tables and docs that are Python only by extension: they would teach the model little.
EXCLUDED_FILES = frozenset({"pydoc_data/topics.py"})
MAX_FILE_BYTES = 1_000_000
# Character-map codecs (encodings/cp*.py...) are tables written by gencodec.py, ~10% of the bytes.
GENERATED_MARKERS = ("decoding_table = (", "decoding_map = codecs.make_identity_dict")


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
    """Relative posix paths of the stdlib's .py files that the corpus keeps, sorted."""
    root = root or stdlib_root()
    kept = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in filenames:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if _keep(rel, os.path.getsize(os.path.join(root, rel))):
                kept.append(rel)
    return sorted(kept)


def _keep(rel: str, size: int) -> bool:
    parts = rel.split("/")
    if any(p in EXCLUDED_DIRS for p in parts[:-1]) or rel in EXCLUDED_FILES:
        return False
    if parts[-1].startswith("_sysconfigdata"):
        return False
    return 0 < size <= MAX_FILE_BYTES


def is_validation(rel_path: str) -> bool:
    """Deterministic split: a stable hash of the path, never Python's salted hash()."""
    digest = hashlib.sha1(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < VALIDATION_PER_MILLE


def stdlib_corpus(root: str | None = None) -> tuple[list[str], list[str]]:
    """(train, validation) documents of the stdlib, each list in path order."""
    root = root or stdlib_root()
    train, validation = [], []
    for rel in stdlib_files(root):
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        if text.strip() and not any(marker in text for marker in GENERATED_MARKERS):
            (validation if is_validation(rel) else train).append(text)
    return train, validation


def write_jsonl(path: str, documents: Iterable[str]) -> int:
    """Writes one {"code": ...} line per document; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({"code": text}, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str) -> list[str]:
    """The documents of a jsonl file of {"code": ...} lines; a bad line is a ValueError naming it."""
    documents = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{number}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("code"), str):
                raise ValueError(f"{path}:{number}: expected a JSON object with a string 'code' field")
            documents.append(record["code"])
    return documents


def write_stdlib_corpus(directory: str) -> tuple[str, str]:
    """Writes train.jsonl and validation.jsonl of the stdlib corpus under `directory`."""
    os.makedirs(directory, exist_ok=True)
    train, validation = stdlib_corpus()
    paths = os.path.join(directory, "train.jsonl"), os.path.join(directory, "validation.jsonl")
    write_jsonl(paths[0], train)
    write_jsonl(paths[1], validation)
    return paths
