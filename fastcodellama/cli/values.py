"""Argument types that refuse values that make no sense while the command line is parsed, before
anything loads: `type=positive_int` and so on."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from engine.config import DEVICE


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            name: str = "") -> Callable[[str], float]:
    """A parser of `kind` in [low, high] ((low, high] when low_open)."""
    what = "an integer" if kind is int else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    wanted = f"{what} {' and '.join(bounds)}".strip()

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants {wanted}, got {text!r}") from None
        in_range = math.isfinite(value) and (low is None or (value > low if low_open else value >= low)) and (
            high is None or value <= high)
        if not in_range:
            raise argparse.ArgumentTypeError(f"wants {wanted}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, 1, name="positive_int")
non_negative_int = _number(int, 0, name="non_negative_int")
positive_float = _number(float, 0, low_open=True, name="positive_float")
non_negative_float = _number(float, 0, name="non_negative_float")
probability = _number(float, 0, 1, low_open=True, name="probability")  # (0, 1], like top_p
fraction = _number(float, 0, 1, name="fraction")  # [0, 1]
port = _number(int, 0, 65535, name="port")


def device(text: str) -> str:
    """auto, cpu, cuda or cuda:N, as engine.EngineConfig takes it (whether this machine has it is
    known only once torch loads)."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"wants auto, cpu, cuda or cuda:N, got {text!r}")
    return text
