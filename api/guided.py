"""vLLM's structured-output fields on the completions and chat endpoints, for the clients written
against vLLM's server: `structured_outputs` ({"json": a schema, "regex": ..., "choice": [...],
"json_object": true}) and the older `guided_json`, `guided_regex`, `guided_choice`. A schema holds
the answer as response_format json_schema does (engine/json_schema.py); a regex is matched against
the whole answer, a choice is one of its strings (engine/json_pattern.py PatternText). A grammar
or a structural tag is refused (400), never silently dropped, as are two of them at once."""
from __future__ import annotations

import json
import re
from typing import Any

from engine.json_pattern import PatternText
from engine.json_schema import compile_schema

from api.errors import bad_request
from api.prompts import PromptTokenizer
from api.schemas import CompletionRequest, strict_json

_KINDS = ("json", "regex", "choice", "json_object")
_REFUSED = ("grammar", "structural_tag")


def asked(req: CompletionRequest) -> dict[str, Any]:
    """The structured output a request asks for, as {kind: value} (empty: none)."""
    given = dict(req.structured_outputs or {})
    for kind in ("json", "regex", "choice", "grammar"):
        value = getattr(req, f"guided_{kind}", None)
        if value is not None:
            given[kind] = value
    # json_object false asks for nothing; a json schema false accepts nothing (a 400 where compiled)
    return {k: v for k, v in given.items() if v is not None and not (k == "json_object" and v is False)}


async def constraint(req: CompletionRequest, prompts: PromptTokenizer) -> tuple[bool, object | None] | None:
    """(json_object, the compiled machine or None) for the engine's SamplingParams; None where
    nothing is asked. 400 for what cannot be honoured."""
    given = asked(req)
    if not given:
        return None
    refused = [k for k in given if k in _REFUSED or k not in _KINDS]
    if refused:
        raise bad_request(f"structured output {refused[0]!r} is not supported here (json, regex, choice, "
                          "json_object).", param="structured_outputs")
    if len(given) > 1:
        raise bad_request(f"one structured output at a time, got {', '.join(sorted(given))}",
                          param="structured_outputs")
    kind, value = next(iter(given.items()))
    if kind == "json_object":
        return True, None
    try:
        return True, await prompts.run(len(json.dumps(value)), lambda: _compiled(kind, value))
    except (ValueError, RecursionError, TypeError) as e:
        raise bad_request(f"structured output {kind}: {e}", param="structured_outputs",
                          code="schema_unsupported") from None


def _compiled(kind: str, value: Any) -> object:
    if kind == "json":
        return compile_schema(strict_json(value) if isinstance(value, str) else value)
    if kind == "regex":
        if not isinstance(value, str):
            raise ValueError("regex must be a string")
        return PatternText.of(value)
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise ValueError("choice must be a non-empty list of non-empty strings")
    return PatternText.of("|".join(re.escape(c) for c in value))
