"""Further inputs for a function, made from known ones by type-aware mutation, deterministic for a seed.

Each new input mutates one argument of a known input (or swaps in the same argument of another
known input). Mutations keep a value's kind and rough shape, so that an input stays within what
the function is meant to accept: numbers keep their sign and stay small, strings keep their
alphabet and character classes (a digit becomes another digit, an upper-case letter another
upper-case letter), lists gain, lose, repeat, reorder or mutate elements of the kinds they hold.
"""
from __future__ import annotations

import random
import string
from collections.abc import Sequence

_MAX_LEN = 24  # longest string or list a mutation grows


def mutate_inputs(known: Sequence[tuple], count: int, seed: int, salt: str = "") -> list[tuple]:
    """Up to `count` new argument tuples, none equal to a known one or to each other."""
    rng = random.Random(f"{seed}:{salt}")
    seen = {_key(k) for k in known}
    found: list[tuple] = []
    for _ in range(count * 20):
        if len(found) >= count or not known:
            break
        candidate = _mutate_call(rng, known)
        key = _key(candidate)
        if key not in seen:
            seen.add(key)
            found.append(candidate)
    return found


def _key(args: tuple) -> str:
    return repr(args)


def _mutate_call(rng: random.Random, known: Sequence[tuple]) -> tuple:
    args = list(rng.choice(known))
    if not args:
        return tuple(args)
    position = rng.randrange(len(args))
    donors = [k[position] for k in known if len(k) == len(args) and _same_kind(k[position], args[position])]
    if len(donors) > 1 and rng.random() < 0.15:
        args[position] = rng.choice(donors)
    else:
        args[position] = mutate_value(rng, args[position])
    return tuple(args)


def _same_kind(a: object, b: object) -> bool:
    return type(a) is type(b)


def mutate_value(rng: random.Random, value: object) -> object:
    """A value of the same type as `value`, changed a little."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return _mutate_int(rng, value)
    if isinstance(value, float):
        return _mutate_float(rng, value)
    if isinstance(value, str):
        return _mutate_str(rng, value)
    if isinstance(value, list):
        return _mutate_list(rng, value)
    if isinstance(value, tuple):
        return tuple(_mutate_list(rng, list(value), keep_length=True))
    if isinstance(value, dict):
        return _mutate_dict(rng, value)
    return value


def _mutate_int(rng: random.Random, value: int) -> int:
    choices = [value + 1, value - 1, value + rng.randint(2, 9), value * 2, value // 2, rng.randint(0, 20)]
    if value < 0:
        choices += [-rng.randint(0, 20), value - rng.randint(2, 9)]
    result = rng.choice(choices)
    return result if value < 0 or result >= 0 else -result


def _mutate_float(rng: random.Random, value: float) -> float:
    result = round(value + rng.choice([-1, 1]) * rng.uniform(0.1, 3.0), 2)
    return result if value < 0 or result >= 0 else -result


def _similar_char(rng: random.Random, char: str, alphabet: str) -> str:
    """Another character of the same class, preferring ones the string already uses."""
    for pool in (string.digits, string.ascii_lowercase, string.ascii_uppercase):
        if char in pool:
            own = [c for c in alphabet if c in pool and c != char]
            return rng.choice(own) if own and rng.random() < 0.5 else rng.choice(pool)
    return char


def _mutate_str(rng: random.Random, value: str) -> str:
    if not value:
        return rng.choice(string.ascii_lowercase)
    i = rng.randrange(len(value))
    operation = rng.randrange(6)
    if operation == 0:
        return value[:i] + value[i + 1:]
    if operation == 1 and len(value) < _MAX_LEN:
        return value[:i] + value[i] + value[i:]
    if operation == 2:
        j = rng.randrange(len(value))
        chars = list(value)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if operation == 3:
        return value[::-1]
    if operation == 4 and value[i].isalpha():
        return value[:i] + value[i].swapcase() + value[i + 1:]
    return value[:i] + _similar_char(rng, value[i], value) + value[i + 1:]


def _mutate_list(rng: random.Random, value: list, keep_length: bool = False) -> list:
    result = list(value)
    if not result:
        return result
    i = rng.randrange(len(result))
    operation = 0 if keep_length else rng.randrange(6)
    if operation == 1:
        del result[i]
    elif operation == 2 and len(result) < _MAX_LEN:
        result.insert(rng.randrange(len(result) + 1), result[i])
    elif operation == 3:
        rng.shuffle(result)
    elif operation == 4 and len(result) < _MAX_LEN:
        result.insert(rng.randrange(len(result) + 1), mutate_value(rng, result[i]))
    else:
        result[i] = mutate_value(rng, result[i])
    return result


def _mutate_dict(rng: random.Random, value: dict) -> dict:
    if not value:
        return value
    result = dict(value)
    key = rng.choice(list(result))
    if rng.random() < 0.3 and len(result) > 1:
        del result[key]
    elif rng.random() < 0.5:
        result[key] = mutate_value(rng, result[key])
    else:
        new_key = mutate_value(rng, key)
        result[new_key] = result.pop(key)
    return result
